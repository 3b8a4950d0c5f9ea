"""AgentSession: the protocol client over one transport (a local pipe, or an SSH channel).

The transport's reader thread hands every decoded message to the session's inbox callback; the
controller loop, the one thread that owns the database, drains the inbox. A session knows which
runs it has in flight and when it last heard from its agent.

An SSH transport can detach (the connection dropped) and re-attach later: the session and its
runs in flight stay; it is not `ready` until the agent's next `hello`, which lists the runs the
agent still has (see runtime/inbox.py). The agent acknowledges the runs it reads (`ack`): a run
never acknowledged did not reach it, and is sent again as it was (`resend`).

A result too long for one line comes as `result_part` lines, joined here before the loop sees
it; one over protocol.RESULT_MAX_BYTES, or a line over the line limit that names its run, comes
to the loop as that run's error at once.
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
    line: bytes = b""  # the `run` line, kept until the agent acknowledges it (to send again)
    acked: bool = False


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
        self._parts = protocol.Parts()

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
            line = protocol.encode("run", run_id, task=task)
            self.inflight[run_id] = Inflight(task_id, token, kind, now, line=line)
            lines.append(line)
        if not self.transport.send(b"".join(lines)):
            for task_id, token, _, _ in runs:
                self.inflight.pop(f"{task_id}.{token}", None)
            raise ConnectionError(f"agent on {self.host} is gone")

    def acked(self, run_ids: object) -> None:
        """The agent has these runs (any thread): they are not sent again."""
        for run_id in run_ids if isinstance(run_ids, list) else ():
            run = self.inflight.get(str(run_id))
            if run is not None:
                run.acked, run.line = True, b""

    def resend(self, run_ids: list[str]) -> None:
        """Send again, as they were (same id, same lease), runs the agent never acknowledged:
        the connection dropped before it read them. If it is gone again, the next `hello`
        comes to this again."""
        lines = [run.line for r in run_ids if (run := self.inflight.get(r)) is not None]
        if lines:
            self.transport.send(b"".join(lines))

    def cancel(self, run_id: str) -> None:
        self.transport.send(protocol.encode("cancel", run_id))

    def shutdown(self, timeout: float = 5.0) -> None:
        self.transport.send(protocol.encode("shutdown"))
        self.transport.close(timeout)

    def _on_line(self, line: bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            msg = protocol.decode(line, FROM_AGENT)
            if msg["type"] == "result_part":
                if msg.get("id") not in self.inflight:
                    return  # not awaited (any more): nothing to join it for
                joined = self._parts.add(msg)
                if joined is None:
                    return
                msg = joined
        except ProtocolError as exc:
            msg = self._refused(exc)
        if msg["type"] == "telemetry":
            self.telemetry = msg.get("snapshot")
            self.telemetry_at = time.time()
            return  # kept on the session; not the loop's business
        if msg["type"] == "ack":
            self.acked(msg.get("runs"))
            return
        self.inbox(Incoming(self, msg))

    def _refused(self, exc: ProtocolError) -> dict[str, Any]:
        """A refused line: its run's error when it names a run in flight (it fails now rather
        than wait for ever), else a protocol error for the log."""
        if exc.msg_id in self.inflight and exc.code != "version_mismatch":
            return {
                "type": "error",
                "id": exc.msg_id,
                "code": exc.code,
                "message": f"the agent's reply on {self.host}: {exc}",
                "retryable": False,
            }
        return {"type": "protocol_error", "code": exc.code, "message": str(exc)}

    def _on_detach(self, reason: str) -> None:
        self.detached_reason = reason
        self._parts.clear()  # a result cut short comes again whole with the next attachment
        self.inbox(Incoming(self, {"type": "detached", "reason": reason}))

    def _on_close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.inbox(Incoming(self, None, reason))
