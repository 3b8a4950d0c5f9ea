"""With a controller already running (here: an embedded control loop of this test), the gateway
does not run one of its own: it submits to that controller and follows the stored output by
polling the database, and answers all the same."""

from __future__ import annotations

from pathlib import Path

from bitinglip.control.plane import open_control_plane
from bitinglip.gateway.server import running
from tests.gateway.conftest import KEY, KEYED, MODEL, client, gateway_profile, needs_model, request

pytestmark = needs_model


def test_the_gateway_submits_to_a_running_controller(tmp_path: Path, demo_model: Path) -> None:
    profile = gateway_profile(tmp_path / "data", demo_model, KEYED)
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None  # this test's thread is the controller
        with running(profile) as served:
            assert served.bridge.embedded is False
            api = client(served, KEY)
            whole = api.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
            stream = api.completions.create(
                model=MODEL, prompt="Hello", max_tokens=4, temperature=0, stream=True
            )
            assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text
            bearer = {"Authorization": f"Bearer {KEY}"}
            health = request(served, "GET", "/health", headers=bearer).json()
            assert health["embedded"] is False
            assert health["controller"]["owner"] == loop.owner
