"""Retention: pruning what finished tasks stored, in small batches that never hold the queue.

Only tasks in a final state (`TERMINAL`) whose `finished_at` is older than a cut-off are
touched, never queued or running ones: each batch reads its candidates from `tasks_finished`
inside the write transaction that prunes them (so a retry cannot slip in between), and at most
`BATCH` of them, starting where the last batch stopped: every batch is bounded by the rows it
returns, whatever the table holds.

- **Outputs** (`retention.outputs`): the task's output chunks and events are deleted, its
  result, progress and payload cleared (payload `{}`), and `pruned_at` set, so readers tell
  "pruned" from "no result". The payload goes too: it holds the prompt (a team's gateway would
  otherwise keep every prompt for ever), and for echo and embeddings it is as large as the
  result. So a pruned task cannot be retried (`TaskQueue.retry` says why). The row keeps its
  kind, state, model, job line and id, attempt, error and times. How far this walk has gone is
  kept in `retention_marks`, so pruned rows are not walked again (by a restarted controller
  either); a mark never passes a minute ago, so a task whose commit waited for the write lock
  is not stepped over.
- **Rows** (`retention.tasks`): the task row, its output chunks and events; a model copy that
  names it (`host_models.task_id`, the pull that made it) forgets it. A job's row stays (one
  small row per batch file): `jobs export` says what is gone instead of "no job". The counters
  (`task_counts`, `job_counts`) follow the deletes through migration 6's triggers.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from bitinglip.config import RetentionConfig
from bitinglip.config_retention import MIN_RETENTION_S
from bitinglip.control.queue.states import TERMINAL
from bitinglip.control.store import space
from bitinglip.control.store.db import Store

BATCH = 500  # tasks per write transaction: ~10-25 ms of lock (measured, 5 KiB per task)
_FINAL = "(" + ", ".join(f"'{s.value}'" for s in TERMINAL) + ")"
_START = (-1.0, 0)  # before every (finished_at, id)


@dataclass
class Pruned:
    """What a prune removed (or, dry, would remove). `bytes`: the text it held (results,
    payloads, output chunks, event details, errors of deleted rows)."""

    outputs_pruned: int = 0  # tasks whose outputs, events, result and payload were cleared
    tasks_deleted: int = 0  # task rows deleted (with their outputs and events)
    output_chunks: int = 0
    events: int = 0
    bytes: int = 0
    job_ids: set[int] = field(default_factory=set)  # jobs that lost outputs or rows

    @property
    def tasks(self) -> int:
        return self.outputs_pruned + self.tasks_deleted

    def add(self, other: Pruned) -> None:
        self.outputs_pruned += other.outputs_pruned
        self.tasks_deleted += other.tasks_deleted
        self.output_chunks += other.output_chunks
        self.events += other.events
        self.bytes += other.bytes
        self.job_ids |= other.job_ids

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["job_ids"]
        return data | {"jobs": len(self.job_ids)}


@dataclass(frozen=True)
class Cutoffs:
    """Times (this machine's clock) before which finished tasks lose their outputs, and their
    rows; None: never."""

    outputs_before: float | None
    rows_before: float | None

    @classmethod
    def of(cls, config: RetentionConfig, now: float) -> Cutoffs:
        def before(keep_s: float) -> float | None:
            return None if math.isinf(keep_s) else now - keep_s

        return cls(before(config.outputs), before(config.tasks))


class Pruner:
    """Prunes one Store in batches; keeps where its walks are. One per thread."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._outputs_at = _START  # the last (finished_at, id) the outputs walk passed
        self._rows_at = _START  # the same for the rows walk (moves only when dry)

    def prune(
        self,
        cut: Cutoffs,
        *,
        dry_run: bool = False,
        batch: int = BATCH,
        on_batch: Callable[[Pruned], None] | None = None,
    ) -> Pruned:
        """Every batch there is for `cut`: rows first, then outputs (dry: counted, unchanged)."""
        total = Pruned()
        for step in (self.rows_batch, self.outputs_batch):
            while True:
                done, more = step(cut, batch, dry_run)
                total.add(done)
                if on_batch is not None and (done.tasks or not more):
                    on_batch(total)
                if not more:
                    break
        return total

    def step(self, cut: Cutoffs, batch: int = BATCH) -> bool:
        """One batch of the work `cut` asks for (rows first); True when it found some."""
        done, _ = self.rows_batch(cut, batch)
        if done.tasks:
            return True
        done, _ = self.outputs_batch(cut, batch)
        return done.tasks > 0

    # -- one batch -------------------------------------------------------------------------

    def rows_batch(
        self, cut: Cutoffs, batch: int = BATCH, dry_run: bool = False
    ) -> tuple[Pruned, bool]:
        """Delete up to `batch` finished tasks older than the rows cut-off; (what, more)."""
        if cut.rows_before is None:
            return Pruned(), False
        with self._transaction(dry_run) as conn:
            rows = _candidates(conn, self._rows_at, cut.rows_before, "", batch)
            ids = [task_id for task_id, _, _ in rows]
            done = _measure(conn, ids, whole_rows=True)
            done.tasks_deleted = len(ids)
            done.job_ids = {job for _, _, job in rows if job is not None}
            if ids and not dry_run:
                _delete_rows(conn, ids)
        if rows and dry_run:
            self._rows_at = (rows[-1][1], rows[-1][0])
        return done, len(rows) == batch

    def outputs_batch(
        self, cut: Cutoffs, batch: int = BATCH, dry_run: bool = False
    ) -> tuple[Pruned, bool]:
        """Prune the outputs of up to `batch` finished tasks older than the outputs cut-off
        (and not old enough to lose their rows); (what, more)."""
        if cut.outputs_before is None:
            return Pruned(), False
        now = self.clock()
        with self._transaction(dry_run) as conn:
            # Older rows are the rows walk's (deleted first; dry, counted there).
            floor = _START if cut.rows_before is None else (cut.rows_before, 0)
            self._outputs_at = max(self._outputs_at, _mark(conn), floor)
            rows = _candidates(
                conn, self._outputs_at, cut.outputs_before, " AND pruned_at IS NULL", batch
            )
            ids = [task_id for task_id, _, _ in rows]
            done = _measure(conn, ids, whole_rows=False)
            done.outputs_pruned = len(ids)
            done.job_ids = {job for _, _, job in rows if job is not None}
            if ids:
                self._outputs_at = (rows[-1][1], rows[-1][0])
            if ids and not dry_run:
                _clear_outputs(conn, ids, now)
                _set_mark(conn, min(self._outputs_at, (now - MIN_RETENTION_S, 0)))
        return done, len(rows) == batch

    def _transaction(self, dry_run: bool) -> AbstractContextManager[sqlite3.Connection]:
        return self.store.read() if dry_run else self.store.write()


def _candidates(
    conn: sqlite3.Connection, after: tuple[float, int], before: float, extra: str, limit: int
) -> list[tuple[int, float, int | None]]:
    """(id, finished_at, job_id) of final tasks finished before `before`, after the
    (finished_at, id) `after`, oldest first: one range of `tasks_finished`."""
    return conn.execute(
        "SELECT id, finished_at, job_id FROM tasks INDEXED BY tasks_finished"
        " WHERE (finished_at, id) > (?, ?) AND finished_at < ?"
        f" AND state IN {_FINAL}{extra} ORDER BY finished_at, id LIMIT ?",
        (*after, before, limit),
    ).fetchall()


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def _measure(conn: sqlite3.Connection, ids: Sequence[int], *, whole_rows: bool) -> Pruned:
    """How many chunks and events these tasks hold, and the bytes of text that go."""
    if not ids:
        return Pruned()
    marks = _marks(ids)
    chunks, chunk_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum(length(data)), 0) FROM task_output WHERE task_id IN"
        f" ({marks})",
        ids,
    ).fetchone()
    events, event_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum(length(detail)), 0) FROM task_events WHERE task_id IN"
        f" ({marks})",
        ids,
    ).fetchone()
    columns = ("result", "payload", "progress", *(("error",) if whole_rows else ()))
    text = " + ".join(f"coalesce(length({column}), 0)" for column in columns)
    (row_bytes,) = conn.execute(
        f"SELECT coalesce(sum({text}), 0) FROM tasks WHERE id IN ({marks})", ids
    ).fetchone()
    return Pruned(output_chunks=chunks, events=events, bytes=chunk_bytes + event_bytes + row_bytes)


def _clear_outputs(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    marks = _marks(ids)
    conn.execute(f"DELETE FROM task_output WHERE task_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", ids)
    # The rows are deleted and inserted again, smaller, rather than updated: SQLite merges
    # b-tree pages that a delete leaves under a third full, never those a shrinking update
    # leaves (the file would keep the pages of every pruned payload and result). The counters'
    # delete and insert triggers cancel out; the foreign keys that name these rows
    # (host_models.task_id) are checked at the commit, when the rows are back.
    conn.execute("DROP TABLE IF EXISTS temp.pruning")
    conn.execute(
        f"CREATE TEMP TABLE pruning AS SELECT * FROM main.tasks WHERE id IN ({marks})", ids
    )
    conn.execute(
        "UPDATE temp.pruning SET result = NULL, payload = '{}', progress = NULL, pruned_at = ?",
        (now,),
    )
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute(f"DELETE FROM main.tasks WHERE id IN ({marks})", ids)
    conn.execute("INSERT INTO main.tasks SELECT * FROM temp.pruning ORDER BY id")
    conn.execute("DROP TABLE temp.pruning")


def _delete_rows(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    marks = _marks(ids)
    conn.execute(f"DELETE FROM task_output WHERE task_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", ids)
    conn.execute(f"UPDATE host_models SET task_id = NULL WHERE task_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", ids)


def _mark(conn: sqlite3.Connection) -> tuple[float, int]:
    row = conn.execute(
        "SELECT finished_at, task_id FROM retention_marks WHERE name = 'outputs'"
    ).fetchone()
    return _START if row is None else (float(row[0]), int(row[1]))


def _set_mark(conn: sqlite3.Connection, at: tuple[float, int]) -> None:
    conn.execute(
        "INSERT INTO retention_marks (name, finished_at, task_id) VALUES ('outputs', ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET finished_at = excluded.finished_at,"
        " task_id = excluded.task_id"
        " WHERE (excluded.finished_at, excluded.task_id) > (finished_at, task_id)",
        at,
    )


GIVE_BACK_FROM_PAGES = 2048  # free pages (8 MiB) kept for new rows before any are given back
IDLE_CHECK_S = 30.0  # how often an idle controller looks for something to prune


class RetentionTurns:
    """The controller's share of retention: at most one batch per turn of its loop (rows, else
    outputs, else giving free pages back), taken only when it has no work to claim first."""

    def __init__(
        self, store: Store, config: RetentionConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.pruner = Pruner(store, clock)

    def turn(self) -> float:
        """One batch; seconds until the next (0 while there is more to do)."""
        if self.pruner.step(Cutoffs.of(self.config, self.clock())):
            return 0.0
        if space.pragma(self.store, "freelist_count") >= GIVE_BACK_FROM_PAGES:
            return 0.0 if space.give_back(self.store) else IDLE_CHECK_S
        return IDLE_CHECK_S
