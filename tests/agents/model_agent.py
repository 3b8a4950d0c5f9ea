"""A real agent subprocess serving the demo model, spoken to run by run: what each run said
(output with arrival times, result or error), the agent's log events and latest telemetry."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.agents.agent_proc import AgentProc
from tests.agents.conftest import INFER_ENV


@dataclass
class Run:
    run_id: str
    sent_at: float
    output: list[tuple[float, str]] = field(default_factory=list)
    result: Any = None
    error: dict[str, Any] | None = None
    ended_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(chunk for _, chunk in self.output)

    @property
    def first_output_at(self) -> float | None:
        return self.output[0][0] if self.output else None


class ModelAgent(AgentProc):
    def __init__(self, model: Path, *args: str) -> None:
        super().__init__("--telemetry-interval", "0.2", *args, env=INFER_ENV)
        self.model = model
        self.runs: dict[str, Run] = {}
        self.logs: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self._n = 0

    def task(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        settings: dict[str, Any] | None = None,
        keep_alive_s: float | None = None,
        path: Path | None = None,
    ) -> str:
        """Send a run of `kind` on the model (or `path`); its run id."""
        self._n += 1
        run_id = f"r{self._n}"
        model = {
            "name": "demo",
            "path": str(path or self.model),
            "settings": settings or {},
            "keep_alive_s": keep_alive_s,
        }
        task = {"id": self._n, "kind": kind, "model": model, "payload": payload or {}}
        self.runs[run_id] = Run(run_id, time.monotonic())
        self.send("run", run_id, task=task)
        return run_id

    def burst(self, kind: str, payloads: list[dict[str, Any]], **model: Any) -> list[str]:
        """Runs sent in one write (the agent reads them together); their run ids."""
        lines: list[bytes] = []
        send_raw, self.send_raw = self.send_raw, lambda data: lines.append(data)  # type: ignore[method-assign]
        try:
            ids = [self.task(kind, payload, **model) for payload in payloads]
        finally:
            self.send_raw = send_raw  # type: ignore[method-assign]
        self.send_raw(b"".join(lines))
        return ids

    def generate(self, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1, **extra}

    def pump(self, timeout: float = 0.05) -> None:
        """File every message that arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return
            if msg is None:
                raise EOFError("the agent closed its stdout")
            self._file(msg)

    def _file(self, msg: dict[str, Any]) -> None:
        now, kind, run = time.monotonic(), msg["type"], self.runs.get(str(msg.get("id")))
        if kind == "telemetry":
            self.snapshot = msg["snapshot"]
        elif kind == "event" and msg.get("kind") == "log" and "id" not in msg:
            self.logs.append(msg)
        elif run is None:
            if "id" in msg:
                self.replies[str(msg["id"])] = msg
        elif kind == "event" and msg.get("kind") == "output":
            run.output.append((now, msg["data"]))
        elif kind == "result":
            run.result, run.ended_at = msg["result"], now
        elif kind == "error":
            run.error, run.ended_at = msg, now

    def until(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            self.pump(0.05)

    def ended(self, *run_ids: str, timeout: float = 120.0) -> list[Run]:
        runs = [self.runs[r] for r in run_ids]
        self.until(lambda: all(r.ended_at for r in runs), timeout, f"runs {run_ids} to end")
        return runs

    def ok(self, run_id: str, timeout: float = 120.0) -> Any:
        run = self.ended(run_id, timeout=timeout)[0]
        assert run.error is None, run.error
        return run.result

    def reply(self, msg_id: str, timeout: float = 30.0) -> dict[str, Any]:
        reply: dict[str, Any] = self.until(
            lambda: self.replies.get(msg_id), timeout, f"a reply to {msg_id}"
        )
        return reply

    def loaded(self, fresh: bool = True) -> list[dict[str, Any]]:
        """The latest telemetry's loaded models (one newer than now, when `fresh`)."""
        if fresh:
            since = time.time()
            self.until(lambda: self.snapshot.get("at", 0) > since, 10, "a fresh snapshot")
        return list(self.snapshot.get("loaded", []))

    def configure(self, **limits: Any) -> dict[str, Any]:
        self._n += 1
        msg_id = f"c{self._n}"
        self.send("configure", msg_id, limits=limits)
        return self.reply(msg_id)

    def log_texts(self) -> list[str]:
        return [str(log["data"]) for log in self.logs]
