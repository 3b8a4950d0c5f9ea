"""Waking the controller by notification rather than by polling.

The controller binds a Unix datagram socket (in the abstract namespace on Linux, so no file is
left behind by a kill -9) and records its name in the controller row. A process that commits new
work rings it with one datagram; the controller's loop sleeps on the socket.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import sys
import tempfile
import threading
from contextlib import suppress
from pathlib import Path

_sender: socket.socket | None = None
_sender_lock = threading.Lock()


def _address(name: str) -> str:
    return "\0" + name if sys.platform == "linux" else str(Path(tempfile.gettempdir()) / name)


class Doorbell:
    """The receiving end, owned by the controller loop."""

    def __init__(self, db_path: Path) -> None:
        digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:16]
        self.name = f"bitinglip-{digest}-{os.getpid()}-{id(self):x}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(_address(self.name))
        self._sock.setblocking(False)
        self._rung = False

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout` seconds pass; True when rung. Drains pending rings."""
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0))
        rung = False
        while ready:
            try:
                self._sock.recv(64)
                rung = True
            except BlockingIOError:
                break
        # After draining: a ring coalesced before this point committed its work before the loop
        # goes on to look for work; any ring from here on is sent.
        self._rung = False
        return rung

    def ring(self) -> None:
        """Wake the loop from this process; coalesced while an earlier ring is not yet seen."""
        if self._rung:
            return
        self._rung = True
        ring(self.name)

    def close(self) -> None:
        self._sock.close()
        if sys.platform != "linux":
            with suppress(FileNotFoundError):
                os.unlink(_address(self.name))


def ring(name: str | None) -> bool:
    """Send one wake-up to the doorbell `name`; False when no one is listening (harmless)."""
    global _sender
    if name is None:
        return False
    with _sender_lock:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        sender = _sender
    try:
        sender.sendto(b"!", _address(name))
    except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
        return False  # full queue: it is awake already; gone: the next controller polls the db
    return True
