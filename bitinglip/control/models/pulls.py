"""Pulls: a model file from the hub to hosts, one `pull` task per host, verified by the agent.

`plan` resolves nothing itself: it takes a `HubFile` already pinned to a commit (size and LFS
sha256 known), registers it, and queues a pull for each host that does not have it — or joins
the pull already queued or running there (concurrent pulls of one file to one host merge). The
agent downloads into `<model dir>/<dest>`, resuming, hashing as it writes; the file is `ready`
in the registry only after its sha256 matched (`pulled`), a mismatch is `quarantined`
(`pull_failed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import TaskKind, TaskState, unsafe_reason

from bitinglip.config import HostConfig
from bitinglip.control.models import registry
from bitinglip.control.models.refs import HubFile, endpoint
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import Store
from bitinglip.errors import InputError

GIB = 1 << 30

# Error codes after which a copy is not worth retrying; others leave it `pulling` (the queue
# retries the task).
FINAL = {
    "checksum_mismatch": "quarantined",
    "unsafe_name": "failed",
    "unauthorized": "failed",
    "not_found": "failed",
    "no_space": "failed",
    "write_failed": "failed",
}
OPEN_STATES = (TaskState.QUEUED, TaskState.RUNNING)


@dataclass(frozen=True)
class Ticket:
    """What `plan` did for one host: `already` ready there, `joined` a pull in progress, or
    `queued` a new one; `task_id` is the pull to follow (None when already ready)."""

    host: str
    model_id: int
    action: str
    task_id: int | None


def dest(file: HubFile) -> str:
    """Where the file goes under a host's model dir: one folder per repo and commit."""
    return f"hf/{file.repo}/{file.commit[:12]}/{file.name}"


def check_name(file: HubFile) -> None:
    """InputError when the file's place in a model dir (`dest`) would not be under it."""
    why = unsafe_reason(dest(file))
    if why is not None:
        raise InputError(
            f"{file.repo} lists a file named {file.name!r} whose place in a model dir "
            f"{why}; refused before anything was written"
        )


def plan(queue: TaskQueue, file: HubFile, hosts: Sequence[HostConfig]) -> list[Ticket]:
    check_name(file)
    store = queue.store
    model_id = registry.register(store, file)
    tickets = []
    for host in hosts:
        state, task_id = _copy(store, host.name, model_id)
        if state == "ready":
            tickets.append(Ticket(host.name, model_id, "already", None))
            continue
        if state == "pulling" and task_id is not None and _open(store, task_id):
            tickets.append(Ticket(host.name, model_id, "joined", task_id))
            continue
        make_room(queue, host, file.size)
        task_id = queue.submit(
            TaskSpec(
                kind=TaskKind.PULL,
                host=host.name,
                # `hub`: the one place the agent may send HF_TOKEN (over https, or http to a
                # loopback hub); never the file's URL host alone.
                payload={
                    "file": _file(file),
                    "dest": dest(file),
                    "model_id": model_id,
                    "hub": endpoint(),
                },
            )
        )
        registry.set_host_state(store, host.name, model_id, "pulling", task_id=task_id)
        tickets.append(Ticket(host.name, model_id, "queued", task_id))
    return tickets


def make_room(queue: TaskQueue, host: HostConfig, size: int) -> list[int]:
    """Under the host's cache quota, evict the least recently used copies that are neither
    loaded nor being pulled until `size` more bytes fit; the model ids evicted. InputError when
    even evicting all of them would not make room."""
    if host.cache_quota_gib is None:
        return []
    quota = int(host.cache_quota_gib * GIB)
    used = sum(
        int(s or 0)
        for (s,) in queue.store.conn.execute(
            "SELECT m.size FROM host_models h JOIN models m ON m.id = h.model_id"
            " WHERE h.host = ? AND h.state IN ('ready', 'pulling')",
            (host.name,),
        )
    )
    order = registry.eviction_order(queue.store, host.name)
    if used + size - sum(s for _, _, s in order) > quota:
        raise InputError(
            f"host {host.name}: {size / GIB:.2f} GiB more does not fit its cache quota of "
            f"{host.cache_quota_gib:g} GiB ({used / GIB:.2f} GiB used, loaded or being pulled); "
            "raise cache_quota_gib or remove a model"
        )
    evicted = []
    for model_id, path, copy_size in order:
        if used + size <= quota:
            break
        remove(queue, host.name, model_id, path)
        used -= copy_size
        evicted.append(model_id)
    return evicted


def remove(queue: TaskQueue, host: str, model_id: int, path: str | None) -> int | None:
    """Forget a copy and have the host's agent delete its file (a `remove` task)."""
    row = queue.store.conn.execute(
        'SELECT repo, "commit", file FROM models WHERE id = ?', (model_id,)
    ).fetchone()
    registry.forget_host_copy(queue.store, host, model_id)
    if not path or row is None:
        return None
    repo, commit, file = row
    where = f"hf/{repo}/{commit[:12]}/{file}"  # as `dest` placed it
    return queue.submit(TaskSpec(kind=TaskKind.REMOVE, host=host, payload={"dest": where}))


def pulled(store: Store, host: str, task_id: int, result: Any) -> None:
    """The agent verified and placed the file: that copy is ready."""
    model_id = _model_of(store, host, task_id)
    if model_id is not None and isinstance(result, dict):
        registry.set_host_state(
            store, host, model_id, "ready", path=str(result.get("path")), task_id=task_id
        )


def pull_failed(store: Store, host: str, task_id: int, msg: dict[str, Any]) -> None:
    model_id = _model_of(store, host, task_id)
    code = str(msg.get("code", ""))
    if model_id is None or code not in FINAL:
        return
    registry.set_host_state(
        store, host, model_id, FINAL[code], error=str(msg.get("message")), task_id=task_id
    )


def _file(file: HubFile) -> dict[str, Any]:
    return {
        "url": file.url,
        "repo": file.repo,
        "commit": file.commit,
        "name": file.name,
        "size": file.size,
        "sha256": file.sha256,
    }


def _copy(store: Store, host: str, model_id: int) -> tuple[str | None, int | None]:
    row = store.conn.execute(
        "SELECT state, task_id FROM host_models WHERE host = ? AND model_id = ?",
        (host, model_id),
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def _open(store: Store, task_id: int) -> bool:
    row = store.conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return row is not None and row[0] in OPEN_STATES


def _model_of(store: Store, host: str, task_id: int) -> int | None:
    row = store.conn.execute(
        "SELECT model_id FROM host_models WHERE host = ? AND task_id = ?", (host, task_id)
    ).fetchone()
    return None if row is None else int(row[0])
