"""The durable task queue.

A task moves through a small set of states (`TaskState`); every move goes through
`states.transition`, which checks it against `MOVES` and writes a `task_events` row in the same
transaction. A runner claims tasks with a lease (owner, expiry) and a fresh fencing token; it
reports back with that token, and a report with a stale token is refused (`StaleLeaseError`).

Attempts: a task starts at attempt 1. An infrastructure failure (or an expired lease) requeues it
with attempt + 1 after an exponential backoff, until `max_attempts` runs have failed; then it is
`dead` with its last error. An application error fails it at once, unless it asked to retry.

What a task is (`TaskSpec`) and submitting it live in intake.py (`TaskQueue.intake`); how a run
ends after a failure or a cancel in endings.py; the task kinds and states are the agent
protocol's (`TaskKind`, `KINDS`, `TaskState`, `TERMINAL`), re-exported here. `TaskQueue` holds
the runner's side (claim, heartbeat, report, reap) and the operator's (cancel, retry).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import KINDS, MODEL_KINDS, SERVE_KINDS, TaskKind

from bitinglip.config import QueueConfig
from bitinglip.control.queue.endings import after_failure, end_canceled
from bitinglip.control.queue.intake import TaskIntake, TaskSpec, compact_json
from bitinglip.control.queue.states import (
    MOVES,
    TERMINAL,
    Q,
    R,
    TaskState,
    held_leases,
    labels_match,
    note,
    transition,
)
from bitinglip.control.store.db import Store
from bitinglip.errors import StaleLeaseError, StateError


@dataclass(frozen=True)
class Claim:
    """A task handed to a runner: it must report back with `token`."""

    task_id: int
    kind: str
    payload: dict[str, Any]
    model: str | None
    token: int
    attempt: int
    lease_expires_at: float


@dataclass(frozen=True)
class Beat:
    """A heartbeat's answer: tasks whose lease the runner lost, and tasks asked to cancel."""

    lost: frozenset[int]
    cancel: frozenset[int]


class TaskQueue:
    """The queue over one Store. Not thread-safe: one TaskQueue per thread."""

    def __init__(
        self,
        store: Store,
        config: QueueConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_submit: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.on_submit = on_submit
        self.intake = TaskIntake(store, config, clock, on_submit)
        store.conn.create_function("labels_match", 2, labels_match, deterministic=True)

    def submit(self, spec: TaskSpec) -> int:
        return self.intake.submit(spec)

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        return self.intake.submit_many(specs)

    def submit_job(
        self, name: str, source: str | None, fmt: str, specs: Sequence[TaskSpec]
    ) -> tuple[int, list[int]]:
        return self.intake.submit_job(name, source, fmt, specs)

    # -- running ---------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        *,
        limit: int = 1,
        kinds: Iterable[str] = KINDS,
        host: str | None = None,
        labels: Mapping[str, str] | None = None,
        lease_s: float | None = None,
        models: Iterable[str] | None = None,
        any_path: bool = False,
    ) -> list[Claim]:
        """Lease up to `limit` ready tasks, highest priority first, to `owner`.

        A task pinned to a host is only claimed by a runner serving that host; a task asking for
        labels only by a runner whose labels include them; with `models`, a task naming a model
        only when it is one of them.
        """
        kinds = tuple(kinds)
        if not kinds:
            return []
        now = self.clock()
        expires = now + (lease_s or self.config.lease_ttl_s)
        have = () if models is None else tuple(models)
        paths = " OR model LIKE '%.gguf'" if any_path else ""
        only_models = (
            ""
            if models is None
            else f" AND (model IS NULL OR model IN ({','.join('?' * len(have))}){paths})"
        )
        where = (
            "state = 'queued' AND run_after <= ?"
            " AND (host IS NULL OR host = ?) AND labels_match(labels, ?)"
            f"{only_models}"
        )
        filters = (now, host, json.dumps(dict(labels or {})), *have)
        # A read first: an empty queue costs no write lock (submitters never wait on idle polls).
        seek = have if models is not None and not paths else None
        if seek == () and NAMED_KINDS.issuperset(kinds):
            return []  # kinds that always name a model, and no model to take
        probe, probe_args = _probe(kinds, where, seek)
        if not self.store.conn.execute(probe, (*probe_args, *filters)).fetchone():
            return []
        # Each kind's queue head through `tasks_ready` (kind, priority DESC, id), merged: a deep
        # backlog of one kind is never walked by a claim of another. Kinds that always name a
        # model, claimed for some models, read each (model, kind) head of `tasks_queued_model`.
        heads: list[tuple[str, ...]]
        if seek is not None and NAMED_KINDS.issuperset(kinds):
            heads = [(k, m) for k in kinds for m in seek]
            head = "INDEXED BY tasks_queued_model WHERE kind = ? AND model = ?"
        else:
            heads, head = [(k,) for k in kinds], "INDEXED BY tasks_ready WHERE kind = ?"
        union = " UNION ALL ".join(
            "SELECT * FROM (SELECT id, attempt, lease_token, priority FROM tasks"
            f" {head} AND {where} ORDER BY priority DESC, id LIMIT ?)"
            for _ in heads
        )
        sql = f"SELECT id, attempt, lease_token FROM ({union}) ORDER BY priority DESC, id LIMIT ?"
        args = [a for key in heads for a in (*key, *filters, limit)] + [limit]
        with self.store.write() as conn:
            picked = conn.execute(sql, args).fetchall()
            if not picked:
                return []
            rerun = [i for i, _, token in picked if token > 0]
            if rerun:  # a task run before starts with empty output
                marks = ",".join("?" * len(rerun))
                conn.execute(f"DELETE FROM task_output WHERE task_id IN ({marks})", rerun)
            transition(
                conn,
                [(i, Q, a) for i, a, _ in picked],
                R,
                now,
                "lease_owner = ?, lease_expires_at = ?, lease_token = lease_token + 1,"
                " started_at = ?, ran_on = ?",
                (owner, expires, now, host),
                detail=f"claimed by {owner}",
            )
            marks = ",".join("?" * len(picked))
            got = conn.execute(
                "SELECT id, kind, payload, model, lease_token, attempt FROM tasks"
                f" WHERE id IN ({marks}) ORDER BY priority DESC, id",
                [i for i, _, _ in picked],
            ).fetchall()
        return [Claim(i, k, json.loads(p), m, t, a, expires) for i, k, p, m, t, a in got]

    def heartbeat(
        self, owner: str, tokens: Mapping[int, int], lease_s: float | None = None
    ) -> Beat:
        """Extend the leases `owner` still holds; say which it lost and which should cancel."""
        if not tokens:
            return Beat(frozenset(), frozenset())
        expires = self.clock() + (lease_s or self.config.lease_ttl_s)
        with self.store.write() as conn:
            conn.executemany(
                "UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND lease_token = ?"
                " AND state = 'running' AND lease_owner = ?",
                [(expires, i, t, owner) for i, t in tokens.items()],
            )
            held = held_leases(conn, tokens, owner)
        lost = frozenset(tokens) - frozenset(held)
        return Beat(lost, frozenset(i for i, (_, cancel) in held.items() if cancel))

    def complete(self, task_id: int, token: int, result: Any) -> None:
        stale = self.complete_many([(task_id, token, result)])
        if stale:
            raise StaleLeaseError(f"task {task_id}: lease token {token} is stale; result dropped")

    def complete_many(self, results: Sequence[tuple[int, int, Any]]) -> list[int]:
        """Record results in one transaction; returns the ids whose token was stale (dropped)."""
        now = self.clock()
        with self.store.write() as conn:
            current = held_leases(conn, {i: t for i, t, _ in results})
            payloads = {i: compact_json(r) for i, _, r in results}
            done = [(i, R, a) for i, (a, _) in current.items()]
            transition(
                conn,
                done,
                TaskState.SUCCEEDED,
                now,
                "result = ?, finished_at = ?, lease_owner = NULL, lease_expires_at = NULL",
                lambda i: (payloads[i], now),
            )
        return [i for i, _, _ in results if i not in current]

    def fail(
        self, task_id: int, token: int, error: str, *, retryable: bool, kind: str = "error"
    ) -> TaskState:
        """Record a failure. Retryable (infrastructure) failures requeue until max_attempts."""
        now = self.clock()
        with self.store.write() as conn:
            current = held_leases(conn, {task_id: token})
            if not current:
                raise StaleLeaseError(
                    f"task {task_id}: lease token {token} is stale; error dropped"
                )
            if current[task_id][1]:
                return end_canceled(conn, [task_id], now, "canceled after a failure")
            return after_failure(conn, self.config, task_id, now, error, kind, retryable)

    def confirm_canceled(self, task_id: int, token: int) -> None:
        """The runner stopped a task it was asked to cancel."""
        with self.store.write() as conn:
            if not held_leases(conn, {task_id: token}):
                raise StaleLeaseError(f"task {task_id}: lease token {token} is stale")
            end_canceled(conn, [task_id], self.clock(), "canceled by the runner")

    def release(
        self, items: Sequence[tuple[int, int]], reason: str = "released", delay: float = 0.0
    ) -> int:
        """Give running tasks back to the queue without an attempt penalty (graceful stop; a
        host with no room yet), to run again after `delay` seconds."""
        now = self.clock()
        with self.store.write() as conn:
            current = held_leases(conn, dict(items))
            transition(
                conn,
                [(i, R, a) for i, (a, _) in current.items()],
                Q,
                now,
                "lease_owner = NULL, lease_expires_at = NULL, run_after = ?, ran_on = NULL,"
                " started_at = NULL",
                (now + delay,),
                detail=reason,
            )
        return len(current)

    def append_output(self, task_id: int, token: int, data: str) -> None:
        """Store one batch of output chunks (a runner coalesces chunks before calling this)."""
        with self.store.write() as conn:
            if not held_leases(conn, {task_id: token}):
                raise StaleLeaseError(f"task {task_id}: lease token {token} is stale")
            conn.execute(
                "INSERT INTO task_output (task_id, seq, data) VALUES (?, (SELECT"
                " coalesce(max(seq), 0) + 1 FROM task_output WHERE task_id = ?), ?)",
                (task_id, task_id, data),
            )

    def set_progress(self, items: Sequence[tuple[int, int, Any]]) -> None:
        """Store the latest progress (JSON) of running tasks, in one transaction; a stale token
        is skipped (progress is advisory)."""
        if not items:
            return
        with self.store.write() as conn:
            conn.executemany(
                "UPDATE tasks SET progress = ? WHERE id = ? AND lease_token = ?"
                " AND state = 'running'",
                [(json.dumps(p, separators=(",", ":")), i, t) for i, t, p in items],
            )

    def reap(self) -> int:
        """Requeue (or end) running tasks whose lease expired; returns how many."""
        now = self.clock()
        with self.store.write() as conn:
            expired = conn.execute(
                "SELECT id, cancel_requested FROM tasks WHERE state = 'running'"
                " AND lease_expires_at < ?",
                (now,),
            ).fetchall()
            for task_id, cancel in expired:
                if cancel:
                    end_canceled(conn, [task_id], now, "lease expired after a cancel")
                else:
                    owner = conn.execute(
                        "SELECT lease_owner FROM tasks WHERE id = ?", (task_id,)
                    ).fetchone()[0]
                    error = f"lease expired: runner {owner} stopped reporting"
                    after_failure(conn, self.config, task_id, now, error, "lease_expired", True)
        return len(expired)

    # -- operator actions ------------------------------------------------------------------

    def cancel(self, ids: Iterable[int]) -> dict[int, str]:
        """Cancel queued tasks at once; ask runners to stop running ones. Returns outcomes."""
        now = self.clock()
        outcome: dict[int, str] = {}
        with self.store.write() as conn:
            for task_id in ids:
                row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if row is None:
                    outcome[task_id] = "not found"
                elif row[0] == Q:
                    end_canceled(conn, [task_id], now, "canceled while queued")
                    outcome[task_id] = "canceled"
                elif row[0] == R:
                    conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
                    note(conn, task_id, R, now, "cancel requested")
                    outcome[task_id] = "cancel requested"
                else:
                    outcome[task_id] = f"already {row[0]}"
        return outcome

    def retry(self, ids: Iterable[int]) -> dict[int, str]:
        """Queue failed, dead or canceled tasks again with a fresh attempt budget."""
        now = self.clock()
        outcome: dict[int, str] = {}
        with self.store.write() as conn:
            for task_id in ids:
                row = conn.execute(
                    "SELECT state, attempt, pruned_at FROM tasks WHERE id = ?", (task_id,)
                ).fetchone()
                if row is None:
                    outcome[task_id] = "not found"
                elif row[2] is not None:  # retention cleared its payload: nothing to run
                    outcome[task_id] = "cannot retry: retention pruned its payload"
                elif (TaskState(row[0]), Q) in MOVES and row[0] != R:
                    transition(
                        conn,
                        [(task_id, TaskState(row[0]), row[1])],
                        Q,
                        now,
                        "attempt = 1, run_after = ?, cancel_requested = 0, error = NULL,"
                        " error_kind = NULL, result = NULL, finished_at = NULL",
                        (now,),
                        detail="retried by the operator",
                    )
                    outcome[task_id] = "queued"
                else:
                    outcome[task_id] = f"cannot retry a {row[0]} task"
        if self.on_submit is not None:
            self.on_submit()
        return outcome

    def set_priority(self, task_id: int, priority: int) -> None:
        with self.store.write() as conn:
            row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None or row[0] != Q:
                raise StateError(f"task {task_id} is not queued; only queued tasks change priority")
            conn.execute("UPDATE tasks SET priority = ? WHERE id = ?", (priority, task_id))

    def next_due(self, kinds: Iterable[str] = KINDS) -> float | None:
        """When the next queued task of these kinds waiting on a backoff becomes ready."""
        kinds = tuple(kinds)
        row = self.store.conn.execute(  # per kind through `tasks_due` (kind, run_after)
            "SELECT min(run_after) FROM tasks INDEXED BY tasks_due WHERE state = 'queued'"
            f" AND kind IN ({','.join('?' * len(kinds))}) AND run_after > ?",
            (*kinds, self.clock()),
        ).fetchone()
        return None if row[0] is None else float(row[0])


# Kinds whose tasks always name a model (intake refuses one without): the queued ones are all in
# `tasks_queued_model`, the partial index over queued tasks that name a model.
NAMED_KINDS = frozenset((*MODEL_KINDS, *SERVE_KINDS))


def _probe(
    kinds: tuple[str, ...], where: str, models: tuple[str, ...] | None = None
) -> tuple[str, tuple[str, ...]]:
    """The read before a claim (whether any task matches `where`) and its leading arguments.
    For kinds that always name a model it reads `tasks_queued_model` (model, kind, ...), so a
    backlog of light tasks (echo, which name none) is not walked on every claim of model work
    that finds nothing; with `models`, it seeks each of them there, so the backlog of models
    this claim does not take is not walked either."""
    marks = ",".join("?" * len(kinds))
    if NAMED_KINDS.issuperset(kinds):
        named = "model IS NOT NULL"
        if models is not None:
            named += f" AND model IN ({','.join('?' * len(models))})"
        return (
            "SELECT 1 FROM tasks INDEXED BY tasks_queued_model"
            f" WHERE {named} AND kind IN ({marks}) AND {where} LIMIT 1"
        ), (*(models or ()), *kinds)
    sql = f"SELECT 1 FROM tasks INDEXED BY tasks_ready WHERE kind IN ({marks}) AND {where} LIMIT 1"
    return sql, kinds


__all__ = [
    "KINDS",
    "MOVES",
    "TERMINAL",
    "Beat",
    "Claim",
    "TaskKind",
    "TaskQueue",
    "TaskSpec",
    "TaskState",
]
