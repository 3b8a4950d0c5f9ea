"""The state database: pragmas, migrations, refusing files that are not ours, backup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bitinglip.config import Profile
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import APPLICATION_ID, open_store
from bitinglip.control.store.schema import MIGRATIONS
from bitinglip.errors import StoreError


def test_pragmas_and_schema_version(profile: Profile) -> None:
    store = open_store(profile.db_path, "full")
    conn = store.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    names = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert names == [f"{i:04d}_{name}" for i, (name, _) in enumerate(MIGRATIONS, 1)]
    assert open_store(profile.db_path).conn.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_a_database_from_a_newer_release_is_refused(profile: Profile) -> None:
    open_store(profile.db_path).close()
    conn = sqlite3.connect(profile.db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this BitingLip"):
        open_store(profile.db_path)


def test_a_write_that_fails_leaves_no_half_written_rows(profile: Profile) -> None:
    store = open_store(profile.db_path)
    with pytest.raises(sqlite3.IntegrityError), store.write() as conn:
        conn.execute(
            "INSERT INTO jobs (name, format, total, created_at) VALUES ('j', 'openai', 1, 0)"
        )
        conn.execute(
            "INSERT INTO jobs (name, format, total, created_at) VALUES ('j', 'yaml', 1, 0)"
        )
    assert store.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_backup_is_a_consistent_standalone_copy(profile: Profile, tmp_path: Path) -> None:
    queue = TaskQueue(open_store(profile.db_path), profile.queue)
    queue.submit_many([TaskSpec(kind="echo", payload={"i": i}) for i in range(100)])
    dest = tmp_path / "copy.db"
    queue.store.backup(dest)
    copy = sqlite3.connect(dest)
    assert copy.execute("SELECT count(*) FROM tasks").fetchone()[0] == 100
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not (tmp_path / "copy.db-wal").exists()
    reopened = open_store(dest)  # a backup is a valid state database
    assert reopened.conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 100


def test_backup_into_a_directory_is_refused(profile: Profile, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        open_store(profile.db_path).backup(tmp_path)


def test_no_temporary_files_are_left_after_creation(profile: Profile) -> None:
    open_store(profile.db_path).close()
    leftovers = [p.name for p in profile.data_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
