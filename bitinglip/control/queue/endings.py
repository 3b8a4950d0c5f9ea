"""How a running task ends when it does not succeed: a failure is retried after a backoff or
ends the task (`failed` for its own error, `dead` once infrastructure failures spend its
attempts); a cancel ends it `canceled`; a queued task that asked not to wait (`immediate` in its
payload) fails at once when placement finds its model fits nowhere. All run inside the caller's
write transaction.
"""

from __future__ import annotations

import sqlite3

from bitinglip.config import QueueConfig
from bitinglip.control.queue.states import Q, R, TaskState, transition


def after_failure(
    conn: sqlite3.Connection,
    config: QueueConfig,
    task_id: int,
    now: float,
    error: str,
    kind: str,
    retry: bool,
) -> TaskState:
    """Requeue `task_id` with attempt + 1 after a backoff, or end it; returns its new state."""
    attempt, max_attempts, retry_on_error = conn.execute(
        "SELECT attempt, max_attempts, retry_on_error FROM tasks WHERE id = ?", (task_id,)
    ).fetchone()
    retry = retry or bool(retry_on_error)
    clear = "lease_owner = NULL, lease_expires_at = NULL, error = ?, error_kind = ?"
    if retry and attempt < max_attempts:
        delay = min(config.retry_backoff_s * 2 ** (attempt - 1), config.retry_backoff_max_s)
        transition(
            conn,
            [(task_id, R, attempt)],
            Q,
            now,
            f"{clear}, attempt = attempt + 1, run_after = ?, ran_on = NULL, started_at = NULL",
            (error, kind, now + delay),
            detail=f"{kind}: {error}; retry in {delay:g}s",
        )
        return Q
    end = TaskState.DEAD if retry else TaskState.FAILED
    transition(
        conn,
        [(task_id, R, attempt)],
        end,
        now,
        f"{clear}, finished_at = ?",
        (error, kind, now),
        detail=f"{kind}: {error}",
    )
    return end


def end_canceled(conn: sqlite3.Connection, ids: list[int], now: float, detail: str) -> TaskState:
    """End these tasks (queued or running) as canceled."""
    rows = conn.execute(
        f"SELECT id, state, attempt FROM tasks WHERE id IN ({','.join('?' * len(ids))})", ids
    ).fetchall()
    transition(
        conn,
        [(i, TaskState(s), a) for i, s, a in rows],
        TaskState.CANCELED,
        now,
        "lease_owner = NULL, lease_expires_at = NULL, finished_at = ?",
        (now,),
        detail=detail,
    )
    return TaskState.CANCELED


def fail_immediate(
    conn: sqlite3.Connection,
    group: tuple[str, str | None, str | None],
    now: float,
    reason: str,
) -> int:
    """Fail the queued tasks of one placement group (model, host, labels) whose payload asks
    not to wait (`"immediate": true`, the CLI's `--immediate`) with `reason`, error kind
    `unplaceable`; returns how many."""
    rows = conn.execute(
        "SELECT id, attempt FROM tasks INDEXED BY tasks_queued_model WHERE state = 'queued'"
        " AND model = ? AND host IS ? AND labels IS ? AND payload->>'immediate' = 1",
        group,
    ).fetchall()
    transition(
        conn,
        [(i, Q, a) for i, a in rows],
        TaskState.FAILED,
        now,
        "error = ?, error_kind = 'unplaceable', finished_at = ?, wait_reason = NULL",
        (reason, now),
        detail=f"unplaceable: {reason}",
    )
    return len(rows)
