"""A corpus of files that are not usable state databases, put where `state.db` belongs.

For each one, the CLI (a real subprocess) and `open_store` must refuse it with one clear line
and leave it exactly as it was: same bytes, same mtime, and nothing created beside it (no -wal,
-shm or temporary file). A real database is made first through the CLI, so the truncated copies
are of a real file.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bitinglip.control.store.db import open_store
from bitinglip.errors import StoreError
from tests.cli.conftest import COMMAND, hermetic_env

Snapshot = dict[str, tuple[str, int, int]]


def cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *(str(a) for a in args)],
        cwd=cwd,
        env=hermetic_env(cwd),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def snapshot(folder: Path) -> Snapshot:
    """Every entry under `folder`: its kind or sha256, its mtime and its size."""
    found: Snapshot = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(folder))] = (digest, stat.st_mtime_ns, stat.st_size)
    return found


# -- a real database to cut up ---------------------------------------------------------------


class RealDb:
    def __init__(self, data: bytes) -> None:
        self.data = data
        page_size = struct.unpack(">H", data[16:18])[0]
        self.page_size = 65536 if page_size == 1 else page_size
        self.tasks = 0


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> RealDb:
    root = tmp_path_factory.mktemp("real")
    data_dir = root / "data"
    batch = root / "batch.jsonl"
    batch.write_text(
        "".join(json.dumps({"kind": "echo", "payload": {"n": n, "pad": "x" * 200}}) + "\n"
                for n in range(60)),
        encoding="utf-8",
    )  # fmt: skip
    for args in (
        ("tasks", "submit", "echo", "--payload", '{"a": 1}'),
        ("jobs", "submit", batch),
        ("tasks", "submit", "echo", "--wait"),
    ):
        done = cli(root, "--data-dir", data_dir, *args)
        assert done.returncode == 0, done.stderr
    status = cli(root, "--data-dir", data_dir, "status", "--json")
    tasks = sum(json.loads(status.stdout)["tasks"].values())
    assert tasks == 62
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == ["state.db"], "WAL left behind"
    real = RealDb((data_dir / "state.db").read_bytes())
    real.tasks = tasks
    assert len(real.data) >= 8 * real.page_size and len(real.data) % real.page_size == 0
    return real


# -- the corpus ------------------------------------------------------------------------------


def write(data: bytes) -> Callable[[Path, RealDb], None]:
    def make(path: Path, _real: RealDb) -> None:
        path.write_bytes(data)

    return make


def cut(size: Callable[[RealDb], int]) -> Callable[[Path, RealDb], None]:
    def make(path: Path, real: RealDb) -> None:
        length = size(real)
        assert 0 < length < len(real.data)
        path.write_bytes(real.data[:length])

    return make


def foreign(journal_mode: str) -> Callable[[Path, RealDb], None]:
    def make(path: Path, _real: RealDb) -> None:
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO tasks (note) VALUES ('not ours')")
        conn.commit()
        conn.close()
        for suffix in ("-wal", "-shm"):
            assert not Path(f"{path}{suffix}").exists()

    return make


def directory(path: Path, _real: RealDb) -> None:
    path.mkdir()
    (path / "keep.txt").write_text("a folder where the database should be\n", encoding="utf-8")


CORPUS: dict[str, tuple[Callable[[Path, RealDb], None], str]] = {
    "zero bytes": (write(b""), "empty"),
    "4 KiB of random bytes": (write(random.Random(4096).randbytes(4096)), "no SQLite header"),
    "a JSON file": (write(json.dumps({"tasks": []}).encode() + b"\n"), "no SQLite header"),
    "only the 100-byte header": (cut(lambda r: 100), "truncated"),
    "cut to half (whole pages)": (
        cut(lambda r: len(r.data) // r.page_size // 2 * r.page_size),
        "truncated",
    ),
    "cut to half plus 1000 bytes": (cut(lambda r: len(r.data) // 2 + 1000), "truncated"),
    "one byte short": (cut(lambda r: len(r.data) - 1), "truncated"),
    "a foreign SQLite database": (foreign("delete"), "another application"),
    "a foreign SQLite database in WAL mode": (foreign("wal"), "another application"),
    "a directory": (directory, "directory"),
}


@pytest.fixture(params=list(CORPUS))
def bad(request: pytest.FixtureRequest, tmp_path: Path, real_db: RealDb) -> tuple[Path, str]:
    """A data dir holding one corpus entry at state.db, and the word its error must say."""
    make, says = CORPUS[request.param]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make(data_dir / "state.db", real_db)
    return data_dir, says


@pytest.mark.parametrize(
    "command",
    [("status",), ("tasks", "submit", "echo", "--payload", '{"x": 1}')],
    ids=" ".join,
)
def test_the_cli_refuses_it_and_leaves_it_untouched(
    bad: tuple[Path, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    data_dir, says = bad
    before = snapshot(data_dir)
    done = cli(tmp_path, "--data-dir", data_dir, *command)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"bitinglip: {data_dir / 'state.db'}")
    assert says in lines[0]
    assert done.stdout == ""
    assert snapshot(data_dir) == before


def test_open_store_raises_store_error_and_leaves_it_untouched(bad: tuple[Path, str]) -> None:
    data_dir, says = bad
    before = snapshot(data_dir)
    for create in (True, False):
        with pytest.raises(StoreError, match=says) as caught:
            open_store(data_dir / "state.db", create=create)
        assert "\n" not in str(caught.value)
        assert caught.value.exit_code == 1
        assert snapshot(data_dir) == before


# -- controls: what the corpus is measured against -------------------------------------------


def test_the_uncut_copy_opens(tmp_path: Path, real_db: RealDb) -> None:
    """The same bytes, uncut, are a good database: the refusals above are about the damage."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "state.db").write_bytes(real_db.data)
    done = cli(tmp_path, "--data-dir", data_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert sum(json.loads(done.stdout)["tasks"].values()) == real_db.tasks
    store = open_store(data_dir / "state.db")
    try:
        assert store.conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == real_db.tasks
    finally:
        store.close()


def test_a_missing_database_is_created_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "state.db"
    with pytest.raises(StoreError, match="no state database"):
        open_store(path, create=False)
    assert not path.exists()
    store = open_store(path)
    store.close()
    assert path.is_file()


def test_a_database_from_a_newer_schema_is_refused(tmp_path: Path, real_db: RealDb) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "state.db"
    path.write_bytes(real_db.data)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = snapshot(data_dir)
    done = cli(tmp_path, "--data-dir", data_dir, "status")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "newer than this BitingLip" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(data_dir) == before


def test_damaged_pages_behind_a_good_header_are_one_line(tmp_path: Path, real_db: RealDb) -> None:
    data = bytearray(real_db.data)
    noise = random.Random(7).randbytes(len(data) - 2 * real_db.page_size)
    data[2 * real_db.page_size :] = noise  # page 1 (header, schema) intact, the rest garbage
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "state.db").write_bytes(bytes(data))
    done = cli(tmp_path, "--data-dir", data_dir, "status")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_open_store_refusing_a_newer_schema_leaves_nothing_open(
    tmp_path: Path, real_db: RealDb
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "state.db"
    path.write_bytes(real_db.data)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = snapshot(data_dir)
    with pytest.raises(StoreError, match="newer than this BitingLip") as caught:
        open_store(path)
    assert caught.value.exit_code == 1
    assert snapshot(data_dir) == before
