"""Fixtures for the tests that run real inference: the demo model, assembled once per session,
and helpers to find a control loop's agent and its inference children."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.control.queue.views import Task
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.transport.local import LocalTransport
from tests.conftest import INFER_ENV as INFER_ENV  # where the agent tests import it from

T = TypeVar("T")

INFER_MODULE = "bitinglip_agent.infer"


@pytest.fixture
def passive_openmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """See INFER_ENV: for agents started while the test runs."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something other than None/False, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def agent_pid(loop: ControlLoop | None, timeout: float = 30.0) -> int:
    """The pid of the loop's (only, local) agent, once it has said hello."""
    assert loop is not None, "the embedded control loop did not start"
    dispatcher = loop.dispatcher
    assert dispatcher is not None, "the profile has no local host"

    def ready() -> int | None:
        session = dispatcher.agents[0].session
        if session is None or not session.ready:
            return None
        transport = session.transport
        assert isinstance(transport, LocalTransport)
        return transport.pid

    return wait_for(ready, timeout, "the local agent to say hello")


def _psutil() -> Any:
    """psutil comes with the agent's runtime extra, like llama-cpp-python."""
    return pytest.importorskip("psutil", reason="finding the agent's children needs psutil")


def infer_children(pid: int, mode: str | None = None) -> list[Any]:
    """The agent's inference children (`python -m bitinglip_agent.infer ...`) alive now, as
    psutil processes; only those of one `--mode` (generate, embed) if given."""
    psutil = _psutil()
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            argv = child.cmdline()
            if INFER_MODULE not in argv or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if mode is None or f"--mode {mode}" in " ".join(argv):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for its parent)."""
    psutil = _psutil()
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def generate(model: Path, prompt: str, max_tokens: int, **extra: object) -> TaskSpec:
    payload = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1, **extra}
    return TaskSpec(kind="generate", model=str(model), payload=payload)


def first_output(plane: ControlPlane, task_id: int, timeout: float = 60.0) -> str:
    """Block until the task has stored some output; return it."""
    for chunk in plane.follow(task_id, timeout=timeout):
        if chunk:
            return chunk
    task = plane.task(task_id)
    raise AssertionError(
        f"task {task_id} stored no output: {task.state} {task.error_kind} {task.error}"
    )


def succeeded(plane: ControlPlane, task_id: int, timeout: float = 120.0) -> Task:
    task = plane.wait(task_id, timeout)
    assert task.state == TaskState.SUCCEEDED, (task_id, task.state, task.error_kind, task.error)
    return task


def event_details(plane: ControlPlane, task_id: int) -> list[str]:
    return [str(e["detail"]) for e in plane.events(task_id)]
