"""The bridge between the HTTP event loop and the control plane: one thread owns the plane.

A ControlPlane holds one SQLite connection, to be used from one thread, and SQLite calls block;
so the event loop never touches it. `Bridge` runs one worker thread that opens the plane (and
runs the embedded control loop, unless another process is the controller), and does all of the
gateway's database work there:

- commands from the event loop (`call`): submit, cancel, /metrics, /v1/models, each handing its
  result back to the caller's event loop with `call_soon_threadsafe`;
- watching every request's task at once: after each commit (the embedded loop's notification,
  else `ControlPlane.data_version` polled like `ControlPlane.follow`), one read of them all
  (`ControlPlane.watch_steps`: a statement for the states of all watched tasks and one for the
  new output of them all); chunks and the finished task go to the request's asyncio queue in
  one hand-over per wake-up. 32 streams cost one thread, not 32;
- the /health snapshot, rebuilt every `health_every_s` and served from memory: in full (for a
  caller with an API key) and as the status alone (for anyone else).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bitinglip.config import Profile
from bitinglip.control import ControlLoop, ControlPlane, Task, WatchMark, open_control_plane

log = logging.getLogger(__name__)
T = TypeVar("T")
Command = Callable[[ControlPlane], None]
QUIET_POLL_S = 0.02  # observer polling once quiet (as ControlPlane.follow)
NOTIFIED_WAIT_S = 0.05  # with an embedded loop: its notifications, and this for other writers


@dataclass
class Event:
    """What a request learns about its task in one wake-up of the worker."""

    chunks: list[str] = field(default_factory=list)
    final: Task | None = None
    rerun: bool = False  # the task runs again (a retry): its output started over


@dataclass
class Watch:
    """A request waiting on its task; `queue` lives on the request's event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    want_output: bool
    mark: WatchMark = field(init=False)

    def __post_init__(self) -> None:
        self.mark = WatchMark(output=self.want_output)

    def send(self, event: Event) -> None:
        # RuntimeError: its event loop is closed (the server stopped): nobody waits for it.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class Bridge:
    """The gateway's one thread on the control plane. `start()`, then use from an event loop."""

    def __init__(
        self,
        profile: Profile,
        *,
        shared_loop: ControlLoop | None = None,
        health_every_s: float = 1.0,
    ) -> None:
        self.profile = profile
        self.health_every_s = health_every_s
        self.health: tuple[int, bytes] = (503, b'{"status":"starting"}')
        self.health_brief: tuple[int, bytes] = self.health  # the status alone
        self.embedded = False  # whether this process runs the control loop
        self._shared_loop = shared_loop
        self._control: ControlLoop | None = None
        self._wake = threading.Condition()
        self._commands: collections.deque[Command] = collections.deque()
        self._watches: dict[int, Watch] = {}
        self._stopping = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bitinglip-gateway", daemon=True)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the plane (and the embedded control loop) in the worker; raise what failed."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join()

    def _main(self) -> None:
        try:
            with open_control_plane(self.profile) as plane:
                if self._shared_loop is not None:
                    plane.loop = self._shared_loop  # its commits wake us; submits ring it
                    self._serve(plane, self._shared_loop)
                    return
                with plane.embedded() as loop:
                    self.embedded = loop is not None
                    self._serve(plane, loop)
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
        finally:
            self._ready.set()

    @property
    def control(self) -> ControlLoop | None:
        """The control loop this process runs (embedded), if any: set once started."""
        return self._control if self.embedded else None

    # -- from the event loop ---------------------------------------------------------------

    async def call(self, fn: Callable[[ControlPlane], T]) -> T:
        """Run `fn(plane)` in the worker; its result or exception, here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def command(plane: ControlPlane) -> None:
            try:
                result = fn(plane)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's loop
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self.post(command)
        return await future

    def post(self, command: Command) -> None:
        """Queue a command for the worker, without waiting for it."""
        with self._wake:
            self._commands.append(command)
            self._wake.notify_all()

    def watch(self, plane: ControlPlane, task_id: int, watch: Watch) -> None:
        """In the worker (inside a command): follow `task_id` from its start."""
        del plane
        self._watches[task_id] = watch

    def forget(self, task_id: int, cancel: bool) -> None:
        """Stop following a task (the request is gone); cancel it unless it ended."""

        def command(plane: ControlPlane) -> None:
            if self._watches.pop(task_id, None) is not None and cancel:
                plane.cancel([task_id])

        self.post(command)

    @property
    def active(self) -> int:
        return len(self._watches)

    # -- the worker ------------------------------------------------------------------------

    def _serve(self, plane: ControlPlane, loop: ControlLoop | None) -> None:
        if loop is not None:
            self._wake = loop.finished  # the embedded loop's commits wake us, and so do commands
        self._control = loop
        self._refresh_health(plane)
        self._ready.set()
        version, quiet = -1, 0
        health_at = time.monotonic() + self.health_every_s
        while True:
            with self._wake:
                commands = list(self._commands)
                self._commands.clear()
                stopping = self._stopping
            seen = self._commits()  # before reading: a commit after this wakes the wait
            for command in commands:
                _run(command, plane)
            if stopping:
                return
            try:
                if self._watches:
                    current = plane.data_version()
                    if current != version or commands:
                        version, quiet = current, 0
                        self._scan(plane)
                    else:
                        quiet += 1
                if time.monotonic() >= health_at:
                    self._refresh_health(plane)
                    health_at = time.monotonic() + self.health_every_s
            except Exception:  # the worker's loop boundary: log, go on
                log.exception("gateway worker step failed")
            self._wait(seen, quiet, health_at)

    def _commits(self) -> int:
        return self._control.commits if self._control is not None else 0

    def _wait(self, seen: int, quiet: int, health_at: float) -> None:
        until_health = max(health_at - time.monotonic(), 0.0)
        with self._wake:
            if self._commands or self._stopping:
                return
            if self._control is not None:
                if self._control.commits == seen:  # else a commit came since `seen`: go on
                    self._wake.wait(min(NOTIFIED_WAIT_S, until_health))
            elif self._watches:
                self._wake.wait(min(0.0005 * 2**quiet, QUIET_POLL_S, until_health))
            else:
                self._wake.wait(until_health)

    def _scan(self, plane: ControlPlane) -> None:
        """Hand every watched task's new output, and its end, to its request: one read of
        them all (`watch_steps`)."""
        steps = plane.watch_steps({task_id: w.mark for task_id, w in self._watches.items()})
        for task_id, step in steps.items():
            watch = self._watches[task_id]
            watch.mark = step.mark
            if step.chunks or step.final is not None or step.restarted:
                watch.send(Event(step.chunks, step.final, step.restarted))
            if step.final is not None:
                del self._watches[task_id]

    def _refresh_health(self, plane: ControlPlane) -> None:
        snapshot = health_snapshot(plane, self.embedded, len(self._watches))
        status = 200 if snapshot["status"] != "down" else 503
        self.health = (status, json.dumps(snapshot, separators=(",", ":")).encode())
        self.health_brief = (status, json.dumps({"status": snapshot["status"]}).encode())


def health_snapshot(plane: ControlPlane, embedded: bool, active: int) -> dict[str, Any]:
    """The controller, each host's stored health, tasks per state. `status`: ok (a live
    controller and every host healthy), degraded (a live controller, some host not healthy),
    down (no live controller: nothing would run)."""
    holder = plane.controller()
    alive = holder is not None and holder.alive
    stored = plane.fleet.hosts()
    listed = []
    for host in plane.profile.hosts:
        found = stored.get(host.name)
        listed.append(
            {
                "name": host.name,
                "kind": host.kind,
                "healthy": bool(found and found["healthy"]),
                "connected": bool(found and found["connected"]),
                "last_seen": found["last_seen"] if found else None,
                "warnings": found["warnings"] if found else ["not seen by a controller yet"],
            }
        )
    healthy = all(h["healthy"] for h in listed) and bool(listed)
    return {
        "status": "down" if not alive else "ok" if healthy else "degraded",
        "controller": holder.to_dict() if alive and holder is not None else None,
        "embedded": embedded,
        "hosts": listed,
        "tasks": plane.task_counts(),
        "active_requests": active,
        "checked_at": time.time(),
    }


def _run(command: Command, plane: ControlPlane) -> None:
    try:
        command(plane)
    except Exception:  # one command's failure is its own (`call` hands errors back itself)
        log.exception("gateway command failed")


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the request gave up waiting
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
