"""Following one task: its row, and the events and output added since the last look.

A reader keeps a `FollowMark` (the last event id and output chunk it has) and asks for what is
new; one call is a few indexed reads, cheap enough to repeat several times a second. When the
task runs again (a retry, or a requeue after a lost runner) its output starts over: the answer
says so (`restarted`) and carries the new run's output from its start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bitinglip.control.queue.views import Task, get_task
from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class FollowMark:
    """How far a reader has read: the last event id, output chunk and lease token seen."""

    event_id: int = 0
    seq: int = 0
    token: int | None = None


@dataclass(frozen=True)
class FollowStep:
    task: Task
    events: list[dict[str, Any]]  # new events: id, at, from_state, to_state, attempt, detail
    output: str  # new output (the whole run's when `restarted`)
    restarted: bool
    mark: FollowMark = field(default_factory=FollowMark)


def follow_step(store: Store, task_id: int, mark: FollowMark) -> FollowStep:
    """What is new about the task since `mark` (all of it for a fresh `FollowMark()`)."""
    with store.read() as conn:
        task = get_task(store, task_id)
        restarted = mark.token is not None and task.lease_token != mark.token and mark.seq > 0
        seq = 0 if restarted else mark.seq
        chunks = conn.execute(
            "SELECT seq, data FROM task_output WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, seq),
        ).fetchall()
        cur = conn.execute(
            "SELECT id, at, from_state, to_state, attempt, detail FROM task_events"
            " WHERE task_id = ? AND id > ? ORDER BY id",
            (task_id, mark.event_id),
        )
        names = [d[0] for d in cur.description]
        events = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    new_mark = FollowMark(
        events[-1]["id"] if events else mark.event_id,
        chunks[-1][0] if chunks else seq,
        task.lease_token,
    )
    return FollowStep(task, events, "".join(c[1] for c in chunks), restarted, new_mark)
