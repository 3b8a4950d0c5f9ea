"""The runs in flight on the hosts: their buffered output and progress stored, their leases kept
alive while their agent reports. A chunk the database refuses stays buffered on its run, for the
flush after the loop's backoff.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.host_agents import HostAgent
from bitinglip.control.transport.sessions import Inflight
from bitinglip.errors import BitinglipError, StoreError

log = logging.getLogger("bitinglip.control.runtime.dispatcher")


def flush_output(queue: TaskQueue, agents: Sequence[HostAgent], *, only_first: bool) -> None:
    """Store the output buffered on every run (with `only_first`, only runs that have stored
    none yet, for time to first token; otherwise their progress too)."""
    progress = []
    for agent in agents:
        if agent.session is None:
            continue
        for run in agent.session.inflight.values():
            if run.output and (not only_first or not run.first_output_flushed):
                flush_one(queue, run)
            if run.progress is not None and not only_first:
                progress.append((run.task_id, run.token, run.progress))
                run.progress = None
    try:
        queue.set_progress(progress)
    except BitinglipError as exc:
        log.warning("progress not stored: %s", exc)


def flush_one(queue: TaskQueue, run: Inflight) -> None:
    """Store the output buffered on one run."""
    if not run.output:
        return
    data = "".join(run.output)
    run.output.clear()
    try:
        queue.append_output(run.task_id, run.token, data)
    except (StoreError, sqlite3.Error):
        run.output[:0] = [data]  # kept: stored by the flush after the loop's backoff
        raise
    except BitinglipError as exc:
        log.warning("task %s: output dropped: %s", run.task_id, exc)
    run.first_output_flushed = True


def heartbeat(
    queue: TaskQueue, agents: Sequence[HostAgent], owner: str, silent_after_s: float
) -> None:
    """Extend the leases of the runs of every agent heard from in the last `silent_after_s`.
    Runs asked to cancel are canceled on their agent; so are runs whose lease was lost, which
    are also forgotten here."""
    for agent in agents:
        session = agent.session
        if session is None or not session.inflight:
            continue
        if time.monotonic() - session.last_seen > silent_after_s:
            continue  # a silent agent does not keep its leases: they will expire
        by_task = {f.task_id: (run_id, f) for run_id, f in session.inflight.items()}
        beat = queue.heartbeat(owner, {t: f.token for t, (_, f) in by_task.items()})
        for task_id in beat.cancel | beat.lost:
            session.cancel(by_task[task_id][0])
        for task_id in beat.lost:
            session.inflight.pop(by_task[task_id][0], None)
