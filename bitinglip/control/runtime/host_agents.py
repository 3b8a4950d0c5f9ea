"""The dispatcher's hosts: one `HostAgent` per host of the profile, with its agent's session and
when it may be started or filled again.

A host that fails (its agent does not start, filling it raises, its agent is lost) waits a
backoff of its own, doubling from 0.5 s to 30 s, while the others go on; it says each reason
once, and that its agent attached again after one. Hosts are visited in turn from a rotating
start (`in_turn`), so work spreads. Every time an agent attaches (its `hello`) it is sent the
host's limits (`configure` with `limits`: `max_loaded_models`, `memory_budget_bytes`), which it
keeps while it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitinglip_agent import protocol

from bitinglip.agent_bundle import Bundle
from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases as models
from bitinglip.control.runtime.faults import describe
from bitinglip.control.transport.local import LocalTransport
from bitinglip.control.transport.sessions import AgentSession, Incoming, Transport
from bitinglip.errors import BitinglipError

# The dispatcher's messages have one logger, whichever of its modules says them.
log = logging.getLogger("bitinglip.control.runtime.dispatcher")

RESTART_BACKOFF_S = (0.5, 30.0)


@dataclass
class HostAgent:
    host: HostConfig
    session: AgentSession | None = None
    restart_at: float = 0.0
    backoff: float = 0.0
    said: str = ""  # the last detach reason logged (a host failing the same way says it once)
    fill_at: float = 0.0  # after filling it failed: not before this

    def back_off(self) -> float:
        """The wait before this host is tried again: twice the last, within RESTART_BACKOFF_S."""
        self.backoff = min(max(self.backoff * 2, RESTART_BACKOFF_S[0]), RESTART_BACKOFF_S[1])
        return self.backoff


class HostAgents:
    """Every host of the profile and its agent, as the control loop's thread sees them."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.agents = [HostAgent(h) for h in profile.hosts]
        self._turn = 0
        self._bundle: Bundle | None = None

    @property
    def inflight(self) -> int:
        return sum(len(a.session.inflight) for a in self.agents if a.session is not None)

    def in_turn(self) -> list[HostAgent]:
        """Every host, starting one further on each call."""
        self._turn = (self._turn + 1) % max(len(self.agents), 1)
        return self.agents[self._turn :] + self.agents[: self._turn]

    def of(self, session: AgentSession) -> HostAgent:
        return next(a for a in self.agents if a.session is session or a.host.name == session.host)

    # -- starting and stopping -------------------------------------------------------------

    def start(self, agent: HostAgent, receive: Callable[[Incoming], None]) -> None:
        """Start the host's agent; what it says goes to `receive` (from the session's threads)."""
        session = AgentSession(agent.host.name, self._transport(agent.host), receive)
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

    def stop(self) -> None:
        """Stop every agent, storing nothing (what runs there is left to lease expiry)."""
        for agent in self.agents:
            if agent.session is not None:
                agent.session.shutdown()
                agent.session = None

    # -- what happened to a host -----------------------------------------------------------

    def failed(self, agent: HostAgent, exc: Exception) -> None:
        """Starting or filling one host failed: it waits (backing off), the others go on."""
        agent.restart_at = agent.fill_at = time.monotonic() + agent.back_off()
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

    def attached(self, session: AgentSession) -> None:
        """The host's agent said hello: its backoff starts over, and it is sent its limits."""
        agent = self.of(session)
        session.transport.send(protocol.encode("configure", "limits", limits=limits(agent.host)))
        if agent.said:
            log.warning("host %s: agent attached again", session.host)
        agent.backoff, agent.said = 0.0, ""

    def detached(self, session: AgentSession, reason: str) -> None:
        """The host's connection dropped (its agent goes on, and attaches again)."""
        agent = self.of(session)
        if reason != agent.said:
            log.warning("host %s: %s", session.host, reason)
            agent.said = reason

    def lost(self, session: AgentSession, reason: str) -> None:
        """The host's agent died: a new one starts after the host's backoff."""
        agent = self.of(session)
        if agent.session is not session:
            return
        agent.session = None
        agent.restart_at = time.monotonic() + agent.back_off()
        log.warning("agent %s lost (%s); restarting in %.1fs", session.host, reason, agent.backoff)


def limits(host: HostConfig) -> dict[str, int | None]:
    """The `limits` of a `configure` message: what the host's agent may keep loaded."""
    budget = host.memory_budget_gib
    return {
        "max_loaded_models": host.max_loaded_models,
        "memory_budget_bytes": None if budget is None else int(budget * (1 << 30)),
    }
