"""The CLI as a real process: the console script, `bitinglip up` under signals, backups.

Every command runs with cwd=tmp_path, a data dir under it, and a hermetic environment
(see conftest.py). `up` is started with Popen, its stderr goes to a file that the tests read.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bitinglip import __version__
from tests.cli.conftest import (
    Proc,
    Up,
    assert_stopped_cleanly,
    stderr_lines,
    wait_for,
    write_jsonl,
)


@pytest.fixture
def start_up(proc: Proc, tmp_path: Path) -> Iterator[Callable[[], Up]]:
    started: list[Up] = []

    def start() -> Up:
        up = Up(proc, tmp_path / f"up-{len(started)}.stderr")
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill()


# -- one-shot commands -----------------------------------------------------------------------


def test_submit_ls_wait_and_cancel_as_processes(proc: Proc) -> None:
    queued = proc.ok("tasks", "submit", "echo", "--payload", '{"n": 1}')
    task_id = int(queued.stdout)
    assert queued.stderr == ""
    listed = proc.json("tasks", "ls")
    assert [(t["id"], t["state"], t["payload"]) for t in listed] == [(task_id, "queued", {"n": 1})]
    canceled = proc.ok("tasks", "cancel", str(task_id))
    assert canceled.stdout.split() == [str(task_id), "canceled"]
    waited = proc.ok("tasks", "submit", "echo", "--payload", '{"msg": "héllo"}', "--wait")
    assert waited.stdout == '{"msg": "héllo"}\n'
    states = {t["id"]: t["state"] for t in proc.json("tasks", "ls")}
    assert states == {task_id: "canceled", task_id + 1: "succeeded"}
    again = proc("tasks", "cancel", str(task_id + 1))
    assert again.returncode == 1
    assert stderr_lines(again.stderr) == [f"bitinglip: task {task_id + 1}: already succeeded"]


def test_errors_are_one_line_with_exit_codes(proc: Proc) -> None:
    usage = proc("tasks", "submit", "echo", "--payload", "[]")
    assert usage.returncode == 2
    assert stderr_lines(usage.stderr) == [
        "bitinglip: --payload must be a JSON object, like '{\"x\": 1}'"
    ]
    runtime = proc("tasks", "show", "42")
    assert runtime.returncode == 1
    assert len(stderr_lines(runtime.stderr)) == 1 and "no task 42" in runtime.stderr
    # An unknown model is refused at submit, even with --wait: nothing is queued, nothing runs.
    waited = proc("tasks", "submit", "generate", "--model", "m", "--prompt", "p", "--wait")
    assert waited.returncode == 2, waited.stderr
    assert waited.stdout == ""
    lines = stderr_lines(waited.stderr)
    assert len(lines) == 1 and lines[0].startswith("bitinglip: unknown model 'm'"), lines
    assert set(proc.json("status")["tasks"].values()) == {0}


def test_python_m_bitinglip_is_the_same_cli(proc: Proc) -> None:
    argv = [sys.executable, "-m", "bitinglip"]
    version = subprocess.run(
        [*argv, "--version"], cwd=proc.cwd, env=proc.env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.strip() == __version__
    status = subprocess.run(
        [*argv, "--data-dir", str(proc.data_dir), "status", "--json"], cwd=proc.cwd,
        env=proc.env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["database"] == str(proc.data_dir / "state.db")


# -- bitinglip up ----------------------------------------------------------------------------


def test_up_runs_a_job_and_stops_on_sigterm(
    proc: Proc, tmp_path: Path, start_up: Callable[[], Up]
) -> None:
    up = start_up()
    up.wait_until_controller()
    holder = proc.json("status")["controller"]
    assert holder is not None, "status does not show the running controller"
    assert holder["pid"] == up.process.pid and holder["alive"] is True
    assert holder["owner"] in up.stderr

    ids = [f"line-{i}" for i in range(25)]
    batch = write_jsonl(
        tmp_path / "batch.jsonl",
        *({"kind": "echo", "id": i, "payload": {"i": n}} for n, i in enumerate(ids)),
    )
    job_id = int(proc.ok("jobs", "submit", batch).stdout)

    def job_done() -> bool:
        job = proc.json("jobs", "show", str(job_id))
        return bool(job["done"] == job["total"] == len(ids))

    wait_for("the job to finish", job_done)
    # --wait with a live controller elsewhere: that controller does the work.
    waited = proc.ok("tasks", "submit", "echo", "--payload", '{"via": "up"}', "--wait")
    assert waited.stdout == '{"via": "up"}\n'

    out = tmp_path / "results" / "out.jsonl"
    out.parent.mkdir()
    exported = proc.ok("jobs", "export", str(job_id), "-o", out)
    assert exported.stdout == ""
    assert stderr_lines(exported.stderr) == [f"bitinglip: wrote {len(ids)} results to {out}"]
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(results) == len(ids)
    assert [r["id"] for r in results] == ids
    assert [r["line"] for r in results] == list(range(1, len(ids) + 1))
    assert {r["state"] for r in results} == {"succeeded"}
    assert [r["result"] for r in results] == [{"i": n} for n in range(len(ids))]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no temp file left

    assert_stopped_cleanly(up, signal.SIGTERM, up.stop(signal.SIGTERM))
    assert proc.json("status")["controller"] is None  # the lease was released


def test_up_stops_on_sigint(proc: Proc, start_up: Callable[[], Up]) -> None:
    up = start_up()
    up.wait_until_controller()
    assert_stopped_cleanly(up, signal.SIGINT, up.stop(signal.SIGINT))
    assert proc.json("status")["controller"] is None


def test_a_second_up_observes_then_takes_over(proc: Proc, start_up: Callable[[], Up]) -> None:
    first = start_up()
    first.wait_until_controller()
    second = start_up()
    wait_for("the second up to start", lambda: "waiting for the controller lease" in second.stderr)
    time.sleep(0.5)  # long enough to renew once: it must not have taken the lease
    assert "controller of" not in second.stderr
    assert proc.json("status")["controller"]["pid"] == first.process.pid
    assert_stopped_cleanly(first, signal.SIGTERM, first.stop(signal.SIGTERM))
    second.wait_until_controller()
    assert proc.json("status")["controller"]["pid"] == second.process.pid
    assert_stopped_cleanly(second, signal.SIGTERM, second.stop(signal.SIGTERM))


# -- db backup -------------------------------------------------------------------------------


def test_db_backup_is_a_usable_sqlite_copy(proc: Proc, tmp_path: Path) -> None:
    for n in range(3):
        proc.ok("tasks", "submit", "echo", "--payload", json.dumps({"n": n}))
    proc.ok("jobs", "submit", write_jsonl(tmp_path / "b.jsonl", {"kind": "echo"}, {"kind": "echo"}))
    proc.ok("tasks", "submit", "echo", "--wait")
    counts = proc.json("status")["tasks"]
    assert sum(counts.values()) == 6

    target = tmp_path / "backups" / "copy.db"
    target.parent.mkdir()
    done = proc.ok("db", "backup", target)
    assert "backed up" in done.stderr and str(target) in done.stderr
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.db"]
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()

    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "state.db").write_bytes(target.read_bytes())
    assert Proc(restored, proc.cwd, proc.env).json("status")["tasks"] == counts


def test_db_backup_refuses_a_directory(proc: Proc, tmp_path: Path) -> None:
    proc.ok("status")
    done = proc("db", "backup", tmp_path)
    assert done.returncode == 1
    lines = stderr_lines(done.stderr)
    assert len(lines) == 1 and "is a directory" in lines[0]


def test_db_backup_into_a_missing_folder_is_one_line(proc: Proc, tmp_path: Path) -> None:
    proc.ok("status")
    done = proc("db", "backup", tmp_path / "no-such-folder" / "copy.db")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(stderr_lines(done.stderr)) == 1
