"""One host's agent session for `bitinglip bench fleet`: start it, send runs, wait for replies.

A HostLink is an AgentSession with an inbox of its own (no queue, no dispatcher): the bench
thread that uses it sends runs and handles what comes back, and whatever stops the host (a
closed connection, a detach, a protocol error, a time limit) is raised as HostFailed, the one
line that becomes the host's `status`.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Any

from bitinglip.config import HostConfig
from bitinglip.control.transport.sessions import AgentSession, Incoming, Transport
from bitinglip.errors import BitinglipError

HELLO_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 60.0


class HostFailed(BitinglipError):
    """What stopped one host's measurements: its `status`."""


class HostLink:
    """One host's AgentSession; the bench reads its inbox (in one thread at a time)."""

    def __init__(self, host: HostConfig, transport: Transport) -> None:
        self.host = host
        self.session = AgentSession(host.name, transport, self._receive)
        self.started = self.hello_at = 0.0
        self._inbox: collections.deque[Incoming] = collections.deque()
        self._wake = threading.Event()
        self._replies: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def _receive(self, incoming: Incoming) -> None:
        """The transport's thread: as the dispatcher's inbox, one wake per empty→non-empty."""
        if incoming.msg is not None and incoming.msg["type"] == "hello":
            self.hello_at = time.perf_counter()
        self._inbox.append(incoming)
        if len(self._inbox) == 1:
            self._wake.set()

    def start(self) -> float:
        """Milliseconds from transport start to `hello`."""
        self.started = time.perf_counter()
        self.session.start()
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while self.session.hello is None:
            self._pump(deadline, "hello")
        return (self.hello_at - self.started) * 1000

    def request(
        self,
        kind: str,
        payload: dict[str, Any],
        model: Any = None,
        timeout: float = REPLY_TIMEOUT_S,
    ) -> tuple[dict[str, Any], float]:
        """One run, waited for: its reply (`result` or `error`) and seconds from send to it."""
        start = time.perf_counter()
        (run_id,) = self._send([(kind, payload, model)])
        deadline = time.monotonic() + timeout
        while run_id not in self._replies:
            self._pump(deadline, kind)
        return self._replies.pop(run_id), time.perf_counter() - start

    def pipeline(self, n: int, window: int, refill: int = 1) -> float:
        """Echo runs/s with at most `window` unanswered, topped up in one write once `refill`
        (or all that are left) can go."""
        sent = got = 0
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        start = time.perf_counter()
        while got < n:
            batch = min(window - (sent - got), n - sent)
            if batch >= min(refill, n - sent) and batch > 0:
                self._send([("echo", {"i": i}, None) for i in range(sent, sent + batch)])
                sent += batch
            self._pump(deadline, "echo")
            failed = [r for r in self._replies.values() if r["type"] != "result"]
            if failed:
                raise HostFailed(f"echo failed: {why(failed[0])}")
            got += len(self._replies)
            self._replies.clear()
        return n / (time.perf_counter() - start)

    def close(self) -> None:
        """Stop the transport; an SSH host's daemon keeps running (the next phase attaches)."""
        self.session.transport.close(5.0)

    def _send(self, runs: list[tuple[str, dict[str, Any], Any]]) -> list[str]:
        batch = []
        for kind, payload, model in runs:
            task_id = next(self._ids)
            task = {"id": task_id, "kind": kind, "payload": payload}
            if model is not None:
                task["model"] = model
            batch.append((task_id, 1, kind, task))
        try:
            self.session.run(batch)
        except ConnectionError as exc:
            raise HostFailed(str(exc)) from None
        return [f"{task_id}.1" for task_id, *_ in batch]

    def _pump(self, deadline: float, waiting_for: str) -> None:
        """Wait for the inbox (until `deadline`), then handle all of it."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise HostFailed(f"no {waiting_for} from the agent within the time limit")
        self._wake.wait(left)
        self._wake.clear()  # before draining: an append after this sets it again
        while self._inbox:
            self._handle(self._inbox.popleft())

    def _handle(self, incoming: Incoming) -> None:
        msg = incoming.msg
        if msg is None:
            raise HostFailed(one_line(incoming.reason or "the agent's connection closed"))
        kind = msg["type"]
        if kind == "hello":
            self.session.hello = msg
        elif kind == "detached":
            raise HostFailed(one_line(str(msg.get("reason"))))
        elif kind == "protocol_error":
            raise HostFailed(f"protocol error: {one_line(str(msg.get('message')))}")
        elif kind in ("result", "error"):
            run_id = str(msg.get("id"))
            if self.session.inflight.pop(run_id, None) is not None:
                self._replies[run_id] = msg


def why(reply: dict[str, Any]) -> str:
    return f"{reply.get('code', reply.get('type'))}: {one_line(str(reply.get('message', '')))}"


def one_line(text: str) -> str:
    return " ".join(text.split())
