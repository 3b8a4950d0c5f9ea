"""The moves between task states, and the one function that makes them.

The states themselves (`TaskState`, `TERMINAL`) are the agent protocol's vocabulary
(`bitinglip_agent.protocol`), re-exported here.

`transition` checks every move against `MOVES` and writes a `task_events` row in the same
transaction; `note` records an event that is not a move (a cancel request). `held_leases` is the
fencing check: which of the given (task, token) pairs still hold their lease.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from bitinglip_agent.protocol import TERMINAL, TaskState

from bitinglip.errors import StateError

Q, R = TaskState.QUEUED, TaskState.RUNNING
MOVES: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {(Q, R), (Q, TaskState.CANCELED), (Q, TaskState.FAILED)}  # failed queued: `immediate`
    | {(R, s) for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, Q)}
    | {(R, TaskState.CANCELED)}
    | {(s, Q) for s in (TaskState.FAILED, TaskState.DEAD, TaskState.CANCELED)}
)


Rows = list[tuple[int, TaskState, int]]
Params = tuple[Any, ...] | Callable[[int], tuple[Any, ...]]


def transition(
    conn: sqlite3.Connection,
    rows: Rows,
    to: TaskState,
    now: float,
    sets: str,
    params: Params,
    *,
    detail: str | None = None,
) -> None:
    """The one way a task changes state: check each move, update, and record an event.

    `rows` are (task_id, current state, attempt) read in the same transaction.
    """
    if not rows:
        return
    for task_id, current, _ in rows:
        if (current, to) not in MOVES:
            raise StateError(f"task {task_id}: cannot move from {current} to {to}")
    per_row = params if callable(params) else (lambda _i, p=params: p)
    conn.executemany(
        f"UPDATE tasks SET state = ?, {sets} WHERE id = ? AND state = ?",
        [(to.value, *per_row(i), i, s.value) for i, s, _ in rows],
    )
    conn.executemany(
        "INSERT INTO task_events (task_id, at, from_state, to_state, attempt, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(i, now, s.value, to.value, a, detail) for i, s, a in rows],
    )


def note(conn: sqlite3.Connection, task_id: int, state: TaskState, now: float, detail: str) -> None:
    """An event that is not a move (a cancel request), in the same log."""
    conn.execute(
        "INSERT INTO task_events (task_id, at, from_state, to_state, attempt, detail)"
        " SELECT id, ?, state, state, attempt, ? FROM tasks WHERE id = ?",
        (now, detail, task_id),
    )
    del state


def held_leases(
    conn: sqlite3.Connection, tokens: Mapping[int, int], owner: str | None = None
) -> dict[int, tuple[int, bool]]:
    """Of the (task_id -> token) given, those running with that token (and that owner).

    Returns task_id -> (attempt, cancel requested).
    """
    found: dict[int, tuple[int, bool]] = {}
    ids = list(tokens)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = conn.execute(
            "SELECT id, lease_token, attempt, cancel_requested, lease_owner FROM tasks"
            f" WHERE state = 'running' AND id IN ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        found.update(
            (i, (a, bool(c))) for i, t, a, c, o in rows if tokens[i] == t and owner in (None, o)
        )
    return found


def labels_match(task_labels: str | None, runner_labels: str) -> bool:
    """SQL function: every label the task asks for is among the runner's labels."""
    if not task_labels:
        return True
    wanted: dict[str, str] = json.loads(task_labels)
    have: dict[str, str] = json.loads(runner_labels)
    return all(have.get(k) == v for k, v in wanted.items())


__all__ = [
    "MOVES",
    "TERMINAL",
    "Params",
    "Q",
    "R",
    "Rows",
    "TaskState",
    "held_leases",
    "labels_match",
    "note",
    "transition",
]
