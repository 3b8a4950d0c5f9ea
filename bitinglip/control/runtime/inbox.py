"""What agents said, handled in the control loop's thread.

Messages arrive from the sessions' threads (`receive`, which rings the loop's doorbell) and are
handled together once per step (`handle`): output chunks are buffered on their runs (a task's
first chunk stored at once, for time to first token), results kept and completed in one
transaction, errors failed (retryable ones are retried by the queue; model work a host had
`no_room` for yet goes back to the queue for a second without spending a try), a pull's outcome
recorded in the registry, a lost agent's runs requeued at once. After a re-attach, the agent's
`hello` says which runs it still has: runs it never acknowledged are sent again (same lease, same
attempt), the other runs it lost (and only they) go back to the queue.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from bitinglip_agent.protocol import MODEL_KINDS, PULL_KINDS, RETRYABLE

from bitinglip.control.models import pulls
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.faults import describe, is_storage
from bitinglip.control.runtime.host_agents import HostAgents
from bitinglip.control.runtime.inflight import flush_one, flush_output
from bitinglip.control.transport.sessions import AgentSession, Incoming, Inflight
from bitinglip.errors import BitinglipError, StoreError

NO_ROOM_RETRY_S = 1.0  # model work a host had no room for yet is claimed again after this

log = logging.getLogger("bitinglip.control.runtime.dispatcher")


class Inbox:
    """Messages received and not handled yet (`messages`), and results handled and not stored
    yet (`results`): a failed commit keeps both for the next step, after the loop's backoff."""

    def __init__(self, hosts: HostAgents, wake: Callable[[], None]) -> None:
        self.hosts = hosts
        self.wake = wake
        self.messages: collections.deque[Incoming] = collections.deque()
        self.results: list[tuple[int, int, object]] = []
        self.copies_changed = False  # a pull or removal ended: hosts' models to read again

    def receive(self, incoming: Incoming) -> None:
        """From any thread."""
        self.messages.append(incoming)  # deque.append is thread-safe
        if len(self.messages) == 1:  # else the loop is draining and will see this one too
            self.wake()

    def handle(self, queue: TaskQueue) -> bool:
        """Handle what agents said; True when there was something."""
        if not self.messages and not self.results:
            return False
        while self.messages:
            self._handle_one(queue, self.messages.popleft())
        if self.results:
            flush_output(queue, self.hosts.agents, only_first=False)
            stale = queue.complete_many(self.results)
            self.results.clear()
            for task_id in stale:
                log.warning("task %s: result from an expired lease dropped", task_id)
        else:
            flush_output(queue, self.hosts.agents, only_first=True)
        return True

    def _handle_one(self, queue: TaskQueue, incoming: Incoming) -> None:
        """One message. When the database fails, it goes back to the head of the inbox as if
        never handled (its run back in flight); one that breaks otherwise is its host's fault:
        logged and dropped (its run, if any, is retried when its lease expires)."""
        session, msg = incoming.session, incoming.msg
        run_id = None if msg is None else str(msg.get("id"))
        run = None if run_id is None else session.inflight.get(run_id)
        kept = len(self.results)
        try:
            if msg is None:
                flush_output(queue, self.hosts.agents, only_first=False)
                self._lost(queue, session, incoming.reason)
            else:
                self._on_message(queue, session, msg)
        except Exception as exc:  # one message's boundary
            if not is_storage(exc):
                log.warning(
                    "host %s: a %s message dropped: %s",
                    session.host,
                    "lost" if msg is None else msg.get("type"),
                    describe(exc),
                    exc_info=exc,
                )
                return
            del self.results[kept:]
            if run_id is not None and run is not None:
                session.inflight[run_id] = run
            self.messages.appendleft(incoming)
            raise

    def _on_message(self, queue: TaskQueue, session: AgentSession, msg: dict[str, object]) -> None:
        kind = msg["type"]
        run = session.inflight.get(str(msg.get("id")))
        if kind == "hello":
            session.hello = msg
            session.hello_at = time.monotonic()
            self.hosts.attached(session)
            self._reattached(queue, session, msg)
        elif kind == "detached":
            session.hello = None  # not ready until the agent says hello again
            self.hosts.detached(session, str(msg.get("reason")))
        elif kind == "protocol_error":
            log.warning("agent %s: %s", session.host, msg.get("message"))
            if msg.get("code") == "version_mismatch":
                session.shutdown(1.0)  # replaced by a fresh agent on the next step
        elif run is not None:
            self._on_run(queue, session, run, msg)

    def _on_run(
        self, queue: TaskQueue, session: AgentSession, run: Inflight, msg: dict[str, object]
    ) -> None:
        """An output or progress event, a result or an error of a run in flight."""
        kind = msg["type"]
        if kind == "event" and msg.get("kind") == "output":
            run.output.append(str(msg.get("data", "")))
        elif kind == "event" and msg.get("kind") == "progress":
            run.progress = msg.get("data")
        elif kind == "result":
            del session.inflight[str(msg["id"])]
            flush_one(queue, run)
            self.results.append((run.task_id, run.token, msg.get("result")))
            if run.kind in PULL_KINDS:
                pulls.pulled(queue.store, session.host, run.task_id, msg.get("result"))
                self.copies_changed = True
        elif kind == "error":
            del session.inflight[str(msg["id"])]
            flush_one(queue, run)
            self._failed(queue, run, msg, session.host)
            if run.kind in PULL_KINDS:
                pulls.pull_failed(queue.store, session.host, run.task_id, msg)
                self.copies_changed = True

    def _failed(self, queue: TaskQueue, run: Inflight, msg: dict[str, object], host: str) -> None:
        code = str(msg.get("code", "error"))
        message = str(msg.get("message", ""))
        try:
            if code == "canceled":
                queue.confirm_canceled(run.task_id, run.token)
            elif code == "no_room" and run.kind in MODEL_KINDS:  # busy models hold the room:
                why = f"released: no room on {host} yet ({message})"  # not the task's try
                queue.release([(run.task_id, run.token)], why, delay=NO_ROOM_RETRY_S)
            else:
                queue.fail(run.task_id, run.token, message, retryable=code in RETRYABLE, kind=code)
        except BitinglipError as exc:
            if isinstance(exc, StoreError):
                raise  # the report is handled again after the loop's backoff
            log.warning("task %s: report dropped: %s", run.task_id, exc)

    def _lost(self, queue: TaskQueue, session: AgentSession, reason: str) -> None:
        """The agent died: its runs go back to the queue at once, as infrastructure failures."""
        for run in list(session.inflight.values()):
            try:
                queue.fail(
                    run.task_id,
                    run.token,
                    f"agent lost: {reason}",
                    retryable=True,
                    kind="agent_lost",
                )
            except BitinglipError as exc:
                if isinstance(exc, StoreError):
                    raise  # handled again after the loop's backoff (these runs: stale then)
                log.warning("task %s: %s", run.task_id, exc)
        session.inflight.clear()
        self.hosts.lost(session, reason)

    def _reattached(
        self, queue: TaskQueue, session: AgentSession, hello: dict[str, object]
    ) -> None:
        """After a (re-)attach: runs it never acknowledged are sent again (they never reached
        it); acknowledged runs it no longer has are lost (its results, if any, came before this
        hello); runs it has that we do not know of are canceled."""
        runs = hello.get("runs")
        active = {str(r) for r in runs} if isinstance(runs, list) else set()
        session.acked([r for r in active if r in session.inflight])
        unread = [r for r, run in session.inflight.items() if not run.acked]
        session.resend(unread)
        for run_id in [r for r in session.inflight if r not in active and r not in unread]:
            run = session.inflight.pop(run_id)
            try:
                queue.fail(
                    run.task_id,
                    run.token,
                    "agent lost the run (it restarted while detached)",
                    retryable=True,
                    kind="agent_lost",
                )
            except BitinglipError as exc:
                log.warning("task %s: %s", run.task_id, exc)
        for run_id in active - set(session.inflight):
            session.cancel(run_id)
