"""What placement reads and writes of the queue: the queued demand for each model, and why
queued model tasks wait (`tasks.wait_reason`).

Demand is read through `tasks_queued_model`, a partial index over the queued tasks that name a
model, grouped by (model, host, labels): placement decides per model and honours a task's host
and labels. Reasons are written per group in one transaction, and only where they change; a claim
clears its task's reason (`TaskQueue.claim`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bitinglip.control.queue.endings import fail_immediate
from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class Demand:
    """Queued, ready tasks of one model with one host pin and one label set (JSON text, as
    stored): how many, and the newest task's id."""

    model: str
    host: str | None
    labels: str | None
    queued: int
    newest: int

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.model, self.host, self.labels)


def demand(store: Store, kinds: Iterable[str], now: float) -> list[Demand]:
    """The queued tasks of `kinds` that name a model and may run at `now`, grouped."""
    kinds = tuple(kinds)
    rows = store.conn.execute(
        "SELECT model, host, labels, count(*), max(id) FROM tasks INDEXED BY tasks_queued_model"
        " WHERE state = 'queued' AND model IS NOT NULL AND run_after <= ?"
        f" AND kind IN ({','.join('?' * len(kinds))}) GROUP BY model, host, labels",
        (now, *kinds),
    ).fetchall()
    return [Demand(m, h, lab, int(n), int(newest)) for m, h, lab, n, newest in rows]


# Reasons that no wait will change by itself (the model fits on no host, or no host has it and
# it cannot be pulled): a task with `"immediate": true` in its payload fails with them at once.
UNPLACEABLE = ("fits nowhere:", "waiting: no host has ")
Reason = tuple[str | None, str, str | None, str | None]  # (reason or None, model, host, labels)


def set_reasons(store: Store, reasons: Sequence[Reason], now: float | None = None) -> int:
    """Set (or clear, with None) the wait reason of each group's queued tasks, in one
    transaction; rows that already say it are not written. Where the reason says the model
    cannot be placed at all (`UNPLACEABLE`), the group's tasks that asked not to wait fail at
    once (`endings.fail_immediate`); returns how many did."""
    if not reasons:
        return 0
    failed, now = 0, time.time() if now is None else now
    with store.write() as conn:
        for reason, model, host, labels in reasons:
            if reason is not None and reason.startswith(UNPLACEABLE):
                failed += fail_immediate(conn, (model, host, labels), now, reason)
        conn.executemany(
            "UPDATE tasks SET wait_reason = ?1 WHERE state = 'queued' AND model = ?2"
            " AND host IS ?3 AND labels IS ?4 AND wait_reason IS NOT ?1",
            reasons,
        )
    return failed


class Written:
    """The wait reasons written so far, per group: a group's is written again only where it
    changed or the group has tasks it was not written for."""

    def __init__(self) -> None:
        self._written: dict[tuple[str, str | None, str | None], tuple[str | None, int, int]] = {}

    def write(
        self,
        store: Store,
        groups: Sequence[Demand],
        reasons: Mapping[tuple[str, str | None, str | None], str | None],
        now: float,
    ) -> int:
        """Write the groups' reasons where needed (`set_reasons`); forget groups gone."""
        batch: list[Reason] = []
        for group in groups:
            reason = reasons.get(group.key)
            if self._changed(group, reason):
                batch.append((reason, group.model, group.host, group.labels))
                self._written[group.key] = (reason, group.newest, group.queued)
        live = {g.key for g in groups}
        for key in [k for k in self._written if k not in live]:
            del self._written[key]
        return set_reasons(store, batch, now)

    def _changed(self, group: Demand, reason: str | None) -> bool:
        before = self._written.get(group.key)
        if before is None:
            return reason is not None
        if before[0] != reason:
            return True
        return reason is not None and (group.newest > before[1] or group.queued > before[2])
