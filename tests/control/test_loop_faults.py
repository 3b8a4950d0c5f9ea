"""The control loop's error boundary, with faults injected for real: another connection holding
the database's write lock past the busy timeout, and the data dir's filesystem full (results
received meanwhile are stored after, none lost, none run twice), and `bitinglip up` riding out a
short lock but exiting 1 with one line naming the reason when every step fails past the bound."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from bitinglip.config import Profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.store.db import BUSY_TIMEOUT_MS
from tests.agents.conftest import INFER_ENV, wait_for
from tests.cli.conftest import Proc, Up, hermetic_env, stderr_lines

pytestmark = pytest.mark.slow

EMBED_INPUTS = 80  # ~1 MB of vectors: a completion batch that needs room
LITTLE_ROOM = 256 * 1024  # room for a lease renewal, not for that batch
LOCK_S = BUSY_TIMEOUT_MS / 1000 + 2  # past the busy timeout: the loop's writes fail
GIVE_UP_S = 2.0  # `controller.give_up_after_s` where a test waits for the loop to give up


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


@contextmanager
def small_tmpfs(where: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` KiB mounted at `where` (private, like a data dir) meanwhile."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs (a real full filesystem) needs root and mount(8)")
    where.mkdir(parents=True)
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)]
    mounted = subprocess.run(argv, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(where)], check=False)


def fill(filler: Path) -> None:
    """Grow `filler` until its filesystem refuses (ENOSPC), to the last byte."""
    with filler.open("ab", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def held_results(loop: ControlLoop) -> int:
    """Results the controller holds in memory, received but not stored: those in its inbox
    (a step that cannot renew the lease handles none) and those its completion batch keeps."""
    assert loop.dispatcher is not None
    inbox = list(loop.dispatcher.inbox.messages)
    waiting = [m for m in inbox if m.msg is not None and m.msg.get("type") == "result"]
    return len(waiting) + len(loop.dispatcher.inbox.results)


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


def test_results_received_on_a_full_disk_are_stored_once_there_is_room(
    make_profile: Callable[..., Profile],
    demo_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The disk fills while an embedding runs (~1 MB of vectors): with no room the loop cannot
    renew its lease and holds the result in its inbox; with a little room the lease is renewed
    but the completion batch cannot commit and keeps the result; with room it is stored."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="bitinglip.control")
    inputs = [f"line {n} of the embedding" for n in range(EMBED_INPUTS)]
    with small_tmpfs(tmp_path / "full", 8192) as data:
        profile = make_profile(name="full")
        assert profile.data_dir == data
        (data / "models").mkdir()
        (data / "models" / "gemma-3-270m.gguf").symlink_to(demo_model)
        filler = data / "filler"
        with open_control_plane(profile) as plane, plane.embedded() as loop:
            assert loop is not None and loop.dispatcher is not None
            dispatcher = loop.dispatcher
            spec = TaskSpec(kind="embed", model="gemma-3-270m", payload={"input": inputs})
            task_id = plane.submit(spec)
            wait_for(lambda: plane.task(task_id).state == "running", 60, "the run to start")
            plane.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL to reuse
            fill(filler)
            assert plane.task(task_id).state == "running", "the run ended before the disk filled"
            wait_for(lambda: held_results(loop) == 1, 20, "the result to arrive")
            os.truncate(filler, filler.stat().st_size - LITTLE_ROOM)
            wait_for(lambda: len(dispatcher.inbox.results) == 1, 10, "the completion batch")
            time.sleep(1.0)  # the batch is tried again (and fails) meanwhile
            kept = len(dispatcher.inbox.results)
            state_while_full = plane.task(task_id).state
            filler.unlink()
            done = plane.wait(task_id, timeout=60)
            after = plane.wait(plane.submit(TaskSpec(kind="echo", payload={"after": 1})), 30)
            alive = not loop.ended.is_set()
    said = [r.getMessage() for r in caplog.records]
    assert any("database or disk is full" in m for m in said), said  # the fault was hit
    assert kept == 1 and state_while_full == "running"
    assert done.state == "succeeded", done.error
    assert done.attempt == 1, "a result was lost: the task ran again"
    assert isinstance(done.result, dict) and len(done.result["embeddings"]) == EMBED_INPUTS
    assert after.state == "succeeded" and alive


def quick_give_up(tmp_path: Path) -> Path:
    """A profile whose control loop gives up after GIVE_UP_S of failing steps (default 30 s)."""
    path = tmp_path / "quick.toml"
    path.write_text(f"[controller]\ngive_up_after_s = {GIVE_UP_S}\n", encoding="utf-8")
    return path


def assert_stopped_on_the_lock(code: int, stderr: str) -> None:
    lines = stderr_lines(stderr)
    assert code == 1, lines
    assert "Traceback" not in stderr
    assert lines[-1].startswith("bitinglip: the control loop stopped: "), lines
    assert "locked" in lines[-1], lines


def test_up_rides_out_a_lock_longer_than_the_busy_timeout(proc: Proc, tmp_path: Path) -> None:
    up = Up(proc, tmp_path / "up.stderr")
    try:
        up.wait_until_controller()
        with write_lock(proc.data_dir / "state.db"):
            time.sleep(LOCK_S)
        waited = proc("tasks", "submit", "echo", "--payload", '{"n": 1}', "--wait", timeout=60)
        assert waited.stdout == '{"n": 1}\n', up.stderr
        assert up.process.poll() is None, up.stderr
        assert "locked" in up.stderr  # the lock was felt (logged), and ridden out
    finally:
        up.kill()


def test_up_and_serve_exit_1_when_their_control_loop_cannot_go_on(
    proc: Proc, tmp_path: Path
) -> None:
    """Each on its own data dir, both at once: the wait is the busy timeout's, not the test's."""
    up = Up(proc, tmp_path / "up.stderr", "--profile", quick_give_up(tmp_path))
    served = replace(proc, data_dir=tmp_path / "served")
    log = tmp_path / "serve.stderr"
    serve = served.popen(
        "--profile", quick_give_up(tmp_path), "serve", "--port", "0", stderr_to=log
    )
    try:
        up.wait_until_controller()
        wait_for(lambda: "bitinglip: serving " in log.read_text(), 60, "serve to start")
        assert "running the control plane" in log.read_text()
        with (  # for good: every step of both fails
            write_lock(proc.data_dir / "state.db"),
            write_lock(served.data_dir / "state.db"),
        ):
            up_code = up.process.wait(GIVE_UP_S + 4 * LOCK_S)
            serve_code = serve.wait(GIVE_UP_S + 4 * LOCK_S)
    finally:
        up.kill()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert_stopped_on_the_lock(up_code, up.stderr)
    assert_stopped_on_the_lock(serve_code, log.read_text())
