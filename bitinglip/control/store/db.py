"""The state database: one SQLite file per profile.

This module is the only importer of sqlite_utils (used for the numbered migrations); the hot
paths use the standard library's sqlite3 directly. Every connection gets the same pragmas: WAL,
busy_timeout, foreign keys on, and `synchronous` set from the profile's durability:

- "full":   every commit is fsynced before it returns; it survives power loss.
- "normal": every commit survives a crash or kill -9 of any process; on power loss or an OS
            crash the commits since the last WAL checkpoint may be lost (the database stays
            consistent). The controller checkpoints at most every second, which bounds that
            window to about a second of work.

A file that is not a BitingLip database (empty, random, truncated, another application's) is
refused before SQLite opens it, so it is never written to.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bitinglip.control.store import data_dir
from bitinglip.errors import StoreError

if TYPE_CHECKING:
    import sqlite_utils

T = TypeVar("T")

APPLICATION_ID = 0x424C4950  # "BLIP" in the SQLite header: marks the file as ours.
BUSY_TIMEOUT_MS = 10_000
SQLITE_MAGIC = b"SQLite format 3\x00"
DURABILITY_SYNC = {"normal": "NORMAL", "full": "FULL"}


class Store:
    """One connection to the state database with BitingLip's pragmas.

    A Store belongs to one thread at a time. Write transactions go through `write()`, which
    issues BEGIN IMMEDIATE so that a transaction never has to upgrade its lock halfway.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, durability: str) -> None:
        self.path = path
        self.conn = conn
        self.durability = durability

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        _begin_immediate(self.conn)
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def write_one(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """A write transaction of one statement (its own transaction: SQLite takes the write
        lock when the statement starts, as BEGIN IMMEDIATE would), waiting like `write()`."""
        return _with_write_lock(self.conn, lambda: self.conn.execute(sql, params))

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several statements."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def data_version(self) -> int:
        """Changes whenever another connection commits; cheap enough to poll."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def checkpoint(self) -> None:
        """A passive WAL checkpoint: syncs the WAL, never blocks writers."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def backup(self, dest: Path) -> None:
        """A consistent copy through SQLite's online backup API, written atomically."""
        dest = dest.expanduser()
        if dest.is_dir():
            raise StoreError(f"backup: {dest} is a directory; give a file path")
        try:  # 0600 like the database: the copy holds the same prompts and completions
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        except OSError as exc:
            raise StoreError(f"backup: cannot write {dest}: {exc.strerror}") from None
        os.fchmod(fd, data_dir.FILE_MODE)
        os.close(fd)
        tmp = Path(name)
        try:
            target = sqlite3.connect(tmp)
            try:
                self.conn.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
            os.replace(tmp, dest)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StoreError(f"backup: cannot write {dest}: {reason}") from None
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

    def close(self) -> None:
        self.conn.close()


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock as `_with_write_lock` does."""
    _with_write_lock(conn, lambda: conn.execute("BEGIN IMMEDIATE"))


def _with_write_lock(conn: sqlite3.Connection, start: Callable[[], T]) -> T:
    """Run `start` (a statement that takes the write lock), retrying while the lock is busy.

    SQLite's own busy handler (the connection's busy_timeout, kept for every other statement)
    backs off to 100 ms sleeps, so under a stream of short transactions from other processes a
    waiting writer can miss every gap for the whole timeout and starve. Here the handler is off
    while the write lock is taken, and the wait retries every 0.05-1 ms until BUSY_TIMEOUT_MS.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return start()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            if time.monotonic() > deadline:
                raise StoreError(
                    "the state database stayed locked for 10 s; a process holds a write "
                    "transaction open (a hung bitinglip, or another program using the file)"
                )
            time.sleep(random.uniform(0.00005, 0.001))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def check_file(path: Path) -> None:
    """Refuse a file at `path` that is not a BitingLip database, without writing to it."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a database; point --data-dir elsewhere")
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
        size = path.stat().st_size
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the state database: {exc.strerror}") from None
    where = f"{path} is not a BitingLip state database"
    fix = "move it away or point --data-dir elsewhere; it was left untouched"
    if size == 0:
        raise StoreError(f"{where} (it is empty, 0 bytes); {fix}")
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise StoreError(f"{where} (no SQLite header); {fix}")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    page_count, _, _, _ = struct.unpack(">IIII", header[28:44])
    valid_for = struct.unpack(">I", header[92:96])[0]
    change_counter = struct.unpack(">I", header[24:28])[0]
    truncated = size % page_size != 0
    # With a WAL beside it the file may lag its header: a checkpoint killed midway writes page 1
    # before it extends the file, and SQLite finishes the job from the WAL on the next open.
    wal = Path(f"{path}-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if valid_for == change_counter and size < page_count * page_size and not wal_pending:
        truncated = True
    if truncated:
        raise StoreError(f"{path} is truncated ({size} bytes); restore it from a backup; {fix}")
    if struct.unpack(">I", header[68:72])[0] != APPLICATION_ID:
        raise StoreError(f"{where} (an SQLite database of another application); {fix}")


def connect(path: Path, durability: str) -> sqlite3.Connection:
    """A connection with BitingLip's pragmas (the file must already be checked)."""
    if durability not in DURABILITY_SYNC:
        raise StoreError(f"unknown durability {durability!r}; use 'normal' or 'full'")
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {DURABILITY_SYNC[durability]}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: big batches commit without spilling
    return conn


def open_store(path: Path, durability: str = "normal", *, create: bool = True) -> Store:
    """Open (creating and migrating when needed) the state database at `path`."""
    path = path.expanduser()
    if not path.exists():
        if not create:
            raise StoreError(f"no state database at {path}; run a command that creates it first")
        _create(path, durability)
    check_file(path)
    conn = connect(path, durability)
    try:
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: the state database cannot be used: {exc}") from None
    except BaseException:
        conn.close()
        raise
    data_dir.warn_if_open(path.parent)  # after any refusal: an error stays one line
    return Store(path, conn, durability)


def _create(path: Path, durability: str) -> None:
    """Build a fresh database beside `path`, then move it into place: never a half-made file.

    The file is made 0600 (`mkstemp`) before SQLite opens it, so its -wal and -shm, which SQLite
    creates with the database file's mode, are 0600 too."""
    data_dir.ensure(path.parent)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    except OSError as exc:
        raise StoreError(f"cannot create the state database {path}: {exc.strerror}") from None
    os.fchmod(fd, data_dir.FILE_MODE)  # whatever the umask
    os.close(fd)
    tmp = Path(name)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            # Before the first table: free pages can then be given back to the file system
            # (`PRAGMA incremental_vacuum`, after retention prunes: store/space.py).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        with suppress(FileExistsError):  # another process created it first: keep theirs
            os.link(tmp, path)
    except OSError as exc:
        raise StoreError(f"cannot create the state database {path}: {exc.strerror}") from None
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with suppress(FileNotFoundError):
                leftover.unlink()
    del durability  # the pragma is per connection; set in connect()


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply pending numbered migrations in one IMMEDIATE transaction."""
    from bitinglip.control.store.schema import MIGRATIONS

    latest = len(MIGRATIONS)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > latest:
        raise StoreError(
            f"the state database is at schema version {version}, newer than this BitingLip "
            f"understands ({latest}); upgrade bitinglip"
        )
    if version == latest:
        return
    import sqlite_utils

    migrations = sqlite_utils.Migrations("bitinglip")
    for number, (name, statements) in enumerate(MIGRATIONS, start=1):
        migrations(name=f"{number:04d}_{name}")(_migration_fn(statements))
    _begin_immediate(conn)
    try:
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) < latest:
            migrations.apply(sqlite_utils.Database(conn))
            conn.execute(f"PRAGMA user_version = {latest}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migration_fn(statements: tuple[str, ...]) -> Callable[[sqlite_utils.Database], None]:
    def apply(db: sqlite_utils.Database) -> None:
        for statement in statements:
            db.execute(statement)

    return apply
