"""What placement reads and writes of the queue: the queued demand for each model, and why
queued model tasks wait (`tasks.wait_reason`).

Demand is read from `queued_groups`, the counts of queued tasks that name a model per (model,
kind, host, labels) that the triggers keep: one row per group, whatever the backlog (a task
waiting out a backoff counts too). Placement decides per model and honours a task's host and
labels. A reason is one row per group (`wait_reasons`), written in one transaction and only
where it changes; a task shows its group's reason while it is queued (`views.WAIT_REASON`).
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


def demand(store: Store, kinds: Iterable[str]) -> list[Demand]:
    """The queued tasks of `kinds` that name a model, grouped (tasks waiting out a backoff
    included: the counters do not see `run_after`)."""
    kinds = tuple(kinds)
    rows = store.conn.execute(
        "SELECT model, nullif(host, ''), nullif(labels, ''), sum(n), max(newest)"
        f" FROM queued_groups WHERE kind IN ({','.join('?' * len(kinds))}) AND n > 0"
        " GROUP BY model, host, labels",
        kinds,
    ).fetchall()
    return [Demand(m, h, lab, int(n), int(newest)) for m, h, lab, n, newest in rows]


# Reasons that no wait will change by itself (the model fits on no host, or no host has it and
# it cannot be pulled): a task with `"immediate": true` in its payload fails with them at once.
UNPLACEABLE = ("fits nowhere:", "waiting: no host has ")
Reason = tuple[str | None, str, str | None, str | None]  # (reason or None, model, host, labels)


def set_reasons(store: Store, reasons: Sequence[Reason], now: float | None = None) -> int:
    """Set (or clear, with None) each group's wait reason, in one transaction. Where the reason
    says the model cannot be placed at all (`UNPLACEABLE`), the group's tasks that asked not to
    wait fail at once (`endings.fail_immediate`); returns how many did."""
    if not reasons:
        return 0
    failed, now = 0, time.time() if now is None else now
    with store.write() as conn:
        for reason, model, host, labels in reasons:
            if reason is not None and reason.startswith(UNPLACEABLE):
                failed += fail_immediate(conn, (model, host, labels), now, reason)
        keys = [(m, h or "", lab or "", r) for r, m, h, lab in reasons]
        conn.executemany(
            "DELETE FROM wait_reasons WHERE model = ? AND host = ? AND labels = ?",
            [k[:3] for k in keys if k[3] is None],
        )
        conn.executemany(
            "INSERT INTO wait_reasons (model, host, labels, reason) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (model, host, labels) DO UPDATE SET reason = excluded.reason",
            [k for k in keys if k[3] is not None],
        )
    return failed


def clear_reasons(store: Store) -> None:
    """Forget every reason (a controller starting over: it writes them afresh)."""
    store.write_one("DELETE FROM wait_reasons", ())


class Written:
    """The wait reasons written so far, per group, so that a group's row is written only where
    its reason changed, and again for an `UNPLACEABLE` one when tasks joined the group (those
    that asked not to wait fail). The first write clears what an earlier controller left."""

    def __init__(self) -> None:
        self._written: dict[tuple[str, str | None, str | None], tuple[str, int]] = {}
        self._fresh = True

    def write(
        self,
        store: Store,
        groups: Sequence[Demand],
        reasons: Mapping[tuple[str, str | None, str | None], str | None],
        now: float,
    ) -> int:
        """Write the groups' reasons where needed (`set_reasons`); clear those of groups gone."""
        if self._fresh:
            clear_reasons(store)
            self._fresh = False
        batch: list[Reason] = []
        for group in groups:
            reason = reasons.get(group.key)
            if self._changed(group, reason):
                batch.append((reason, group.model, group.host, group.labels))
                if reason is None:
                    del self._written[group.key]
                else:
                    self._written[group.key] = (reason, group.newest)
        live = {g.key for g in groups}
        for key in [k for k in self._written if k not in live]:
            batch.append((None, *key))
            del self._written[key]
        return set_reasons(store, batch, now)

    def _changed(self, group: Demand, reason: str | None) -> bool:
        before = self._written.get(group.key)
        if before is None or reason is None:
            return before is not None or reason is not None
        if before[0] != reason:
            return True
        return reason.startswith(UNPLACEABLE) and group.newest > before[1]
