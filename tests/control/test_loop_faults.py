"""The control loop's error boundary, with faults injected for real: another connection holding
the database's write lock past the busy timeout (results received meanwhile are stored after,
none lost, none run twice), and `bitinglip up` riding out a short lock but exiting 1 with one
line naming the reason when every step fails past the bound."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitinglip.config import Profile
from bitinglip.control.db import BUSY_TIMEOUT_MS
from bitinglip.control.loop_faults import GIVE_UP_AFTER_S
from bitinglip.control.plane import open_control_plane
from bitinglip.control.tasks import TaskSpec
from tests.agents.conftest import INFER_ENV, wait_for
from tests.cli.conftest import Proc, Up, hermetic_env, stderr_lines

pytestmark = pytest.mark.slow

LOCK_S = BUSY_TIMEOUT_MS / 1000 + 2  # past the busy timeout: the loop's writes fail


@contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Another connection holding the database's write lock (BEGIN IMMEDIATE) meanwhile."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    return Proc(tmp_path / "data", tmp_path, hermetic_env(tmp_path))


def generate(max_tokens: int) -> TaskSpec:
    payload = {"prompt": "Count: one, two,", "max_tokens": max_tokens, "temperature": 0}
    return TaskSpec(kind="generate", model="gemma-3-270m", payload=payload)


def test_results_received_under_a_held_lock_are_stored_after_it(
    profile: Profile, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="bitinglip.control")
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None
        ids = plane.submit_many([generate(16) for _ in range(2)])
        wait_for(
            lambda: all(plane.task(i).state == "running" for i in ids), 120, "the runs to start"
        )
        with write_lock(profile.db_path):
            time.sleep(LOCK_S)  # the runs end meanwhile: their results wait in the controller
        done = [plane.wait(i, timeout=120) for i in ids]
        after = plane.wait(plane.submit(TaskSpec(kind="echo", payload={"after": 1})), 30)
        alive = not loop.ended.is_set()
    assert [t.state for t in done] == ["succeeded", "succeeded"], [t.error for t in done]
    assert all(t.attempt == 1 for t in done), "a result was lost: the task ran again"
    assert after.state == "succeeded" and alive
    said = [r.getMessage() for r in caplog.records]
    assert any("control loop step failed" in m and "locked" in m for m in said), said


def test_up_rides_out_a_lock_and_exits_1_when_it_cannot_go_on(proc: Proc, tmp_path: Path) -> None:
    up = Up(proc, tmp_path / "up.stderr")
    try:
        up.wait_until_controller()
        db = proc.data_dir / "state.db"
        with write_lock(db):
            time.sleep(LOCK_S)
        waited = proc("tasks", "submit", "echo", "--payload", '{"n": 1}', "--wait", timeout=60)
        assert waited.stdout == '{"n": 1}\n', up.stderr
        assert up.process.poll() is None, up.stderr
        with write_lock(db):  # for good: every step fails
            code = up.process.wait(GIVE_UP_AFTER_S + 4 * LOCK_S)
    finally:
        up.kill()
    lines = stderr_lines(up.stderr)
    assert code == 1, lines
    assert "Traceback" not in up.stderr
    assert lines[-1].startswith("bitinglip: the control loop stopped: "), lines
    assert "locked" in lines[-1], lines


def test_serve_exits_1_when_its_control_loop_cannot_go_on(proc: Proc, tmp_path: Path) -> None:
    log = tmp_path / "serve.stderr"
    serve = proc.popen("serve", "--port", "0", stderr_to=log)
    try:
        wait_for(lambda: "bitinglip: serving " in log.read_text(), 60, "serve to start")
        assert "running the control plane" in log.read_text()
        with write_lock(proc.data_dir / "state.db"):
            code = serve.wait(GIVE_UP_AFTER_S + 4 * LOCK_S)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    lines = stderr_lines(log.read_text())
    assert code == 1, lines
    assert lines[-1].startswith("bitinglip: the control loop stopped: "), lines
