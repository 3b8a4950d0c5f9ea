"""Model runners: one supervised inference child per loaded model, one request at a time.

llama.cpp contexts are not thread-safe and abort the whole process on OOM or a failed assert,
so each model runs in its own child process (`infer.py`) behind an explicit queue. A child that
dies fails its current request as `runner_crashed` (retryable) and is restarted, with backoff,
for the next one. A model idle for `idle_unload_s` is unloaded (its child stopped).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from bitinglip_agent.gguf_check import InvalidGGUF, check_gguf
from bitinglip_agent.protocol import TaskKind

if TYPE_CHECKING:
    from bitinglip_agent.server import Agent

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a dir or the .pyz
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
N_CTX = 4096


@dataclass
class Request:
    run_id: str
    task: dict[str, Any]
    canceled: bool = False
    queued_at: float = field(default_factory=time.monotonic)
    on_unload: Callable[[bool], None] | None = None


class Runners:
    """Every model runner of the agent, by (model path, mode)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._runners: dict[tuple[str, str], ModelRunner] = {}
        self._checked: dict[tuple[str, int, float], bool] = {}

    def submit(self, run_id: str, task: dict[str, Any]) -> None:
        model = task.get("model") or {}
        path = model.get("path")
        if not isinstance(path, str):
            self.agent.error(run_id, "bad_request", "a model task needs model.path")
            return
        try:
            self._check(path)
        except InvalidGGUF as exc:
            self.agent.error(run_id, "invalid_gguf", str(exc))
            return
        embed = task["kind"] == TaskKind.EMBED or model.get("mode") == "embed"
        self._runner(path, "embed" if embed else "generate").put(Request(run_id, task))

    def _check(self, path: str) -> None:
        """The GGUF header check, once per file version (it parses the whole header)."""
        try:
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime)
        except OSError:
            key = (path, -1, 0.0)
        if key not in self._checked:
            check_gguf(path)
            self._checked[key] = True

    def _runner(self, path: str, mode: str) -> ModelRunner:
        with self._lock:
            runner = self._runners.get((path, mode))
            if runner is None or not runner.alive:
                runner = ModelRunner(self.agent, path, mode)
                self._runners[(path, mode)] = runner
            return runner

    def load(self, msg_id: str, model: dict[str, Any]) -> None:
        """A `load` message: the model's child started (a `load` task goes through submit)."""
        path = model["path"]
        try:
            self._check(path)
        except InvalidGGUF as exc:
            self.agent.error(msg_id, "invalid_gguf", str(exc))
            return
        task = {"kind": "load", "model": model}
        self._runner(path, model.get("mode", "generate")).put(Request(msg_id, task))

    def unload_when_idle(self, run_id: str, path: str) -> None:
        """An `unload` task: each runner of `path` stops its child once the requests queued
        before this one are done; the result counts the children stopped."""
        with self._lock:
            runners = [r for (p, _), r in self._runners.items() if p == path and r.alive]
        if not runners:
            self.agent.send("result", run_id, result={"unloaded": 0})
            return
        left = [len(runners), 0]
        lock = threading.Lock()

        def one_done(stopped: bool) -> None:
            with lock:
                left[0] -= 1
                left[1] += int(stopped)
                finished = left[0] == 0
            if finished:
                self.agent.send("result", run_id, result={"unloaded": left[1]})

        for runner in runners:
            runner.put(Request(f"{run_id}:{runner.mode}", {"kind": "unload"}, on_unload=one_done))

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            runners = list(self._runners.values())
        return any(r.cancel(run_id) for r in runners)

    def loaded(self) -> list[str]:
        """Model paths with a live inference child."""
        with self._lock:
            runners = list(self._runners.values())
        return sorted({r.path for r in runners if r.loaded})

    def active(self) -> list[str]:
        """Run ids queued or running here."""
        with self._lock:
            runners = list(self._runners.values())
        return [run_id for runner in runners for run_id in runner.pending()]

    def unload(self, path: str) -> int:
        with self._lock:
            gone = [r for (p, _), r in self._runners.items() if p == path]
        for runner in gone:
            runner.stop()
        return len(gone)

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every runner and give them `timeout` to report their last words."""
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.stop()
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(deadline - time.monotonic(), 0.0))


class ModelRunner:
    """One model's queue and the thread that owns its child process."""

    def __init__(self, agent: Agent, path: str, mode: str) -> None:
        self.agent = agent
        self.path = path
        self.mode = mode
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._pending: dict[str, Request] = {}
        self._current: Request | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._child_lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=8)
        self._backoff = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"runner:{path}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def put(self, request: Request) -> None:
        with self._child_lock:
            self._pending[request.run_id] = request
        self._queue.put(request)

    def cancel(self, run_id: str) -> bool:
        with self._child_lock:
            request = self._pending.get(run_id)
            if request is None:
                return False
            request.canceled = True
            if self._current is request and self._child is not None:
                self._write({"op": "cancel", "id": run_id})
        return True

    @property
    def loaded(self) -> bool:
        child = self._child
        return child is not None and child.poll() is None

    def pending(self) -> list[str]:
        with self._child_lock:
            return [r.run_id for r in self._pending.values() if r.on_unload is None]

    def stop(self) -> None:
        """Stop taking requests, cancel the running one; pending ones fail as agent_stopping."""
        self._stopped.set()
        with self._child_lock:
            current = self._current
        if current is not None:
            self.cancel(current.run_id)
        self._queue.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the runner thread -----------------------------------------------------------------

    def _loop(self) -> None:
        idle = self.agent.options.idle_unload_s
        try:
            while not self._stopped.is_set():
                try:
                    request = self._queue.get(timeout=idle if idle > 0 else None)
                except queue.Empty:
                    self._stop_child()  # idle: unload
                    continue
                if request is not None and not self._stopped.is_set():
                    self._serve(request)
        finally:
            self._stop_child()
            self._fail_pending("agent_stopping", "the agent is stopping")

    def _serve(self, request: Request) -> None:
        try:
            if request.canceled:
                self.agent.error(request.run_id, "canceled", "canceled before it started")
                return
            if request.on_unload is not None:
                was_loaded = self.loaded
                self._stop_child()
                request.on_unload(was_loaded)
                return
            already, start = self.loaded, time.perf_counter()
            if not self._ensure_child(request):
                return
            if request.task["kind"] == "load":
                result = {
                    "loaded": self.path,
                    "load_s": time.perf_counter() - start,
                    "already": already,
                }
                self.agent.send("result", request.run_id, result=result)
                return
            with self._child_lock:
                self._current = request
                self._write(
                    {
                        "op": request.task["kind"],
                        "id": request.run_id,
                        "payload": request.task.get("payload") or {},
                    }
                )
            self._relay(request)
        finally:
            with self._child_lock:
                self._current = None
                self._pending.pop(request.run_id, None)

    def _ensure_child(self, request: Request) -> bool:
        if self._child is not None and self._child.poll() is None:
            return True
        if self._backoff:
            time.sleep(self._backoff)
        options = self.agent.options
        argv = [
            sys.executable,
            "-m",
            "bitinglip_agent.infer",
            "--model",
            self.path,
            "--mode",
            self.mode,
            "--n-ctx",
            str(N_CTX),
            "--threads",
            str(options.threads),
            "--gpu-layers",
            str(options.gpu_layers),
        ]
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        threading.Thread(target=self._drain_stderr, args=(child,), daemon=True).start()
        with self._child_lock:
            self._child = child
        ready = self._read()
        if ready is not None and ready.get("ev") == "error":  # it said why: not a crash
            self._stop_child()
            code = str(ready.get("code", "inference_failed"))
            self.agent.error(request.run_id, code, f"loading {self.path}: {ready.get('message')}")
            return False
        if ready is None or ready.get("ev") != "ready":
            self._crashed(request, f"the inference child died while loading: {self._why()}")
            return False
        self._backoff = 0.0
        return True

    def _relay(self, request: Request) -> None:
        """Forward the child's chunks as events until it says done, fails, or dies."""
        while True:
            msg = self._read()
            if msg is None:
                self._crashed(request, f"the inference child died: {self._why()}")
                return
            ev = msg.get("ev")
            if ev == "chunk":
                self.agent.send("event", request.run_id, kind="output", data=msg["text"])
            elif ev == "done":
                if request.canceled:
                    self.agent.error(request.run_id, "canceled", "canceled while running")
                else:
                    self.agent.send("result", request.run_id, result=msg["result"])
                return
            elif ev == "error":
                self.agent.error(
                    request.run_id,
                    msg.get("code", "inference_failed"),
                    msg.get("message", "inference failed"),
                )
                return

    def _crashed(self, request: Request, message: str) -> None:
        self._stop_child()
        self._backoff = min(max(self._backoff * 2, BACKOFF_START_S), BACKOFF_MAX_S)
        self.agent.error(request.run_id, "runner_crashed", message)

    def _read(self) -> dict[str, Any] | None:
        child = self._child
        if child is None or child.stdout is None:
            return None
        while True:
            line = child.stdout.readline()
            if not line:
                return None
            try:
                msg = json.loads(line)
            except ValueError:
                self._stderr.append(line.decode(errors="replace").strip())
                continue  # stray output on stdout: keep it for the crash report
            if isinstance(msg, dict):
                return msg

    def _write(self, msg: dict[str, Any]) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        try:
            child.stdin.write(json.dumps(msg).encode() + b"\n")
            child.stdin.flush()
        except (BrokenPipeError, ValueError):
            return  # it died; the runner thread sees EOF on its stdout and reports the crash

    def _drain_stderr(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stderr is not None
        for raw in child.stderr:
            text = raw.decode(errors="replace").strip()
            if text:
                self._stderr.append(text)

    def _why(self) -> str:
        child = self._child
        code = None if child is None else child.poll()
        if child is not None and code is None:
            try:
                code = child.wait(2)
            except subprocess.TimeoutExpired:
                code = None
        tail = " | ".join(list(self._stderr)[-3:])
        status = f"exit status {code}" if code is not None else "no exit status"
        return f"{status}{'; ' + tail if tail else ''}"

    def _stop_child(self) -> None:
        with self._child_lock:
            child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            try:
                if child.stdin is not None:
                    child.stdin.write(b'{"op": "exit"}\n')
                    child.stdin.flush()
                child.wait(5)
            except (BrokenPipeError, ValueError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()

    def _fail_pending(self, code: str, message: str) -> None:
        with self._child_lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for request in pending:
            if request.on_unload is not None:
                request.on_unload(False)
            else:
                self.agent.error(request.run_id, code, message)
