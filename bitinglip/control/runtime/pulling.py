"""Pull-then-place: the pull placement starts for a model with no copy where it fits, what its
progress reads as in a wait reason, and which copies may still be pulled."""

from __future__ import annotations

import json
import logging
from typing import Any

from bitinglip_agent.protocol import TERMINAL, TaskState

from bitinglip.config import HostConfig
from bitinglip.control.models import pulls, registry
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.model_sizes import ModelSizes
from bitinglip.errors import BitinglipError

log = logging.getLogger("bitinglip.control.runtime.dispatcher")


def start(
    queue: TaskQueue, sizes: ModelSizes, model: str, host: HostConfig
) -> tuple[int | None, str]:
    """Pull a registered model to `host` (one pull task, joined by later requests): its task id
    (None when it cannot start) and the wait reason."""
    row = sizes.row(queue.store, model)
    assert row is not None  # placement offers a host without a copy only for a registered one
    try:
        [ticket] = pulls.plan(queue, registry.hub_file(row), [host])
    except BitinglipError as exc:
        return None, f"waiting: cannot pull to {host.name}: {exc}"
    sizes.forget(model)
    log.info("model %s: pulling to %s (task %s)", model, host.name, ticket.task_id)
    return ticket.task_id, f"waiting: pulling to {host.name}"


def status(queue: TaskQueue, task_id: int | None, host: str) -> tuple[bool, str]:
    """Whether the pull ended (without a copy, else placement would see one) and the reason."""
    row = queue.store.conn.execute(
        "SELECT state, progress, error FROM tasks WHERE id = ?", (task_id,)
    ).fetchone()
    if row is None or TaskState(row[0]) in TERMINAL:
        error = "" if row is None or row[2] is None else f": {row[2]}"
        return True, f"waiting: the pull to {host} ended{error}"
    progress = json.loads(row[1]) if row[1] else None
    if isinstance(progress, dict) and progress.get("total"):
        share = int(progress.get("bytes", 0)) * 100 // max(int(progress["total"]), 1)
        return False, f"waiting: pulling to {host} ({share}%)"
    return False, f"waiting: pulling to {host}"


def pullable(row: dict[str, Any] | None, host: str) -> bool:
    """A registered model whose copy on `host` did not give up (failed, quarantined)."""
    return row is not None and copy_state(row, host) in (None, registry.PULLING, registry.READY)


def copy_state(row: dict[str, Any] | None, host: str) -> str | None:
    copy = None if row is None else row["hosts"].get(host)
    return None if copy is None else str(copy["state"])
