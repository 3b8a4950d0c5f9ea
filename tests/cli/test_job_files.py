"""Job files as a real process: a file someone hands you runs only work (echo, generate, chat,
embed), and a million-line file with one bad line queues nothing in bounded memory.

A line that would pull from a URL of the file's choosing or remove a model file is refused with
one line naming the file and the line, and nothing of the file is queued.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import MODEL, Proc, stderr_lines, write_jsonl

# Runs the command given as arguments and prints its exit code, stdout, stderr and peak RSS
# (its own children only: pytest's other children do not count).
MEASURED = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps([done.returncode, done.stdout, done.stderr, peak_kb]))
"""


def test_a_hostile_job_file_is_refused_and_queues_nothing(proc: Proc, tmp_path: Path) -> None:
    victim = tmp_path / "models" / "precious.gguf"
    victim.parent.mkdir()
    victim.write_bytes(b"GGUF weights")
    path = write_jsonl(
        tmp_path / "handed-to-me.jsonl",
        {"kind": "echo", "payload": {"n": 1}},
        {"kind": "generate", "model": MODEL, "prompt": "hello"},
        {"kind": "pull", "payload": {"url": "http://attacker.invalid/x", "dest": str(victim)}},
        {"kind": "remove", "payload": {"dest": str(victim)}},
    )
    proc.ok("status")  # the database exists before, so "nothing queued" is checked on it
    done = proc("jobs", "submit", path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = stderr_lines(done.stderr)
    assert line.startswith(f"bitinglip: {path}:3: kind must be one of echo, generate, chat, embed")
    assert "not 'pull'" in line and "bitinglip models" in line
    assert set(proc.json("status")["tasks"].values()) == {0}
    assert proc.json("jobs", "ls") == []
    assert victim.read_bytes() == b"GGUF weights"


def test_a_bad_line_near_the_end_of_a_million_queues_nothing_in_bounded_memory(
    proc: Proc, tmp_path: Path
) -> None:
    """Line 900,000 of 1,000,000 is bad: one line names it, no job and no task is queued (rows
    and counters), and the submit's peak memory stays far below the file's decoded size."""
    path = tmp_path / "million.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for n in range(1, 1_000_001):
            out.write(
                '{"kind": "teleport"}\n'
                if n == 900_000
                else f'{{"kind": "echo", "id": "n{n}", "payload": {{"n": {n}}}}}\n'
            )
    proc.ok("status")  # the database exists before, so "nothing queued" is checked on it
    measured = subprocess.run(
        [sys.executable, "-c", MEASURED, *proc.argv(["jobs", "submit", path])],
        cwd=proc.cwd,
        env=proc.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    code, stdout, stderr, peak_kb = json.loads(measured.stdout)
    assert (code, stdout) == (2, ""), stderr
    assert stderr_lines(stderr)[-1].startswith(
        f"bitinglip: {path}:900000: kind must be one of echo, generate, chat, embed"
    )
    assert "Traceback" not in stderr
    assert peak_kb < 250 * 1024, f"peak RSS {peak_kb // 1024} MiB"
    with sqlite3.connect(proc.data_dir / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        assert {n for (n,) in conn.execute("SELECT n FROM task_counts")} == {0}
    assert set(proc.json("status")["tasks"].values()) == {0}
    assert not list(proc.data_dir.glob(".intake-*"))  # the staging file is gone
