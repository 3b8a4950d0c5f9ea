"""What a task is and how it enters the queue: `TaskSpec` (its kind a `TaskKind` of the agent
protocol), and `TaskIntake`, which queues them (a `TaskQueue` holds one). Each submit is one
transaction: a batch is queued whole or not at all, and an idempotency key already used returns
the task it named. Model kinds and the serving kinds (`load`, `unload`) need a model; a job
takes only `JOB_KINDS`, never a load or unload.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bitinglip_agent.protocol import JOB_KINDS, KINDS, MODEL_KINDS, SERVE_KINDS, TaskKind

from bitinglip.config import QueueConfig
from bitinglip.control.queue.job_stage import JobStage
from bitinglip.control.store.db import Store
from bitinglip.errors import InputError


@dataclass(frozen=True)
class TaskSpec:
    """What to run. `host`/`labels` constrain placement; `max_attempts` None = profile default."""

    kind: TaskKind | str  # a TaskKind or its value (`validate` checks it)
    payload: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    host: str | None = None
    labels: Mapping[str, str] | None = None
    priority: int = 0
    max_attempts: int | None = None
    idempotency_key: str | None = None
    retry_on_error: bool = False
    job_id: int | None = None
    line_no: int | None = None
    custom_id: str | None = None

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown task kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise InputError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.kind in (*MODEL_KINDS, *SERVE_KINDS) and not self.model:
            raise InputError(f"a {self.kind} task needs a model; pass --model NAME")
        if self.payload:
            check_payload(self.payload)


def check_payload(payload: Mapping[str, Any]) -> None:
    """The payload keys the control plane itself reads (`immediate`, `keep_alive_s`)."""
    immediate = payload.get("immediate")
    if immediate is not None and not isinstance(immediate, bool):
        raise InputError(f"payload immediate must be true or false, not {immediate!r}")
    keep_alive = payload.get("keep_alive_s")
    if keep_alive is not None and (
        isinstance(keep_alive, bool)
        or not isinstance(keep_alive, int | float)
        or not math.isfinite(keep_alive)
    ):
        raise InputError(
            f"payload keep_alive_s must be a number of seconds (-1 forever, 0 unload at "
            f"once), not {keep_alive!r}"
        )


compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_INSERT = (
    "INSERT INTO tasks (kind, state, priority, payload, model, host, labels, idempotency_key,"
    " job_id, line_no, custom_id, max_attempts, retry_on_error, run_after, created_at)"
    " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The same for a JSON array of [kind, priority, payload, model, host, labels, job_id, line_no,
# custom_id, max_attempts, retry_on_error] rows (`->` keeps JSON text, `->>` gives SQL values).
_INSERT_MANY = (
    "INSERT INTO tasks (kind, state, priority, payload, model, host, labels, idempotency_key,"
    " job_id, line_no, custom_id, max_attempts, retry_on_error, run_after, created_at)"
    " SELECT value->>0, 'queued', value->>1, value->2, value->>3, value->>4, value->>5, NULL,"
    " value->>6, value->>7, value->>8, value->>9, value->>10, ?1, ?1 FROM json_each(?2)"
)


class TaskIntake:
    """Submitting tasks over one Store; `on_submit` rings the control loop's doorbell."""

    def __init__(
        self,
        store: Store,
        config: QueueConfig,
        clock: Callable[[], float],
        on_submit: Callable[[], None] | None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.on_submit = on_submit

    def submit(self, spec: TaskSpec) -> int:
        """Queue one task durably; an idempotency key already used returns that task's id."""
        spec.validate()
        row = self._row(spec, self.clock())
        if spec.idempotency_key is None:
            task_id = self.store.write_one(_INSERT, row).lastrowid
            assert task_id is not None
        else:
            with self.store.write() as conn:
                task_id = _insert_one(conn, row, spec.idempotency_key)
        if self.on_submit is not None:
            self.on_submit()
        return task_id

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        """Queue many tasks in one transaction; all of them or none."""
        with self.store.write() as conn:
            ids = self._insert(conn, specs)
        if self.on_submit is not None:
            self.on_submit()
        return ids

    def stage_job(self, where: str) -> JobStage:
        """A staging file for one job file's rows (`where`: the file, for errors)."""
        return JobStage(self.store, self.config.max_attempts, self.clock, self.on_submit, where)

    def submit_job(
        self, name: str, source: str | None, fmt: str, specs: Sequence[TaskSpec]
    ) -> tuple[int, list[int]]:
        """A job row and its child tasks, in one transaction; only `JOB_KINDS` (else nothing)."""
        for spec in specs:
            if spec.kind not in JOB_KINDS:
                kind = str(spec.kind)  # its value, also for a TaskKind
                raise InputError(
                    f"a job runs only {', '.join(JOB_KINDS)}, not {kind!r}; nothing queued"
                )
        with self.store.write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (name, source, format, total, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, source, fmt, len(specs), self.clock()),
            )
            assert cur.lastrowid is not None
            job_id = cur.lastrowid
            ids = self._insert(conn, [replace(s, job_id=job_id) for s in specs])
        if self.on_submit is not None:
            self.on_submit()
        return job_id, ids

    def _insert(self, conn: sqlite3.Connection, specs: Sequence[TaskSpec]) -> list[int]:
        for spec in specs:
            spec.validate()
        now = self.clock()
        if len(specs) == 1 or any(spec.idempotency_key for spec in specs):
            return [_insert_one(conn, self._row(s, now), s.idempotency_key) for s in specs]
        # Many rows: one statement over a JSON array, so the per-row work happens in SQLite's C
        # (about 1.4x executemany). Rows get consecutive ids under the write lock.
        default_attempts = self.config.max_attempts
        doc = compact_json(
            [
                [
                    s.kind,
                    s.priority,
                    s.payload,
                    s.model,
                    s.host,
                    dict(s.labels) if s.labels else None,
                    s.job_id,
                    s.line_no,
                    s.custom_id,
                    s.max_attempts or default_attempts,
                    int(s.retry_on_error),
                ]
                for s in specs
            ]
        )
        cur = conn.execute(_INSERT_MANY, (now, doc))
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - cur.rowcount + 1, last + 1))

    def _row(self, spec: TaskSpec, now: float) -> tuple[Any, ...]:
        return (
            spec.kind,
            spec.priority,
            compact_json(spec.payload),
            spec.model,
            spec.host,
            json.dumps(dict(spec.labels), sort_keys=True) if spec.labels else None,
            spec.idempotency_key,
            spec.job_id,
            spec.line_no,
            spec.custom_id,
            spec.max_attempts or self.config.max_attempts,
            int(spec.retry_on_error),
            now,
            now,
        )


def _insert_one(conn: sqlite3.Connection, row: tuple[Any, ...], key: str | None) -> int:
    if key is not None:
        found = conn.execute("SELECT id FROM tasks WHERE idempotency_key = ?", (key,)).fetchone()
        if found:
            return int(found[0])
    cur = conn.execute(_INSERT, row)
    assert cur.lastrowid is not None
    return cur.lastrowid
