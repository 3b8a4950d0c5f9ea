"""AgentSession: the protocol client over one transport (a local pipe, or an SSH channel).

The transport's reader thread hands every decoded message to the session's inbox callback; the
controller loop, the one thread that owns the database, drains the inbox. A session knows which
runs it has in flight and when it last heard from its agent.

An SSH transport can detach (the connection dropped) and re-attach later: the session and its
runs in flight stay; it is not `ready` until the agent's next `hello`, which lists the runs the
agent still has (see Dispatcher._reattached).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bitinglip_agent import protocol
from bitinglip_agent.protocol import FROM_AGENT, ProtocolError


class Transport(Protocol):
    name: str

    def start(
        self,
        on_line: Callable[[bytes], None],
        on_close: Callable[[str], None],
        on_detach: Callable[[str], None] | None = None,
        in_flight: Callable[[], list[str]] | None = None,
    ) -> None: ...
    def send(self, data: bytes) -> bool: ...
    def close(self, timeout: float = 5.0) -> None: ...


@dataclass
class Inflight:
    task_id: int
    token: int
    kind: str
    sent_at: float
    output: list[str] = field(default_factory=list)
    first_output_flushed: bool = False
    progress: Any = None  # the latest progress event's data, not stored yet (pulls)


@dataclass(frozen=True)
class Incoming:
    """One thing for the loop to handle: a message, or the session's end (`msg` None)."""

    session: AgentSession
    msg: dict[str, Any] | None
    reason: str = ""


class AgentSession:
    _ids = itertools.count(1)

    def __init__(self, host: str, transport: Transport, inbox: Callable[[Incoming], None]) -> None:
        self.host = host
        self.transport = transport
        self.inbox = inbox
        self.number = next(self._ids)
        self.hello: dict[str, Any] | None = None
        self.telemetry: dict[str, Any] | None = None
        self.telemetry_at: float | None = None  # this machine's wall clock when it came
        self.last_seen = time.monotonic()
        self.inflight: dict[str, Inflight] = {}
        self.closed = False
        self.close_reason = ""
        self.detached_reason = ""
        self.started_at = time.monotonic()
        self.hello_at: float | None = None

    def start(self) -> None:
        self.transport.start(self._on_line, self._on_close, self._on_detach, self._in_flight)

    def _in_flight(self) -> list[str]:
        """Run ids sent and not answered yet (any thread: a copy is taken atomically)."""
        return list(self.inflight.copy())

    @property
    def ready(self) -> bool:
        return self.hello is not None and not self.closed

    def kinds(self) -> tuple[str, ...]:
        """Kinds this agent can run: model kinds only with llama_cpp available."""
        if self.hello is None:
            return ()
        kinds = tuple(self.hello.get("kinds", ()))
        if not self.hello.get("capabilities", {}).get("llama_cpp"):
            kinds = tuple(k for k in kinds if k not in protocol.MODEL_KINDS)
        return kinds

    def run(self, runs: list[tuple[int, int, str, dict[str, Any]]]) -> None:
        """Send (task_id, token, kind, task) runs in one write; raise ConnectionError if gone."""
        lines = []
        now = time.monotonic()
        for task_id, token, kind, task in runs:
            run_id = f"{task_id}.{token}"
            self.inflight[run_id] = Inflight(task_id, token, kind, now)
            lines.append(protocol.encode("run", run_id, task=task))
        if not self.transport.send(b"".join(lines)):
            for task_id, token, _, _ in runs:
                self.inflight.pop(f"{task_id}.{token}", None)
            raise ConnectionError(f"agent on {self.host} is gone")

    def cancel(self, run_id: str) -> None:
        self.transport.send(protocol.encode("cancel", run_id))

    def shutdown(self, timeout: float = 5.0) -> None:
        self.transport.send(protocol.encode("shutdown"))
        self.transport.close(timeout)

    def _on_line(self, line: bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            msg = protocol.decode(line, FROM_AGENT)
        except ProtocolError as exc:
            msg = {"type": "protocol_error", "code": exc.code, "message": str(exc)}
        if msg["type"] == "telemetry":
            self.telemetry = msg.get("snapshot")
            self.telemetry_at = time.time()
            return  # kept on the session; not the loop's business
        self.inbox(Incoming(self, msg))

    def _on_detach(self, reason: str) -> None:
        self.detached_reason = reason
        self.inbox(Incoming(self, {"type": "detached", "reason": reason}))

    def _on_close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.inbox(Incoming(self, None, reason))
