"""The gateway's `immediate` body field: a request for a model that fits on no host gets 503
`unplaceable` at once instead of waiting; a value that is not a boolean is a 400."""

from __future__ import annotations

from pathlib import Path

from bitinglip.config import parse_profile
from bitinglip.gateway.server import running
from tests.gateway.conftest import MODEL, PROFILE, assert_error_object, needs_model, request


@needs_model
def test_immediate_is_a_503_when_the_model_fits_nowhere(tmp_path: Path, demo_model: Path) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / f"{MODEL}.gguf").symlink_to(demo_model)
    text = PROFILE.format(gateway="").replace(
        'kind = "local"\n', 'kind = "local"\nmemory_budget_gib = 0.1\n'
    )
    profile = parse_profile(text, name="small", path=None, data_dir=data)
    with running(profile) as served:
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}
        bad = request(served, "POST", "/v1/completions", {**body, "immediate": "yes"})
        error = assert_error_object(bad, 400)
        assert error["param"] == "immediate", error
        reply = request(served, "POST", "/v1/completions", {**body, "immediate": True})
        error = assert_error_object(reply, 503)
        assert error["code"] == "unplaceable", error
        assert "fits on no host" in error["message"]
