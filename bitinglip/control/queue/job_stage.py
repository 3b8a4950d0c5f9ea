"""A job file's rows staged on disk, then queued in one short write transaction.

`JobStage` writes the checked rows of one file (`job_file.JobFile.rows`) into a private SQLite
file beside the state database, in chunks, on a connection of its own: reading and checking a
large file takes no lock on the state database and holds nothing of it in memory. A unique
index there finds an id used twice (bounded memory, whatever the file's size); a row of a kind
outside `JOB_KINDS` is refused. `queue` then inserts the job row and copies every staged row
into `tasks` (line order, consecutive ids) in one `INSERT ... SELECT`: the write lock is held
only for that copy, and a file is queued whole or not at all. The staging file is removed on
the way out.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import JOB_KINDS

from bitinglip.control.store.db import Store
from bitinglip.errors import InputError, StoreError

CHUNK = 8192  # at most this many rows per insert into the staging file
CHUNK_BYTES = 2 << 20  # and about this much JSON (fewer rows when lines are long)
DEPTH = 2  # chunks waiting for the writer thread
_KINDS = frozenset(k.value for k in JOB_KINDS)
# One call per chunk (the encoder's setup is paid once for thousands of rows); NaN and
# infinities (a number like 1e999) are refused: they are not JSON.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_SCHEMA = (
    """CREATE TABLE rows (
        line_no INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        payload TEXT NOT NULL,
        model TEXT,
        host TEXT,
        labels TEXT,
        custom_id TEXT,
        attempts INTEGER
    )""",
    "CREATE UNIQUE INDEX rows_id ON rows (custom_id) WHERE custom_id IS NOT NULL",
)
# From a JSON array of rows (`->>` gives SQL values, and objects as their JSON text).
_ADD = (
    "INSERT INTO rows SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5,"
    " value->>6, value->>7, value->>8 FROM json_each(?)"
)
_COPY = (
    "INSERT INTO main.tasks (kind, state, priority, payload, model, host, labels, job_id,"
    " line_no, custom_id, max_attempts, retry_on_error, run_after, created_at)"
    " SELECT kind, 'queued', priority, payload, model, host, labels, ?1, line_no, custom_id,"
    " coalesce(attempts, ?2), 0, ?3, ?3 FROM staged.rows ORDER BY line_no"
)


class JobStage:
    """One job file's rows on their way into the queue; use as a context manager."""

    def __init__(
        self,
        store: Store,
        max_attempts: int,
        clock: Callable[[], float],
        on_submit: Callable[[], None] | None,
        where: str,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts  # the profile's default, for rows that name none
        self.clock = clock
        self.on_submit = on_submit
        self.where = where  # the file, for errors: "WHERE:LINE: ..."
        self.count = 0
        self.per_chunk = 256  # grows to CHUNK rows once the first chunk's size is known
        try:
            fd, name = tempfile.mkstemp(dir=store.path.parent, prefix=".intake-", suffix=".db")
        except OSError as exc:
            raise StoreError(
                f"cannot stage a job file in {store.path.parent}: {exc.strerror or exc}"
            ) from None
        os.close(fd)  # 0600 (mkstemp): the rows hold prompts
        self.path = Path(name)
        self.conn: sqlite3.Connection | None = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,  # used by _Writer's thread
        )
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -16384"):
            self.conn.execute(f"PRAGMA {pragma}")
        for statement in _SCHEMA:
            self.conn.execute(statement)
        self.conn.execute("BEGIN")

    def __enter__(self) -> JobStage:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()
        for leftover in (self.path, Path(f"{self.path}-journal")):
            with suppress(FileNotFoundError):
                leftover.unlink()

    def add_all(self, rows: Iterable[Sequence[Any]]) -> None:
        """Stage every row (in `job_file.ROW` order, payload and labels decoded). A bad line
        (InputError) is raised once the rows before it are staged, so that the first bad line
        of the file is the one named (an id repeated earlier comes first)."""
        writer = _Writer(self._insert)
        chunk: list[Sequence[Any]] = []
        try:
            try:
                for row in rows:
                    if row[1] not in _KINDS:  # below the file's own check: a job is only work
                        raise InputError(
                            f"{self.where}:{row[0]}: a job runs only {', '.join(JOB_KINDS)},"
                            f" not {row[1]!r}; nothing queued"
                        )
                    chunk.append(row)
                    if len(chunk) >= self.per_chunk:
                        self._flush(chunk, writer)
                        chunk = []
            except InputError:
                self._flush(chunk, writer)  # the rows before the bad line, so that
                writer.close()  # an id they repeat is named first
                raise
            self._flush(chunk, writer)
            writer.close()
        finally:
            writer.stop()

    def _flush(self, chunk: list[Sequence[Any]], writer: _Writer) -> None:
        """Encode a chunk in one call and hand it to the writer; a row that cannot be encoded
        (a number out of range) is refused once the rows before it are handed on."""
        try:
            doc = _encode(chunk)
        except ValueError:
            bad = next(i for i, row in enumerate(chunk) if not _encodes(row))
            self._flush(chunk[:bad], writer)
            writer.close()
            line_no = chunk[bad][0]
            raise InputError(
                f"{self.where}:{line_no}: a number out of range; write it smaller"
            ) from None
        if chunk:
            writer.put(doc)
            self.count += len(chunk)
            # Chunks of about CHUNK_BYTES, at most CHUNK rows: memory stays flat for long lines.
            self.per_chunk = max(16, min(CHUNK, len(chunk) * CHUNK_BYTES // len(doc)))

    def _insert(self, doc: str) -> None:
        """On the writer's thread: one statement over a chunk's JSON array (SQLite's C, without
        the GIL, while the next lines are read)."""
        assert self.conn is not None
        try:
            self.conn.execute(_ADD, (doc,))
        except sqlite3.IntegrityError:  # the unique index: an id used twice
            raise self._repeat(json.loads(doc)) from None
        except sqlite3.OperationalError as exc:  # a full disk, most likely
            raise StoreError(
                f"cannot stage the job file in {self.path.parent}: {exc}; free some space"
            ) from None

    def _repeat(self, chunk: Sequence[Sequence[Any]]) -> InputError:
        """The error for the first row of `chunk` whose id an earlier line has."""
        assert self.conn is not None
        ids: dict[str, int] = {}
        for row in chunk:
            line_no, custom_id = row[0], row[7]
            if custom_id is None:
                continue
            found = self.conn.execute(
                "SELECT line_no FROM rows WHERE custom_id = ? AND line_no < ?", (custom_id, line_no)
            ).fetchone()
            earlier = ids.get(custom_id) or (found and found[0])
            if earlier:
                return InputError(
                    f"{self.where}:{line_no}: id {custom_id!r} repeats line {earlier};"
                    " give each line its own id"
                )
            ids[custom_id] = line_no
        raise AssertionError("the staging table refused a chunk without a repeated id")

    def queue(self, name: str, source: str | None, fmt: str) -> int:
        """The job row and a task per staged row, in one write transaction; the job's id."""
        assert self.conn is not None
        self.conn.execute("COMMIT")
        self.conn.close()
        self.conn = None
        conn = self.store.conn
        conn.execute("ATTACH DATABASE ? AS staged", (str(self.path),))
        # The copy's statement journal (what undoes it alone, inside the transaction) grows with
        # the rows: a file, not memory (the connection keeps temp data in memory otherwise).
        conn.execute("PRAGMA temp_store = FILE")
        try:
            with self.store.write():
                now = self.clock()
                job_id = conn.execute(
                    "INSERT INTO jobs (name, source, format, total, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, source, fmt, self.count, now),
                ).lastrowid
                assert job_id is not None
                conn.execute(_COPY, (job_id, self.max_attempts, now))
        finally:
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("DETACH DATABASE staged")
        if self.on_submit is not None:
            self.on_submit()
        return job_id


def _encodes(row: Sequence[Any]) -> bool:
    try:
        _encode(row)
    except ValueError:
        return False
    return True


class _Writer:
    """Runs `insert` on each document put, on a thread of its own, at most `DEPTH` waiting.
    The first error is kept (later documents are dropped) and raised by `put` or `close`."""

    def __init__(self, insert: Callable[[str], None]) -> None:
        self.insert = insert
        self.docs: queue.Queue[str | None] = queue.Queue(maxsize=DEPTH)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="job-stage", daemon=True)
        self.thread.start()

    def put(self, doc: str) -> None:
        if self.error is not None:
            self.close()
        self.docs.put(doc)

    def close(self) -> None:
        """Wait for every document put; raise the first error."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.docs.put(None)
            self.thread.join()

    def _run(self) -> None:
        while (doc := self.docs.get()) is not None:
            if self.error is None:
                try:
                    self.insert(doc)
                except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                    self.error = exc
