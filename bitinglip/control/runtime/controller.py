"""The controller lease: one process per database runs the control loop.

The holder renews its row in `controller`; any other process is an observer. An observer takes
over when the lease expires, or at once when the holder was a process on this machine that no
longer exists (a `kill -9` leaves no one to wait for).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class ControllerInfo:
    owner: str
    pid: int
    hostname: str
    started_at: float
    renewed_at: float
    expires_at: float
    doorbell: str | None

    @property
    def alive(self) -> bool:
        """Holds an unexpired lease, and is not a process of this machine that has gone."""
        if self.expires_at < time.time():
            return False
        return not (self.hostname == socket.gethostname() and not _pid_alive(self.pid))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alive": self.alive}


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def current(store: Store) -> ControllerInfo | None:
    row = store.conn.execute(
        "SELECT owner, pid, hostname, started_at, renewed_at, expires_at, doorbell"
        " FROM controller WHERE id = 1"
    ).fetchone()
    return None if row is None else ControllerInfo(*row)


def try_acquire(store: Store, owner: str, lease_s: float, doorbell: str | None) -> bool:
    """Take the lease if it is free, expired, dead or already ours; renew it if ours."""
    now = time.time()
    with store.write() as conn:
        row = conn.execute(
            "SELECT owner, pid, hostname, started_at, renewed_at, expires_at, doorbell"
            " FROM controller WHERE id = 1"
        ).fetchone()
        holder = None if row is None else ControllerInfo(*row)
        if holder is not None and holder.owner != owner and holder.alive:
            return False
        started = holder.started_at if holder is not None and holder.owner == owner else now
        conn.execute(
            "INSERT OR REPLACE INTO controller (id, owner, pid, hostname, started_at, renewed_at,"
            " expires_at, doorbell) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (owner, os.getpid(), socket.gethostname(), started, now, now + lease_s, doorbell),
        )
    return True


def release(store: Store, owner: str) -> None:
    with store.write() as conn:
        conn.execute("DELETE FROM controller WHERE id = 1 AND owner = ?", (owner,))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is as good as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return True
