"""The data dir is private: created 0700, its files 0600 (prompts and completions are in them),
whatever the umask; a data dir others can read gets one warning line and is left as it is.

The CLI runs as a real subprocess under a given umask; modes are read with stat (the tests run as
root, so a permission denial would prove nothing)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitinglip.config import QueueConfig
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import open_store
from tests.cli.conftest import COMMAND, hermetic_env

WARNING = "bitinglip: warning: the data dir"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def bitinglip(
    tmp_path: Path, data_dir: Path, *args: str | Path, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*COMMAND, "--data-dir", str(data_dir), *(str(a) for a in args)],
        cwd=tmp_path,
        env=hermetic_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
    )
    assert done.returncode == 0, done.stderr
    return done


def files_in(folder: Path) -> dict[str, int]:
    return {p.name: mode(p) for p in folder.iterdir()}


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277], ids=lambda m: f"umask{m:03o}")
def test_a_fresh_data_dir_is_0700_and_its_files_0600(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "deep" / "data"  # the parents are missing too
    status = bitinglip(tmp_path, data, "status", umask=mask)
    submitted = bitinglip(tmp_path, data, "tasks", "submit", "echo", "--wait", umask=mask)
    assert mode(data) == 0o700
    found = files_in(data)
    assert "state.db" in found and set(found.values()) == {0o600}, found
    assert WARNING not in status.stderr + submitted.stderr


def test_the_wal_and_shm_are_0600_while_the_database_is_open(tmp_path: Path) -> None:
    """SQLite makes them with the database file's mode: the database is 0600 before they exist."""
    path = tmp_path / "data" / "state.db"
    with umask(0o022):
        store = open_store(path)
        try:
            TaskQueue(store, QueueConfig()).submit(TaskSpec(kind="echo", payload={"n": 1}))
            found = files_in(path.parent)
        finally:
            store.close()
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(found), found
    assert set(found.values()) == {0o600}, found


def test_an_open_data_dir_gets_one_warning_and_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    status = bitinglip(tmp_path, data, "status")
    # --wait runs a controller in the process, which opens the database a second time: still
    # one line per command.
    submitted = bitinglip(tmp_path, data, "tasks", "submit", "echo", "--wait")
    for done in (status, submitted):
        warnings = [line for line in done.stderr.splitlines() if WARNING in line]
        assert warnings == [
            f"{WARNING} {data} is open to other users (mode 755) and holds prompts and"
            f" completions; run `chmod 700 {data}`"
        ], done.stderr
    assert mode(data) == 0o755  # not changed behind the user's back
    assert set(files_in(data).values()) == {0o600}
    data.chmod(0o700)
    assert WARNING not in bitinglip(tmp_path, data, "status").stderr


def test_a_backup_is_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bitinglip(tmp_path, data, "status")
    bitinglip(tmp_path, data, "db", "backup", tmp_path / "copy.db")
    assert mode(tmp_path / "copy.db") == 0o600


def test_a_data_dir_first_made_for_the_agent_bundle_is_0700(tmp_path: Path) -> None:
    """`hosts check` builds the agent zipapp before it opens any database: the data dir it
    makes on the way is private too (it was 0755 under umask 022)."""
    from bitinglip.config import load_profile
    from bitinglip.control.transport import bootstrap

    data = tmp_path / "data"
    profile = load_profile(None, data_dir=str(data))
    with umask(0o022):
        bootstrap.local_bundle(profile)
    assert mode(data) == 0o700
