"""The queue's usage, for /metrics: tasks per state, the queued tasks split at a priority, and
the tokens of succeeded tasks (in all, and those finished recently). Every figure is a counter
the triggers keep or an indexed read bounded by what it counts, never a count over the table.

`usage` runs its statements on the store's connection and opens no transaction: called inside
one (`Store.read`), its numbers agree with each other and with whatever else that read sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitinglip.control.queue.views import counts, queued_at_or_above
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
    found = counts(store)
    interactive = queued_at_or_above(store, priority)  # bounded by the interactive tasks
    totals = dict(conn.execute("SELECT name, n FROM queue_totals").fetchall())
    (recent,) = conn.execute(  # bounded by the tasks finished in the window
        "SELECT coalesce(sum(result->>'$.usage.completion_tokens'), 0) FROM tasks"
        " INDEXED BY tasks_finished WHERE finished_at >= ? AND state = 'succeeded'",
        (since,),
    ).fetchone()
    return QueueUsage(
        counts=found,
        interactive=interactive,
        batch=found["queued"] - interactive,
        prompt_tokens=int(totals.get("prompt_tokens", 0)),
        completion_tokens=int(totals.get("completion_tokens", 0)),
        recent_completion_tokens=int(recent),
    )
