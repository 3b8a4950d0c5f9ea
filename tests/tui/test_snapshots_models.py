"""Snapshots of the Models and Pulls views at 120x36, from registry rows and pull tasks written
here with fixed values and a fixed clock (`Backend(control=False)`: nothing changes them).

The models view shows a ready, a loaded, a pulling (42%) and a quarantined copy (the corrupt
model: its why under the table), a failed one, and two aliases not pulled yet; the pulls view a
pull in progress, a failed one, a finished one and a queued remove.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from bitinglip.config import Profile
from bitinglip.control.models import registry
from bitinglip.control.models.refs import HubFile
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import Store
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from tests.conftest import FAST_QUEUE

NOW = 1_790_000_000.0
SIZE = (120, 36)
FLEET = """
[[hosts]]
name = "gpu-a"
kind = "ssh"
address = "10.0.0.2"

[models.qwen-small]
source = "hf:org/qwen-GGUF"
file = "qwen-Q4_K_M.gguf"
"""
GIB = 1 << 30


def hub_file(repo: str, name: str, size: int, seed: str) -> HubFile:
    return HubFile(
        repo=repo,
        commit=seed * 40,
        name=name,
        size=size,
        sha256=seed * 64,
        quant=name.rsplit("-", 1)[-1].removesuffix(".gguf"),
        url=f"http://hub.invalid/{repo}/{name}",
    )


def pull_task(queue: TaskQueue, host: str, file: HubFile, model_id: int) -> tuple[int, int]:
    """A pull task claimed (running) on `host`: (task id, lease token)."""
    task_id = queue.submit(
        TaskSpec(
            kind="pull",
            host=host,
            payload={"file": {"name": file.name, "size": file.size}, "model_id": model_id},
        )
    )
    [claim] = queue.claim("snapshot", kinds=("pull",), host=host)
    assert claim.task_id == task_id
    return task_id, claim.token


def write_fleet(store: Store, profile: Profile) -> None:
    """Three models with copies in every state, and five pull/remove tasks, all at fixed times."""
    queue = TaskQueue(store, profile.queue, clock=lambda: NOW - 95)
    q8 = hub_file("org/tiny-GGUF", "tiny-Q8_0.gguf", int(1.2 * GIB), "a")
    q4 = hub_file("org/tiny-GGUF", "tiny-Q4_K_M.gguf", int(0.7 * GIB), "b")
    big = hub_file("org/big-GGUF", "big-Q5_K_M.gguf", 5 * GIB, "c")
    ids = [registry.register(store, f, now=NOW - 600) for f in (q8, q4, big)]
    done_id, done_token = pull_task(queue, "local", q8, ids[0])
    queue.complete(done_id, done_token, {"path": "/m/local/q8"})
    for host in ("local", "gpu-a"):
        registry.set_host_state(store, host, ids[0], "ready", path=f"/m/{host}/q8", now=NOW)
    registry.set_loaded(store, "gpu-a", ids[0], True)

    corrupt_id, corrupt_token = pull_task(queue, "local", q4, ids[1])
    registry.set_host_state(store, "local", ids[1], "pulling", task_id=corrupt_id, now=NOW)
    why = "sha256 mismatch: expected bbbbbbbbbbbb, got 4e1f0c9a7d2b; moved to .quarantine"
    queue.fail(corrupt_id, corrupt_token, why, retryable=False)
    registry.set_host_state(store, "local", ids[1], "quarantined", error=why, now=NOW)

    failed_id, failed_token = pull_task(queue, "gpu-a", q4, ids[1])
    registry.set_host_state(store, "gpu-a", ids[1], "pulling", task_id=failed_id, now=NOW)
    error = "no_space: 0.4 GiB free on /models, the file needs 0.7 GiB"
    queue.fail(failed_id, failed_token, error, retryable=False)
    registry.set_host_state(store, "gpu-a", ids[1], "failed", error=error, now=NOW)

    running_id, running_token = pull_task(queue, "gpu-a", big, ids[2])
    registry.set_host_state(store, "gpu-a", ids[2], "pulling", task_id=running_id, now=NOW)
    progress = {"bytes": int(0.42 * big.size), "total": big.size, "bytes_per_s": 48 << 20}
    queue.set_progress([(running_id, running_token, progress | {"eta_s": 64.0})])

    queue.submit(TaskSpec(kind="remove", host="gpu-a", payload={"dest": "hf/org/old/old.gguf"}))


@pytest.fixture
def fleet_backend(make_profile: Callable[..., Profile]) -> Iterator[Backend]:
    profile = make_profile(body=FAST_QUEUE + FLEET)
    backend = Backend(profile, control=False)
    backend.start()
    backend.call_sync(lambda plane: write_fleet(plane.store, plane.profile))
    try:
        yield backend
    finally:
        backend.close()


def until_rows(view: str, rows: int) -> Callable[[Pilot[Any]], Any]:
    """Wait until the view's table shows `rows` rows (its data is painted)."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        for _ in range(500):
            table = app.views[view].query_one(DataTable)
            if table.row_count == rows:
                break
            await pilot.pause(0.02)
        assert app.views[view].query_one(DataTable).row_count == rows
        await pilot.pause()

    return run_before


def test_models_view_every_copy_state(fleet_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(fleet_backend, start="models", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("models", 5))


def test_pulls_view_progress_and_failure(fleet_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(fleet_backend, start="pulls", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("pulls", 5))
