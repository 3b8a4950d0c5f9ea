"""`bitinglip jobs export ID -o FILE`: a random private temp file beside the target, fsynced,
renamed into place; a symlink is never written through, and Ctrl-C leaves no temp file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from bitinglip.config import load_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.cli.conftest import Cli, Proc, write_jsonl


def submit_echo_job(cli: Cli, tmp_path: Path, n: int = 3) -> int:
    path = write_jsonl(
        tmp_path / "job.jsonl", *({"kind": "echo", "payload": {"n": i}} for i in range(n))
    )
    return int(cli.ok("jobs", "submit", path).stdout)


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_export_to_a_file_is_complete_private_and_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    job_id = submit_echo_job(cli, tmp_path, 50)
    out = tmp_path / "results.jsonl"
    out.write_text("an older export\n")
    result = cli.ok("jobs", "export", str(job_id), "-o", out)
    assert result.stdout == "" and f"wrote 50 results to {out}" in result.stderr
    assert out.read_text() == cli.ok("jobs", "export", str(job_id)).stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 51))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(tmp_path, out.name) == []


def test_a_symlink_at_the_old_temp_name_is_not_followed(cli: Cli, tmp_path: Path) -> None:
    """The old export wrote `.NAME.PID.tmp` through whatever was there; a link planted at that
    name (CliRunner runs in this process: the pid is ours) must not reach its target."""
    job_id = submit_echo_job(cli, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "results.jsonl"
    planted = tmp_path / f".{out.name}.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    cli.ok("jobs", "export", str(job_id), "-o", out)
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink() and not out.is_symlink()
    assert len(out.read_text().splitlines()) == 3


def test_a_symlink_at_the_target_is_replaced_not_written_through(cli: Cli, tmp_path: Path) -> None:
    job_id = submit_echo_job(cli, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "results.jsonl"
    out.symlink_to(victim)
    cli.ok("jobs", "export", str(job_id), "-o", out)
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and len(out.read_text().splitlines()) == 3


def test_a_failed_export_leaves_no_temp_file(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    result = cli("jobs", "export", "999", "-o", out)
    assert result.exit_code == 1 and "no job 999" in result.stderr
    assert not out.exists() and leftovers(tmp_path, out.name) == []


def big_job(proc: Proc, tasks: int, line_bytes: int) -> int:
    """A job of `tasks` echo tasks whose export lines are about `line_bytes` long each."""
    profile = load_profile(None, data_dir=proc.data_dir, cwd=proc.cwd)
    with open_control_plane(profile) as plane:
        job_id, _ = plane.queue.submit_job("big", None, "bitinglip", [TaskSpec("echo")] * tasks)
        with plane.store.write() as conn:  # a long error text makes each exported line long
            conn.execute(
                "UPDATE tasks SET error = replace(hex(zeroblob(?)), '0', 'x') WHERE job_id = ?",
                (line_bytes // 2, job_id),
            )
    return job_id


def writing(folder: Path, name: str) -> bool:
    """A temp file of the export has bytes in it."""
    for leftover in leftovers(folder, name):
        with suppress(FileNotFoundError):  # renamed meanwhile
            if (folder / leftover).stat().st_size > 0:
                return True
    return False


def test_ctrl_c_mid_write_leaves_no_temp_file_and_the_old_file(proc: Proc, tmp_path: Path) -> None:
    job_id = big_job(proc, tasks=20_000, line_bytes=4_000)  # about 80 MB of output
    out = tmp_path / "results.jsonl"
    out.write_text("the previous export\n")
    with (tmp_path / "export.stderr").open("wb") as sink:
        child = subprocess.Popen(
            proc.argv(["jobs", "export", str(job_id), "-o", out]),
            cwd=proc.cwd,
            env=proc.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while not writing(tmp_path, out.name):
            assert child.poll() is None, "the export finished before it could be interrupted"
            assert time.monotonic() < deadline, "no temp file appeared within 60 s"
            time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        code = child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stderr = (tmp_path / "export.stderr").read_text()
    assert code == 130, stderr
    assert stderr == f"bitinglip: interrupted; {out} is as it was before\n"
    assert leftovers(tmp_path, out.name) == []
    assert out.read_text() == "the previous export\n"
