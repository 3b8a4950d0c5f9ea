"""One model's runner: its requests, the thread that owns its inference child, its keep-alive.

Everything that happens to a runner is an event on its queue (a request, a cancel, a line from
the child, the child's end), handled in order on its thread. Up to `parallel` requests are in
the child at once (it batches them); the others wait in arrival order. A request whose settings
differ from the child's waits until the child has no work, then the child is restarted with its
settings. Once idle, the child stays loaded for the keep-alive of the last request served (-1
forever, 0 not at all). A child that dies fails its running requests as `runner_crashed`
(retryable) and is restarted, with backoff, for the next.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from bitinglip_agent.child import ChildProcess

if TYPE_CHECKING:
    from bitinglip_agent.runners import Runners

BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0


@dataclass
class Request:
    run_id: str
    task: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    keep_alive_s: float = 300.0
    canceled: bool = False
    on_unload: Callable[[bool], None] | None = None  # an unload task's marker, not a run
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return str(self.task.get("kind"))


class ModelRunner:
    """One (model path, mode): its queue and the thread that owns its child process."""

    def __init__(self, owner: Runners, path: str, mode: str, keep_alive_s: float) -> None:
        self.owner = owner
        self.agent = owner.agent
        self.path = path
        self.mode = mode
        self.keep_alive_s = keep_alive_s
        self.estimate = 0  # bytes its child takes (settings.estimate_bytes), while loaded
        self.loading = False  # counted as loaded while its child starts (Runners.make_room)
        self.last_used = time.monotonic()
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, Request] = {}  # put, not yet answered
        self._running: dict[str, Request] = {}  # in the child now
        self._waiting: collections.deque[Request] = collections.deque()  # the thread's own
        self._child: ChildProcess | None = None
        self._idle_since: float | None = time.monotonic()
        self._backoff = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"runner:{path}", daemon=True)
        self._thread.start()

    # -- other threads ---------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    @property
    def loaded(self) -> bool:
        child = self._child
        return child is not None and child.alive

    @property
    def busy(self) -> bool:
        """Running or queued work (an eviction never takes a busy model)."""
        with self._lock:
            return bool(self._pending)

    def put(self, *requests: Request) -> None:
        """Requests in, in order; those of one call reach the child together."""
        with self._lock:
            for request in requests:
                self._pending[request.run_id] = request
            self._idle_since = None
        self._events.put(("requests", requests))

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            request = self._pending.get(run_id)
            if request is None or request.on_unload is not None:
                return False
            request.canceled = True
        self._events.put(("cancel", run_id))
        return True

    def pending(self) -> list[str]:
        with self._lock:
            return [r.run_id for r in self._pending.values() if r.on_unload is None]

    def stop(self) -> None:
        """Stop taking requests, cancel the running ones; the others fail as agent_stopping."""
        self._stopped.set()
        with self._lock:
            running = list(self._running)
        child = self._child
        for run_id in running:
            if child is not None:
                child.write({"op": "cancel", "id": run_id})
        self._events.put(("stop",))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def evict(self, why: str) -> bool:
        """Unload now if idle (no running or queued work); False if busy or not loaded."""
        with self._lock:
            if self._pending or self._child is None:
                return False
            child, self._child = self._child, None
        self._unloaded(child, why)
        return True

    def describe(self) -> dict[str, Any] | None:
        """Contract 4's `loaded` entry (rss and GPU memory added by the telemetry thread)."""
        with self._lock:
            child = self._child
            running, pending, idle_since = len(self._running), len(self._pending), self._idle_since
        if child is None or not child.alive:
            return None
        now = time.monotonic()
        idle = None if idle_since is None else now - idle_since
        keep = self.keep_alive_s
        unloads_in = None if idle is None or keep < 0 else max(keep - idle, 0.0)
        return {
            "path": self.path,
            "mode": self.mode,
            "pid": child.pid,
            "settings": child.facts.get("settings", child.settings),
            "running": running,
            "queued": max(pending - running, 0),
            "idle_s": idle,
            "keep_alive_s": keep,
            "unloads_in_s": unloads_in,
            "loaded_at": child.loaded_at,
        }

    # -- the runner thread -----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                try:
                    event = self._events.get(timeout=self._idle_timeout())
                except queue.Empty:
                    self._unload(f"idle for its keep-alive of {self.keep_alive_s:g}s")
                    continue
                self._handle(event)
                self._handle_ready()  # a burst of requests goes to the child in one write
                if not self._stopped.is_set():
                    self._dispatch()
        finally:
            self._unload("the agent is stopping")
            self._fail_all("agent_stopping", "the agent is stopping")

    def _handle_ready(self) -> None:
        """Handle the events already queued (without waiting)."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._handle(event)

    def _idle_timeout(self) -> float | None:
        with self._lock:
            idle_since, child = self._idle_since, self._child
        if idle_since is None or child is None or self.keep_alive_s < 0:
            return None
        return max(idle_since + self.keep_alive_s - time.monotonic(), 0.0)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind, child = event[0], self._child
        if kind == "requests":
            self._waiting.extend(event[1])
        elif kind == "cancel":
            self._canceled(event[1])
        elif kind == "msg" and child is not None and event[1] is child:
            self._from_child(event[2])
        elif kind == "eof" and child is not None and event[1] is child:
            self._crashed(f"the inference child died: {child.why()}")

    def _canceled(self, run_id: str) -> None:
        for request in list(self._waiting):
            if request.run_id == run_id:
                self._waiting.remove(request)
                self._answer(request, "error", code="canceled", message="canceled before it ran")
                return
        child = self._child
        if run_id in self._running and child is not None:
            child.write({"op": "cancel", "id": run_id})

    def _from_child(self, msg: dict[str, Any]) -> None:
        ev, run_id = msg.get("ev"), str(msg.get("id"))
        request = self._running.get(run_id)
        if request is None:
            return
        if ev == "chunk":
            self.agent.send("event", run_id, kind="output", data=msg.get("text", ""))
        elif ev == "done" and request.canceled:
            self._answer(request, "error", code="canceled", message="canceled while running")
        elif ev == "done":
            self._answer(request, "result", result=msg.get("result"))
        elif ev == "error":
            code = str(msg.get("code", "inference_failed"))
            self._answer(request, "error", code=code, message=msg.get("message", "failed"))

    def _leave(self, request: Request) -> bool:
        """A request is done here; True when no work is left (the keep-alive clock starts)."""
        with self._lock:
            self._pending.pop(request.run_id, None)
            self._running.pop(request.run_id, None)
            idle = not self._pending
            if idle:
                self._idle_since = time.monotonic()
        return idle

    def _answer(self, request: Request, what: str, **fields: Any) -> None:
        """A request's result or error out; it leaves, and the keep-alive clock may start."""
        idle = self._leave(request)
        if what == "result":
            self.agent.send("result", request.run_id, **fields)
        else:
            self.agent.error(request.run_id, fields["code"], fields["message"])
        if not request.canceled:
            self.keep_alive_s = request.keep_alive_s
        self.last_used = time.monotonic()
        if idle and self.keep_alive_s == 0:
            self._unload("keep-alive 0: unloaded after its request")

    def _dispatch(self) -> None:
        """Start what can start, in arrival order: the child (re)loaded for the request at the
        head when needed, up to `parallel` requests in it (written together)."""
        burst: list[dict[str, Any]] = []
        while self._waiting and not self._stopped.is_set():
            request = self._waiting[0]
            if request.canceled:
                self._waiting.popleft()
                self._answer(request, "error", code="canceled", message="canceled before it ran")
                continue
            if request.on_unload is not None:
                if self._running:
                    break  # an unload waits for the work before it
                self._waiting.popleft()
                stopped = self._unload("an unload task")
                self._leave(request)
                request.on_unload(stopped)
                continue
            child = self._child
            if child is not None and child.settings != request.settings:
                if self._running:
                    break  # the child finishes its work first
                self._unload("its settings changed")
                child = None
            if child is None or not child.alive:
                started = time.perf_counter()
                if not self._start(request):
                    continue
                child = self._child
                assert child is not None
                load_s = time.perf_counter() - started
                already = False
            else:
                load_s, already = 0.0, True
            if request.kind == "load":
                self._waiting.popleft()
                result = {"loaded": self.path, "load_s": load_s, "already": already}
                self._answer(request, "result", result=result)
                continue
            if len(self._running) >= int(child.settings.get("parallel", 1)):
                break
            self._waiting.popleft()
            with self._lock:
                self._running[request.run_id] = request
            burst.append(
                {"op": request.kind, "id": request.run_id, "payload": request.task.get("payload")}
            )
        if burst and self._child is not None:
            self._child.write(*burst)

    def _start(self, request: Request) -> bool:
        """Load the model with the request's settings; False (the request answered) if not."""
        if self._backoff:
            time.sleep(self._backoff)
        refused = self.owner.make_room(self, request.settings)
        if refused is not None:
            self._waiting.popleft()
            self._answer(request, "error", code=refused[0], message=refused[1])
            return False
        try:
            child = ChildProcess(self.path, self.mode, request.settings)
            ready = child.read()
        finally:
            self.loading = False
        if ready is not None and ready.get("ev") == "error":  # it said why: not a crash
            child.stop()
            self._waiting.popleft()
            code = str(ready.get("code", "inference_failed"))
            message = f"loading {self.path}: {ready.get('message')}"
            self._answer(request, "error", code=code, message=message)
            return False
        if ready is None or ready.get("ev") != "ready":
            why = child.why()
            child.stop()
            self._backoff = min(max(self._backoff * 2, BACKOFF_START_S), BACKOFF_MAX_S)
            self._waiting.popleft()
            message = f"the inference child died while loading: {why}"
            self._answer(request, "error", code="runner_crashed", message=message)
            return False
        child.facts = ready
        with self._lock:
            self._child = child
        self._backoff = 0.0
        self.owner.loaded_one(self, child)
        child.relay(lambda c, msg: self._events.put(("msg", c, msg) if msg else ("eof", c)))
        return True

    def _crashed(self, message: str) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.stop(0.5)
        self.owner.unloaded_one(self, f"its child died: {message}")
        self._backoff = min(max(self._backoff * 2, BACKOFF_START_S), BACKOFF_MAX_S)
        for request in list(self._running.values()):
            self._answer(request, "error", code="runner_crashed", message=message)

    def _unload(self, why: str) -> bool:
        """Stop the child (if any); True if one was loaded."""
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return False
        self._unloaded(child, why)
        return True

    def _unloaded(self, child: ChildProcess, why: str) -> None:
        child.stop()
        self.owner.unloaded_one(self, why)

    def _fail_all(self, code: str, message: str) -> None:
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
            self._running.clear()
        self._waiting.clear()
        for request in pending:
            if request.on_unload is not None:
                request.on_unload(False)
            else:
                self.agent.error(request.run_id, code, message)
