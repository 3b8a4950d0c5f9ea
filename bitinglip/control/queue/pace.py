"""How fast a job goes: when its first task started, when its last one finished, its failures.

Read for many jobs from their rows (the triggers keep both times as tasks move: no read of a
job's tasks; the console's Jobs view asks once a second); the rate and ETA are arithmetic on
these and the job's counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class JobPace:
    first_started_at: float | None
    last_finished_at: float | None

    def tasks_per_min(self, done: int, now: float, finished: bool) -> float | None:
        """Tasks done per minute since the first one started (until the last one finished,
        once the job is finished); None before anything finished."""
        if not done or self.first_started_at is None:
            return None
        end = self.last_finished_at if finished and self.last_finished_at else now
        span = end - self.first_started_at
        return done * 60.0 / span if span > 0 else None


def job_paces(store: Store, job_ids: Sequence[int]) -> dict[int, JobPace]:
    if not job_ids:
        return {}
    marks = ",".join("?" * len(job_ids))
    rows = store.conn.execute(
        f"SELECT id, first_started_at, last_finished_at FROM jobs WHERE id IN ({marks})",
        tuple(job_ids),
    ).fetchall()
    paces = {job_id: JobPace(None, None) for job_id in job_ids}
    paces.update({job_id: JobPace(started, finished) for job_id, started, finished in rows})
    return paces
