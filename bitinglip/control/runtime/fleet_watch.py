"""The dispatcher's watch over its hosts: health, telemetry history and loaded models.

Every WATCH_EVERY_S the dispatcher's sessions are observed (one `hosts.HostObservation` per host,
judged by a `hosts.HealthTracker`), and in one go stored: each host's health, its latest telemetry
in the ring, and the registry's `loaded` flags from what each agent says it has loaded. The
verdicts are kept, so the dispatcher can give no new work to a host whose heartbeat went bad.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bitinglip.control.fleet import hosts
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.models import registry
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.errors import BitinglipError

if TYPE_CHECKING:
    from bitinglip.control.runtime.host_agents import HostAgent

log = logging.getLogger(__name__)

WATCH_EVERY_S = 1.0  # health and telemetry history are written this often (one commit each)


class FleetWatch:
    """Health and telemetry history of the dispatcher's hosts; `due_at` is its next turn."""

    def __init__(self) -> None:
        self.tracker = hosts.HealthTracker()
        self.ring = TelemetryRing()
        self.health: dict[str, hosts.HostHealth] = {}
        self.due_at = 0.0

    def heartbeat_ok(self, name: str) -> bool:
        """An attached agent whose heartbeat went bad (silent for seconds) gets no new work."""
        health = self.health.get(name)
        return health is None or health.signals["heartbeat"].state != hosts.BAD

    def step(self, queue: TaskQueue, agents: Sequence[HostAgent], now: float) -> None:
        """Observe and store every host when due (monotonic `now`)."""
        if now >= self.due_at:
            self.observe(queue, agents)
            self.due_at = now + WATCH_EVERY_S

    def observe(self, queue: TaskQueue, agents: Sequence[HostAgent]) -> None:
        now_wall, now = time.time(), time.monotonic()
        observed, samples = [], []
        for agent in agents:
            observed.append(self.tracker.observe(observation(agent, now), now_wall))
            session = agent.session
            if session is not None and session.telemetry is not None:
                samples.append((agent.host.name, session.telemetry))
        self.health = {h.host: h for h in observed}
        try:
            hosts.save(queue.store, observed)
            self.ring.record(queue.store, samples)
            mark_loaded(queue, samples)
        except BitinglipError as exc:
            log.warning("host state not saved: %s", exc)


def mark_loaded(queue: TaskQueue, samples: list[tuple[str, dict[str, Any]]]) -> None:
    """The registry's `loaded` flags from what each agent says it has loaded (telemetry)."""
    for host, snapshot in samples:
        loaded = snapshot.get("models_loaded")
        if not isinstance(loaded, list):
            continue
        rows = queue.store.conn.execute(
            "SELECT model_id, path, loaded FROM host_models WHERE host = ? AND state = 'ready'",
            (host,),
        ).fetchall()
        for model_id, path, was in rows:
            if bool(was) != (path in loaded):
                registry.set_loaded(queue.store, host, model_id, path in loaded)


def observation(agent: HostAgent, now: float) -> hosts.HostObservation:
    """What the dispatcher knows of one host now (monotonic `now`)."""
    session, host = agent.session, agent.host
    transport = None if session is None else session.transport
    error = getattr(transport, "last_error", "") or (session.close_reason if session else "")
    return hosts.HostObservation(
        host=host.name,
        connected=session is not None and session.ready,
        error=error or None,
        last_seen_age_s=None
        if session is None or session.hello_at is None
        else now - session.last_seen,
        hello=None if session is None else session.hello,
        telemetry=None if session is None else session.telemetry,
        received_at=None if session is None else session.telemetry_at,
        kind=host.kind,
        address=None if host.address is None else f"{host.address}:{host.port}",
    )
