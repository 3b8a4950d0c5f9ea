"""The console's handle on the control plane: every database read and write on one thread.

A `ControlPlane` owns one SQLite connection and is used from one thread; the console's event
loop never touches it. `await backend.call(fn, ...)` runs `fn(plane, ...)` on the backend's
thread and returns its result, so views stay responsive however slow a query or a host is.

Unless read-only, the backend also runs a `ControlLoop` in its own thread: it becomes the
controller at once when no one holds the lease, or waits as an observer and takes over when the
holder's lease expires (`role` says which, and the header shows it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from bitinglip.config import Profile
from bitinglip.control import (
    ControlLoop,
    ControlPlane,
    ensure_private_dir,
    open_control_plane,
    open_private,
)

T = TypeVar("T")

LOG_LINES = 5_000
log = logging.getLogger("bitinglip.console")


@dataclass(frozen=True)
class LogLine:
    at: float
    level: str
    source: str  # "control", or "agent <host>" / "ssh <host>" for a host's lines
    text: str


class LogRing(logging.Handler):
    """The control plane's log (and the local agents' stderr, which it logs) kept in memory for
    the Logs view, and appended to `console.log` beside the state database."""

    def __init__(self, path: Path | None, maxlen: int = LOG_LINES) -> None:
        self._file: TextIO | None = None
        super().__init__(logging.INFO)
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=maxlen)
        self.total = 0  # lines ever seen, so a reader can tell what is new
        self.path = path

    def open(self) -> None:
        if self.path is not None and self._file is None:
            ensure_private_dir(self.path.parent)
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)  # prompts: 0600
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        line = LogLine(record.created, record.levelname.lower(), _source(text), text)
        self.lines.append(line)
        self.total += 1
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.at))
            self._file.write(f"{stamp} {line.level:<7} {text}\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _source(text: str) -> str:
    """`agent gpu-a: ...` and `ssh gpu-a: ...` are a host's lines; the rest the control plane's."""
    head, sep, _ = text.partition(": ")
    words = head.split(" ")
    if sep and len(words) == 2 and words[0] in ("agent", "ssh"):
        return head
    return "control"


class Backend:
    """Start with `start()`, stop with `close()`; `call` from the console's event loop."""

    def __init__(self, profile: Profile, *, readonly: bool = False, control: bool = True) -> None:
        """`control=False` runs no control loop (an observer that never takes over): for
        snapshot tests and the benchmark, whose data must stay as they wrote it."""
        self.profile = profile
        self.readonly = readonly
        self.control = control and not readonly
        self.log = LogRing(profile.data_dir / "console.log")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-db")
        self._plane: ControlPlane | None = None
        self._loop: ControlLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.loop_error: BaseException | None = None

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database (on the backend thread) and, unless read-only, run a control loop."""
        ensure_private_dir(self.profile.data_dir)
        self._plane = self._pool.submit(open_control_plane, self.profile).result()
        self.log.open()
        logging.getLogger("bitinglip").addHandler(self.log)
        logging.getLogger("bitinglip").setLevel(logging.INFO)
        if not self.control:
            return
        self._loop = ControlLoop(self.profile)
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="console-control", daemon=True
        )
        self._loop_thread.start()

    def _run_loop(self) -> None:
        assert self._loop is not None
        profile = self.profile

        def on_state(state: str) -> None:
            log.info("console: %s of %s (profile %s)", state, profile.db_path, profile.name)

        try:
            self._loop.run(on_state=on_state)
        except BaseException as exc:  # noqa: BLE001 - shown in the header and the log
            self.loop_error = exc
            log.error("console: the control loop stopped: %s", exc)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._loop_thread is not None:
            self._loop_thread.join(self.profile.shutdown_grace_s + 5)
        if self._plane is not None:
            self._pool.submit(self._plane.close).result()
        self._pool.shutdown(wait=True)
        logging.getLogger("bitinglip").removeHandler(self.log)
        self.log.close()

    # -- what the console is ---------------------------------------------------------------

    @property
    def role(self) -> str:
        """ "controller" (this console runs the control loop), "observer" (another process
        does; this one takes over when its lease expires), or "read-only"."""
        if self.readonly:
            return "read-only"
        if self._loop is not None and self._loop.is_controller.is_set():
            return "controller"
        return "observer"

    @property
    def loop(self) -> ControlLoop | None:
        return self._loop

    # -- calls -----------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(plane, *args, **kwargs)` on the backend thread."""
        plane = self._plane
        if plane is None:
            raise RuntimeError("the console's backend is not started")
        future = self._pool.submit(fn, plane, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def call_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The same, blocking: for tests and the benchmark, never from the event loop."""
        plane = self._plane
        if plane is None:
            raise RuntimeError("the console's backend is not started")
        return self._pool.submit(fn, plane, *args, **kwargs).result()
