"""Dispatch: tasks from the queue to connected agents, and their reports back into the queue.

Runs inside the controller loop's thread, the one that owns the database connection. Agents'
messages arrive through an inbox that rings the loop's doorbell. Per step:

- handle what agents said: output chunks are buffered and stored in batches (a task's first chunk
  at once, for time to first token), results completed in one transaction, errors failed
  (retryable ones are retried by the queue), a lost agent's runs requeued at once;
- claim work for every ready agent up to its free slots (echo is light: many at a time; model
  kinds up to the host's max_concurrency) and send it;
- keep leases alive while an agent reports; forward cancel requests; restart dead agents.
- watch the hosts: health, telemetry history, loaded models (`fleet_watch.FleetWatch`).

Placement: every host with an attached agent takes tasks up to its free slots, hosts in turn
(a rotating start, so work spreads), honouring a task's host and labels; an SSH host takes a
model task only when the model's file is in its model dir (its `hello` lists them). An SSH host
whose connection drops keeps its runs: the agent goes on working, and on re-attach its `hello`
says which runs it still has; runs it never acknowledged are sent again (same lease, same
attempt), the other runs it lost (and only they) go back to the queue.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import LIGHT_KINDS, PULL_KINDS, RETRYABLE

from bitinglip.agent_bundle import Bundle
from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases as models
from bitinglip.control.models import pulls, registry
from bitinglip.control.queue.tasks import Claim, TaskQueue
from bitinglip.control.runtime.faults import describe, is_storage
from bitinglip.control.runtime.fleet_watch import FleetWatch
from bitinglip.control.transport.local import LocalTransport
from bitinglip.control.transport.sessions import AgentSession, Incoming, Inflight, Transport
from bitinglip.errors import BitinglipError, StoreError

log = logging.getLogger(__name__)

LIGHT_SLOTS = 256
PULL_SLOTS = 2  # downloads at once per host, beside its inference slots
OUTPUT_FLUSH_S = 0.05
RESTART_BACKOFF_S = (0.5, 30.0)
SILENT_AFTER_S = 10.0  # an agent quiet this long (telemetry is 1 Hz) no longer keeps leases


@dataclass
class HostAgent:
    host: HostConfig
    session: AgentSession | None = None
    restart_at: float = 0.0
    backoff: float = 0.0
    said: str = ""  # the last detach reason logged (a host failing the same way says it once)
    fill_at: float = 0.0  # after filling it failed: not before this


class Dispatcher:
    def __init__(self, profile: Profile, owner: str, wake: Callable[[], None]) -> None:
        self.profile = profile
        self.owner = owner
        self.wake = wake
        self.agents = [HostAgent(h) for h in profile.hosts]
        self._inbox: collections.deque[Incoming] = collections.deque()
        self._results: list[tuple[int, int, object]] = []  # received, kept until stored
        self._beat_at = 0.0
        self._flush_at = 0.0
        self._turn = 0
        self._bundle: Bundle | None = None
        self.accepting = True
        self.silent_after_s = min(SILENT_AFTER_S, profile.queue.lease_ttl_s)
        self.watch = FleetWatch()  # health, telemetry history, loaded models

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self, agent: HostAgent) -> None:
        session = AgentSession(agent.host.name, self._transport(agent.host), self._receive)
        session.start()
        agent.session = session

    def _transport(self, host: HostConfig) -> Transport:
        if host.kind == "ssh":
            from bitinglip.control.transport import bootstrap  # asyncssh: only when a host needs it
            from bitinglip.control.transport.remote import RemoteTransport

            if self._bundle is None:
                self._bundle = bootstrap.local_bundle(self.profile)
            return RemoteTransport(self.profile, host, self._bundle)
        model_dir = host.model_dir or models.models_dir(self.profile)
        return LocalTransport(host.name, ["--host-name", host.name, "--model-dir", str(model_dir)])

    def _receive(self, incoming: Incoming) -> None:
        self._inbox.append(incoming)  # deque.append is thread-safe
        if len(self._inbox) == 1:  # else the loop is draining and will see this one too
            self.wake()

    @property
    def inflight(self) -> int:
        return sum(len(a.session.inflight) for a in self.agents if a.session is not None)

    def release_all(self, queue: TaskQueue, reason: str) -> int:
        """Give every in-flight task back to the queue (no attempt penalty), stop agents."""
        items = []
        for agent in self.agents:
            if agent.session is not None:
                items += [(f.task_id, f.token) for f in agent.session.inflight.values()]
                agent.session.inflight.clear()
        try:
            released = queue.release(items, reason) if items else 0
            self.watch.observe(queue, self.agents)  # what a short-lived controller saw is kept
        finally:  # the agents stop even when the database refuses (their leases then expire)
            self.stop_agents()
        self.watch.observe(queue, self.agents)  # ... and that it no longer holds a connection
        return released

    def stop_agents(self) -> None:
        """Stop every agent, storing nothing (what runs there is left to lease expiry)."""
        for agent in self.agents:
            if agent.session is not None:
                agent.session.shutdown()
                agent.session = None

    # -- one step of the loop --------------------------------------------------------------

    def step(self, queue: TaskQueue) -> bool:
        """Do what is due; True when something happened (the loop then goes round again)."""
        now = time.monotonic()
        busy = self._handle_inbox(queue)
        self._turn = (self._turn + 1) % max(len(self.agents), 1)
        for agent in self.agents[self._turn :] + self.agents[: self._turn]:
            try:
                busy |= self._tend(queue, agent, now)
            except Exception as exc:  # one host's boundary: the others go on
                if is_storage(exc):
                    raise  # every host's: the loop backs off
                self._host_failed(agent, exc)
        if now >= self._flush_at:
            self._flush_output(queue, only_first=False)
            self._flush_at = now + OUTPUT_FLUSH_S
        if now >= self._beat_at:
            self._heartbeat(queue)
            self._beat_at = now + self.profile.queue.lease_ttl_s / 4
        self.watch.step(queue, self.agents, now)
        return busy

    def next_wake(self) -> float:
        """Seconds until a timer of this dispatcher is due."""
        now = time.monotonic()
        due = [self._beat_at, self.watch.due_at]
        if self.inflight:
            due.append(self._flush_at)
        due += [a.restart_at for a in self.agents if a.session is None]
        due += [a.fill_at for a in self.agents if a.fill_at > now]
        return max(min(due) - now, 0.0)

    def _tend(self, queue: TaskQueue, agent: HostAgent, now: float) -> bool:
        """Start the host's agent when due, or give it work; True when work was sent."""
        if not self.accepting:
            return False
        if agent.session is None:
            if now >= agent.restart_at:
                self._start(agent)
            return False
        if not (
            agent.session.ready
            and now >= agent.fill_at
            and self.watch.heartbeat_ok(agent.host.name)
        ):
            return False
        busy = self._fill(queue, agent)
        agent.fill_at = 0.0
        return busy

    def _host_failed(self, agent: HostAgent, exc: Exception) -> None:
        """Starting or filling one host failed: it waits (backing off), the others go on."""
        agent.backoff = min(max(agent.backoff * 2, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
        agent.restart_at = agent.fill_at = time.monotonic() + agent.backoff
        reason = describe(exc)
        if reason != agent.said:
            agent.said = reason
            log.warning(
                "host %s: %s; trying again in %.1fs",
                agent.host.name,
                reason,
                agent.backoff,
                exc_info=None if isinstance(exc, BitinglipError) else exc,
            )

    def _fill(self, queue: TaskQueue, agent: HostAgent) -> bool:
        session, host = agent.session, agent.host
        assert session is not None and session.hello is not None
        kinds = session.kinds()
        light = [k for k in kinds if k in LIGHT_KINDS]
        pulls = [k for k in kinds if k in PULL_KINDS]
        heavy = [k for k in kinds if k not in LIGHT_KINDS + PULL_KINDS]
        copies = self._copies(queue, host)
        have = set(copies)  # models pulled there (the registry), by alias
        if host.kind == "local":  # this machine assembles PyPI-packaged aliases on first use
            have |= {a for a, m in self.profile.models.items() if m.source.startswith("pypi:")}
        else:  # and an SSH host has the files in its model dir named ALIAS.gguf
            have |= set(session.hello.get("models", []))
        in_light = sum(1 for f in session.inflight.values() if f.kind in LIGHT_KINDS)
        in_pull = sum(1 for f in session.inflight.values() if f.kind in PULL_KINDS)
        in_heavy = len(session.inflight) - in_light - in_pull
        runs: list[tuple[int, int, str, dict[str, Any]]] = []
        for group, free in (
            (light, LIGHT_SLOTS - in_light),
            (pulls, PULL_SLOTS - in_pull),
            (heavy, host.max_concurrency - in_heavy),
        ):
            if not group or free <= 0:
                continue
            claims = queue.claim(
                self.owner,
                limit=free,
                kinds=group,
                host=host.name,
                labels=dict(host.labels),
                models=have,
                any_path=host.kind == "local",
            )
            for claim in claims:
                task = self._task(queue, claim, agent, copies)
                if task is not None:
                    runs.append((claim.task_id, claim.token, claim.kind, task))
        if not runs:
            return False
        try:
            session.run(runs)
        except ConnectionError as exc:  # it never reached the agent: no attempt is spent
            queue.release([(task_id, token) for task_id, token, _, _ in runs], str(exc))
        return True

    def _copies(self, queue: TaskQueue, host: HostConfig) -> dict[str, tuple[int, str]]:
        """Aliases of the profile with a ready copy on `host`: alias -> (model id, path)."""
        rows = queue.store.conn.execute(
            'SELECT m.id, m.repo, m."commit", m.file, h.path FROM host_models h'
            " JOIN models m ON m.id = h.model_id WHERE h.host = ? AND h.state = 'ready'",
            (host.name,),
        ).fetchall()
        found: dict[str, tuple[int, str]] = {}
        for model_id, repo, commit, file, path in rows:
            alias = registry.alias_of(self.profile, repo, commit, file)
            if alias is not None and alias not in found:
                found[alias] = (model_id, path)
        return found

    def _task(
        self,
        queue: TaskQueue,
        claim: Claim,
        agent: HostAgent,
        copies: dict[str, tuple[int, str]],
    ) -> dict[str, Any] | None:
        """The `run` message's task, or None when its model cannot be had (task failed)."""
        task: dict[str, Any] = {"id": claim.task_id, "kind": claim.kind, "payload": claim.payload}
        hello = agent.session.hello if agent.session is not None else None
        if claim.model is not None and claim.model in copies:
            model_id, path = copies[claim.model]
            task["model"] = {"name": claim.model, "path": path}
            registry.touch(queue.store, agent.host.name, model_id, time.time())
        elif claim.model is not None and agent.host.kind == "ssh" and hello is not None:
            path = f"{hello.get('model_dir')}/{claim.model}.gguf"
            task["model"] = {"name": claim.model, "path": path}
        elif claim.model is not None:
            try:
                task["model"] = models.ensure_local(self.profile, claim.model).to_task()
            except BitinglipError as exc:
                queue.fail(
                    claim.task_id, claim.token, str(exc), retryable=False, kind="unknown_model"
                )
                return None
        return task

    # -- what agents said ------------------------------------------------------------------

    def _handle_inbox(self, queue: TaskQueue) -> bool:
        """Handle what agents said; results are kept until stored (a failed commit leaves them
        for the next step, after the loop's backoff)."""
        if not self._inbox and not self._results:
            return False
        while self._inbox:
            self._handle(queue, self._inbox.popleft())
        if self._results:
            self._flush_output(queue, only_first=False)
            stale = queue.complete_many(self._results)
            self._results.clear()
            for task_id in stale:
                log.warning("task %s: result from an expired lease dropped", task_id)
        else:
            self._flush_output(queue, only_first=True)
        return True

    def _handle(self, queue: TaskQueue, incoming: Incoming) -> None:
        """One message. When the database fails, it goes back to the head of the inbox as if
        never handled (its run back in flight); one that breaks otherwise is its host's fault:
        logged and dropped (its run, if any, is retried when its lease expires)."""
        session, msg = incoming.session, incoming.msg
        run_id = None if msg is None else str(msg.get("id"))
        run = None if run_id is None else session.inflight.get(run_id)
        kept = len(self._results)
        try:
            if msg is None:
                self._flush_output(queue, only_first=False)
                self._lost(queue, session, incoming.reason)
            else:
                self._on_message(queue, session, msg, self._results)
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
            del self._results[kept:]
            if run_id is not None and run is not None:
                session.inflight[run_id] = run
            self._inbox.appendleft(incoming)
            raise

    def _on_message(
        self,
        queue: TaskQueue,
        session: AgentSession,
        msg: dict[str, object],
        results: list[tuple[int, int, object]],
    ) -> None:
        kind = msg["type"]
        run = session.inflight.get(str(msg.get("id")))
        if kind == "hello":
            session.hello = msg
            session.hello_at = time.monotonic()
            agent = self._agent_of(session)
            if agent.said:
                log.warning("host %s: agent attached again", session.host)
            agent.backoff, agent.said = 0.0, ""
            self._reattached(queue, session, msg)
        elif kind == "detached":
            session.hello = None  # not ready until the agent says hello again
            agent, reason = self._agent_of(session), str(msg.get("reason"))
            if reason != agent.said:
                log.warning("host %s: %s", session.host, reason)
                agent.said = reason
        elif kind == "event" and run is not None and msg.get("kind") == "output":
            run.output.append(str(msg.get("data", "")))
        elif kind == "event" and run is not None and msg.get("kind") == "progress":
            run.progress = msg.get("data")
        elif kind == "result" and run is not None:
            del session.inflight[str(msg["id"])]
            self._flush_one(queue, run)
            results.append((run.task_id, run.token, msg.get("result")))
            if run.kind in PULL_KINDS:
                pulls.pulled(queue.store, session.host, run.task_id, msg.get("result"))
        elif kind == "error" and run is not None:
            del session.inflight[str(msg["id"])]
            self._flush_one(queue, run)
            self._failed(queue, run, msg)
            if run.kind in PULL_KINDS:
                pulls.pull_failed(queue.store, session.host, run.task_id, msg)
        elif kind == "protocol_error":
            log.warning("agent %s: %s", session.host, msg.get("message"))
            if msg.get("code") == "version_mismatch":
                session.shutdown(1.0)  # replaced by a fresh agent on the next step

    def _failed(self, queue: TaskQueue, run: Inflight, msg: dict[str, object]) -> None:
        code = str(msg.get("code", "error"))
        message = str(msg.get("message", ""))
        try:
            if code == "canceled":
                queue.confirm_canceled(run.task_id, run.token)
            else:
                queue.fail(run.task_id, run.token, message, retryable=code in RETRYABLE, kind=code)
        except BitinglipError as exc:
            if isinstance(exc, StoreError):
                raise  # the report is handled again after the loop's backoff
            log.warning("task %s: report dropped: %s", run.task_id, exc)

    def _lost(self, queue: TaskQueue, session: AgentSession, reason: str) -> None:
        """The agent died: its runs go back to the queue at once, as infrastructure failures."""
        agent = self._agent_of(session)
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
        if agent.session is session:
            agent.session = None
            agent.backoff = min(max(agent.backoff * 2, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
            agent.restart_at = time.monotonic() + agent.backoff
            log.warning(
                "agent %s lost (%s); restarting in %.1fs", session.host, reason, agent.backoff
            )

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

    def _agent_of(self, session: AgentSession) -> HostAgent:
        return next(a for a in self.agents if a.session is session or a.host.name == session.host)

    # -- output and leases -----------------------------------------------------------------

    def _flush_output(self, queue: TaskQueue, *, only_first: bool) -> None:
        progress = []
        for agent in self.agents:
            if agent.session is None:
                continue
            for run in agent.session.inflight.values():
                if run.output and (not only_first or not run.first_output_flushed):
                    self._flush_one(queue, run)
                if run.progress is not None and not only_first:
                    progress.append((run.task_id, run.token, run.progress))
                    run.progress = None
        try:
            queue.set_progress(progress)
        except BitinglipError as exc:
            log.warning("progress not stored: %s", exc)

    def _flush_one(self, queue: TaskQueue, run: Inflight) -> None:
        if not run.output:
            return
        data = "".join(run.output)
        run.output.clear()
        try:
            queue.append_output(run.task_id, run.token, data)
        except (StoreError, sqlite3.Error):
            run.output[:0] = [data]  # kept: stored by the flush after the loop's backoff
            raise
        except BitinglipError as exc:
            log.warning("task %s: output dropped: %s", run.task_id, exc)
        run.first_output_flushed = True

    def _heartbeat(self, queue: TaskQueue) -> None:
        for agent in self.agents:
            session = agent.session
            if session is None or not session.inflight:
                continue
            if time.monotonic() - session.last_seen > self.silent_after_s:
                continue  # a silent agent does not keep its leases: they will expire
            by_task = {f.task_id: (run_id, f) for run_id, f in session.inflight.items()}
            beat = queue.heartbeat(self.owner, {t: f.token for t, (_, f) in by_task.items()})
            for task_id in beat.cancel | beat.lost:
                session.cancel(by_task[task_id][0])
            for task_id in beat.lost:
                session.inflight.pop(by_task[task_id][0], None)
