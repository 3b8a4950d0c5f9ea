"""Dispatch: tasks from the queue to connected agents, and their reports back into the queue.

Runs inside the controller loop's thread, the one that owns the database connection. Per step:

- handle what agents said (`inbox.Inbox`): output buffered and stored in batches, results
  completed in one transaction, errors failed, a lost agent's runs requeued at once;
- place the queued model work: which host takes each model this step (`placement.Placement`:
  where it is loaded, else has a copy and room, else pulled to where it fits), and say why
  what cannot run waits;
- start every host's agent when due, and fill every ready one up to its free slots
  (`filling.Filler`), hosts in turn (`host_agents.HostAgents`: a rotating start, so work
  spreads); a host that fails backs off on its own while the others go on;
- store buffered output, keep leases alive while an agent reports, forward cancel requests
  (`inflight`);
- watch the hosts: health, telemetry history, loaded models (`fleet_watch.FleetWatch`).

An SSH host whose connection drops keeps its runs: the agent goes on working, and on re-attach
its `hello` says which runs it still has (see `inbox`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bitinglip.config import Profile
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.faults import is_storage
from bitinglip.control.runtime.filling import Filler
from bitinglip.control.runtime.fleet_watch import FleetWatch
from bitinglip.control.runtime.host_agents import HostAgent, HostAgents
from bitinglip.control.runtime.inbox import Inbox
from bitinglip.control.runtime.inflight import flush_output, heartbeat
from bitinglip.control.runtime.placement import HostPlan, Placement

OUTPUT_FLUSH_S = 0.05
SILENT_AFTER_S = 10.0  # an agent quiet this long (telemetry is 1 Hz) no longer keeps leases


class Dispatcher:
    """The control loop's dispatch: its hosts, what their agents say, the work they get."""

    def __init__(self, profile: Profile, owner: str, wake: Callable[[], None]) -> None:
        self.profile = profile
        self.owner = owner
        self.hosts = HostAgents(profile)
        self.inbox = Inbox(self.hosts, wake)  # what agents said, until handled and stored
        self.placement = Placement(profile)
        self.filler = Filler(profile, owner, self.placement)
        self.watch = FleetWatch()  # health, telemetry history, loaded models
        self.accepting = True
        self.silent_after_s = min(SILENT_AFTER_S, profile.queue.lease_ttl_s)
        self._beat_at = 0.0
        self._flush_at = 0.0

    @property
    def agents(self) -> list[HostAgent]:
        return self.hosts.agents

    @property
    def inflight(self) -> int:
        return self.hosts.inflight

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
        self.hosts.stop()

    # -- one step of the loop --------------------------------------------------------------

    def step(self, queue: TaskQueue) -> bool:
        """Do what is due; True when something happened (the loop then goes round again)."""
        now = time.monotonic()
        busy = self.inbox.handle(queue)
        plans: dict[str, HostPlan] = {}
        if self.inbox.copies_changed:
            self.placement.copies_changed()
            self.inbox.copies_changed = False
        if self.accepting:
            plans = self.placement.plan(queue, self.agents, self.watch.heartbeat_ok, now)
        for agent in self.hosts.in_turn():
            try:
                busy |= self._tend(queue, agent, now, plans.get(agent.host.name))
            except Exception as exc:  # one host's boundary: the others go on
                if is_storage(exc):
                    raise  # every host's: the loop backs off
                self.hosts.failed(agent, exc)
        if self.accepting:
            self.placement.write_reasons(queue)
        if now >= self._flush_at:
            flush_output(queue, self.agents, only_first=False)
            self._flush_at = now + OUTPUT_FLUSH_S
        if now >= self._beat_at:
            heartbeat(queue, self.agents, self.owner, self.silent_after_s)
            self._beat_at = now + self.profile.queue.lease_ttl_s / 4
        self.watch.step(queue, self.agents, now)
        return busy

    def next_wake(self) -> float:
        """Seconds until a timer of this dispatcher is due."""
        now = time.monotonic()
        due = [self._beat_at, self.watch.due_at, self.placement.due_at]
        if self.inflight:
            due.append(self._flush_at)
        due += [a.restart_at for a in self.agents if a.session is None]
        due += [a.fill_at for a in self.agents if a.fill_at > now]
        return max(min(due) - now, 0.0)

    def _tend(self, queue: TaskQueue, agent: HostAgent, now: float, plan: HostPlan | None) -> bool:
        """Start the host's agent when due, or give it work; True when work was sent."""
        if not self.accepting:
            return False
        if agent.session is None:
            if now >= agent.restart_at:
                self.hosts.start(agent, self.inbox.receive)
            return False
        if not (
            plan is not None
            and agent.session.ready
            and now >= agent.fill_at
            and self.watch.heartbeat_ok(agent.host.name)
        ):
            return False
        busy = self.filler.fill(queue, agent, plan)
        agent.fill_at = 0.0
        return busy
