"""Reading the queue: tasks, their events and output, counts. Read-only; any thread's Store."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bitinglip.control.queue import keyset
from bitinglip.control.queue.tasks import KINDS, TaskState
from bitinglip.control.store.db import Store
from bitinglip.errors import NotFoundError

# Why a queued task waits: its placement group's reason (`wait_reasons`, one row per group).
WAIT_REASON = (
    "(SELECT reason FROM wait_reasons w WHERE tasks.state = 'queued' AND w.model = tasks.model"
    " AND w.host = coalesce(tasks.host, '') AND w.labels = coalesce(tasks.labels, ''))"
)
_COLUMNS = (
    "id, kind, state, priority, payload, model, host, labels, idempotency_key, job_id, line_no,"
    " custom_id, attempt, max_attempts, retry_on_error, run_after, lease_owner, lease_token,"
    " lease_expires_at, ran_on, cancel_requested, result, error, error_kind, created_at,"
    f" started_at, finished_at, progress, {WAIT_REASON}, pruned_at"
)


@dataclass(frozen=True)
class Task:
    id: int
    kind: str
    state: TaskState
    priority: int
    payload: Any
    model: str | None
    host: str | None
    labels: dict[str, str] | None
    idempotency_key: str | None
    job_id: int | None
    line_no: int | None
    custom_id: str | None
    attempt: int
    max_attempts: int
    retry_on_error: bool
    run_after: float
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    ran_on: str | None
    cancel_requested: bool
    result: Any
    error: str | None
    error_kind: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: Any = None  # the latest progress of a running task (a pull's bytes, rate, ETA)
    # Why a queued model task is not running yet (placement's word: `waiting: pulling to gpu2
    # (43%)`, `fits nowhere: ...`); None once claimed, or when nothing holds it back.
    wait_reason: str | None = None
    # When retention pruned its outputs, events, result and payload (None: it has them).
    pruned_at: float | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Task:
        values = list(row)
        values[2] = TaskState(values[2])
        for i in (4, 7, 21, 27):  # payload, labels, result, progress are JSON
            values[i] = None if values[i] is None else json.loads(values[i])
        values[14], values[20] = bool(values[14]), bool(values[20])
        return cls(*values)

    @property
    def age_s(self) -> float:
        return time.time() - self.created_at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_task(store: Store, task_id: int) -> Task:
    row = store.conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no task {task_id}; list tasks with `bitinglip tasks ls`")
    return Task.from_row(row)


@dataclass(frozen=True)
class TaskListing:
    """A page of tasks, newest first: `next` (an id: list `after` it) reads the page after,
    `prev` (list `before` it) the page before; None where there is none. `searched`: the
    filter is not one index's alone, so this page looked at that many tasks only (the next
    page goes on past them)."""

    tasks: list[Task]
    next: int | None
    prev: int | None
    searched: int | None = None


def list_page(
    store: Store,
    *,
    state: TaskState | None = None,
    job_id: int | None = None,
    kinds: Sequence[str] = (),
    limit: int = 50,
    after: int | None = None,
    before: int | None = None,
    window: int = keyset.WINDOW,
) -> TaskListing:
    """A keyset page of tasks, newest first, read through the index that bounds it."""
    terms = keyset.Terms(
        states=None if state is None else frozenset({TaskState(state).value}),
        kinds=frozenset(str(k) for k in kinds) if kinds else None,
        jobs=None if job_id is None else frozenset({job_id}),
    )
    with store.read() as conn:
        totals = counts(store)
        stream = keyset.choose(conn, terms, totals, lambda job: counts(store, job_id=job), window)
        if stream is None:
            return TaskListing([], None, None)
        part = keyset.by_id(
            conn,
            stream,
            _COLUMNS,
            limit=limit,
            after=None if after is None else keyset.Cursor(after),
            before=None if before is None else keyset.Cursor(before),
            window=window,
        )
    return TaskListing(
        [Task.from_row(row[:-2]) for row in part.rows],
        None if part.next is None else part.next.id,
        None if part.prev is None else part.prev.id,
        part.window,
    )


def job_tasks(store: Store, job_id: int, page: int = 1_000) -> Iterator[Task]:
    """A job's tasks in the order of the lines they came from (tasks without a line number
    first, by id), read by keyset pages of `page` rows through `tasks_job` (job_id, line_no):
    memory does not grow with the job."""
    for where, order in (("line_no IS NULL AND id > ?", "id"), ("line_no > ?", "line_no")):
        after = -1
        while True:
            rows = store.conn.execute(
                f"SELECT {_COLUMNS}, {order} FROM tasks INDEXED BY tasks_job WHERE job_id = ?"
                f" AND {where} ORDER BY {order} LIMIT ?",
                (job_id, after, page),
            ).fetchall()
            yield from (Task.from_row(row[:-1]) for row in rows)
            if len(rows) < page:
                break
            after = rows[-1][-1]


def counts(store: Store, *, job_id: int | None = None) -> dict[str, int]:
    """Tasks per state, every state present (zero when none): the counters the triggers keep
    (`task_counts`, `job_counts`), never a count of rows."""
    if job_id is None:
        rows = store.conn.execute("SELECT state, n FROM task_counts")
    else:
        rows = store.conn.execute("SELECT state, n FROM job_counts WHERE job_id = ?", (job_id,))
    found = dict(rows.fetchall())
    return {s.value: int(found.get(s.value, 0)) for s in TaskState}


def queued_at_or_above(store: Store, priority: int, cap: int | None = None) -> int:
    """How many queued tasks have `priority` or more, read per kind through `tasks_ready`
    (bounded by the tasks counted); with `cap`, counting stops there (the answer is then at
    least `cap`)."""
    limit = -1 if cap is None else cap
    (found,) = store.conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM tasks INDEXED BY tasks_ready WHERE state = 'queued'"
        f" AND kind IN ({', '.join('?' * len(KINDS))}) AND priority >= ? LIMIT ?)",
        (*KINDS, priority, limit),
    ).fetchone()
    return int(found)


def events(store: Store, task_id: int) -> list[dict[str, Any]]:
    cur = store.conn.execute(
        "SELECT at, from_state, to_state, attempt, detail FROM task_events WHERE task_id = ?"
        " ORDER BY id",
        (task_id,),
    )
    return _dicts(cur)


def output(store: Store, task_id: int) -> str:
    rows = store.conn.execute(
        "SELECT data FROM task_output WHERE task_id = ? ORDER BY seq", (task_id,)
    ).fetchall()
    return "".join(r[0] for r in rows)


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
