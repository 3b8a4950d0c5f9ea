"""The agent's main loop: read control-plane messages from stdin, answer on stdout.

Threads: this one reads and dispatches; a telemetry thread pushes snapshots; each loaded model
has a runner thread that owns its inference child. Writes share one lock, so lines never
interleave. Nothing here waits on inference: a `run` is queued and answered later.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from bitinglip_agent import __version__, protocol
from bitinglip_agent.protocol import MODEL_KINDS, TO_AGENT, ProtocolError

# Task kinds this agent runs, and those that need a model.
KINDS = ("echo", "generate", "chat", "embed")


@dataclass(frozen=True)
class AgentOptions:
    host_name: str | None = None
    model_dir: str | None = None
    telemetry_interval: float = 1.0
    idle_unload_s: float = 300.0
    threads: int = 0
    gpu_layers: int = -1


class Agent:
    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, options: AgentOptions) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.options = options
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._runners: Any = None  # bitinglip_agent.runners.Runners, made on first model task

    # -- output ----------------------------------------------------------------------------

    def send(self, msg_type: str, msg_id: str | None = None, **fields: Any) -> None:
        line = protocol.encode(msg_type, msg_id, **fields)
        with self._write_lock:
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except (BrokenPipeError, ValueError):
                self._stop.set()  # the control plane went away

    def error(self, msg_id: str | None, code: str, message: str) -> None:
        self.send("error", msg_id, code=code, message=message, retryable=code in protocol.RETRYABLE)

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> int:
        from bitinglip_agent import telemetry

        self.send(
            "hello",
            version=__version__,
            protocol=protocol.PROTOCOL_VERSION,
            pid=os.getpid(),
            host=telemetry.host_facts(),
            capabilities=telemetry.capabilities(),
            kinds=list(KINDS),
            name=self.options.host_name,
        )
        if self.options.telemetry_interval > 0:
            threading.Thread(target=self._telemetry, name="telemetry", daemon=True).start()
        try:
            while not self._stop.is_set():
                line = protocol.read_line(self.rfile)
                if line is None:
                    break
                if line.strip():
                    self._handle(line)
        finally:
            self._stop.set()
            if self._runners is not None:
                self._runners.stop_all()
        return 0

    def _telemetry(self) -> None:
        from bitinglip_agent import telemetry

        sampler = telemetry.Sampler(self.options.model_dir)
        interval = self.options.telemetry_interval
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                self.send("telemetry", snapshot=sampler.snapshot())
                next_at += interval
                self._stop.wait(max(next_at - time.monotonic(), 0.0))
        finally:
            sampler.close()

    def _handle(self, line: bytes) -> None:
        try:
            msg = protocol.decode(line, TO_AGENT)
        except ProtocolError as exc:
            self.error(exc.msg_id, exc.code, str(exc))
            return
        handler = getattr(self, f"_on_{msg['type']}", None)
        if handler is None:
            self.error(msg.get("id"), "unsupported", f"{msg['type']!r} is not supported here")
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.error(msg.get("id"), "bad_request", f"bad {msg['type']} message: {exc!r}")

    # -- handlers --------------------------------------------------------------------------

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.send("pong", msg.get("id"), at=time.time())

    def _on_shutdown(self, msg: dict[str, Any]) -> None:
        self._stop.set()

    def _on_run(self, msg: dict[str, Any]) -> None:
        run_id = str(msg["id"])
        task = msg["task"]
        kind = task["kind"]
        if kind == "echo":
            self.send("result", run_id, result=task.get("payload"))
        elif kind in MODEL_KINDS:
            self.runners().submit(run_id, task)
        else:
            self.error(run_id, "unsupported", f"this agent does not run {kind!r} tasks")

    def _on_cancel(self, msg: dict[str, Any]) -> None:
        if self._runners is None or not self._runners.cancel(str(msg["id"])):
            self.send("event", str(msg["id"]), kind="log", data="cancel: no such run here")

    def _on_load(self, msg: dict[str, Any]) -> None:
        self.runners().load(str(msg.get("id")), msg["model"])

    def _on_unload(self, msg: dict[str, Any]) -> None:
        unloaded = self._runners.unload(msg["model"]["path"]) if self._runners else 0
        self.send("result", msg.get("id"), result={"unloaded": unloaded})

    def runners(self) -> Any:
        if self._runners is None:
            from bitinglip_agent.runners import Runners

            self._runners = Runners(self)
        return self._runners
