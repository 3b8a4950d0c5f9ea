"""Reading one host for a live view: its recent tasks and the models it holds. Read-only; any
thread's Store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bitinglip.config import Profile
from bitinglip.control.models import registry
from bitinglip.control.store.db import Store

RECENT_TASKS = 20
RECENT_WINDOW = 10_000  # the newest tasks a host's recent tasks are looked for among


@dataclass(frozen=True)
class HostTask:
    id: int
    kind: str
    state: str
    model: str | None
    attempt: int
    created_at: float
    finished_at: float | None
    error: str | None


@dataclass(frozen=True)
class HostModel:
    name: str  # the profile's alias, else the file name
    state: str  # the copy's state: pulling, ready, quarantined, failed
    loaded: bool
    size: int | None
    error: str | None


def latest_snapshot(store: Store, host: str) -> dict[str, Any] | None:
    """The host's newest telemetry snapshot as its agent sent it (GPU processes included)."""
    row = store.conn.execute(
        "SELECT snapshot FROM host_telemetry_latest WHERE host = ?", (host,)
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def recent_tasks(
    store: Store, host: str, limit: int = RECENT_TASKS, window: int = RECENT_WINDOW
) -> list[HostTask]:
    """The newest tasks that run or ran on `host`, or are pinned to it, among the newest
    `window` tasks (a host that ran nothing lately costs a walk of those, not of the table);
    newest first."""
    rows = store.conn.execute(
        "SELECT id, kind, state, model, attempt, created_at, finished_at, error FROM tasks"
        " WHERE id > (SELECT coalesce(max(id), 0) FROM tasks) - ?3 AND (ran_on = ?1 OR host = ?1)"
        " ORDER BY id DESC LIMIT ?2",
        (host, limit, window),
    ).fetchall()
    return [HostTask(*row) for row in rows]


def models_on(store: Store, host: str, profile: Profile | None = None) -> list[HostModel]:
    """The registry's copies on `host` (loaded ones first), by name."""
    found = []
    for model in registry.rows(store, profile):
        copy: dict[str, Any] | None = model["hosts"].get(host)
        if copy is None:
            continue
        name = model["alias"] or model["file"]
        found.append(HostModel(name, copy["state"], copy["loaded"], model["size"], copy["error"]))
    return sorted(found, key=lambda m: (not m.loaded, m.name))
