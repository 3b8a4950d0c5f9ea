"""The queue's usage, for /metrics: tasks per state, the queued tasks split at a priority, and
the tokens of succeeded tasks (in all, and those finished recently).

`usage` runs its statements on the store's connection and opens no transaction: called inside
one (`Store.read`), its numbers agree with each other and with whatever else that read sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitinglip.control.queue.views import counts
from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class QueueUsage:
    """`counts`: tasks per state (every state); `interactive` and `batch`: queued tasks at or
    above the priority, and below it; tokens of succeeded tasks, `recent_completion_tokens`
    those of tasks finished since the time asked about."""

    counts: dict[str, int]
    interactive: int
    batch: int
    prompt_tokens: int
    completion_tokens: int
    recent_completion_tokens: int


def usage(store: Store, priority: int, since: float) -> QueueUsage:
    """The queue split at `priority`, with the completion tokens of tasks finished at or after
    `since` (this machine's clock)."""
    conn = store.conn
    queued = dict(
        conn.execute(
            "SELECT priority >= ?, count(*) FROM tasks WHERE state = 'queued'"
            " GROUP BY priority >= ?",
            (priority, priority),
        ).fetchall()
    )
    prompt, completion = conn.execute(
        "SELECT coalesce(sum(result->>'$.usage.prompt_tokens'), 0),"
        " coalesce(sum(result->>'$.usage.completion_tokens'), 0)"
        " FROM tasks WHERE state = 'succeeded'"
    ).fetchone()
    (recent,) = conn.execute(
        "SELECT coalesce(sum(result->>'$.usage.completion_tokens'), 0) FROM tasks"
        " WHERE state = 'succeeded' AND finished_at >= ?",
        (since,),
    ).fetchone()
    return QueueUsage(
        counts=counts(store),
        interactive=int(queued.get(1, 0)),
        batch=int(queued.get(0, 0)),
        prompt_tokens=prompt,
        completion_tokens=completion,
        recent_completion_tokens=recent,
    )
