"""The fleet's desk of the ControlPlane (`plane.fleet`): the hosts' stored health, their
telemetry, what is on one host, and the SSH work on a host (trust, setup, check, agent logs).

The SSH calls are coroutines that load asyncssh only when called; they need no database, so
they are plain functions here too (`host_key`, `setup_host`, `check_host`, `agent_log`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip.config import HostConfig, Profile
from bitinglip.control.fleet import hosts, telemetry_ring
from bitinglip.control.fleet import views as host_views
from bitinglip.control.fleet.telemetry_views import FleetReader, FleetTelemetry
from bitinglip.control.store.db import Store

if TYPE_CHECKING:
    from bitinglip.control.fleet.checks import CheckReport, HostKey
    from bitinglip.control.transport.bootstrap import SetupReport
    from bitinglip.errors import SshError


class FleetDesk:
    """What front ends read about hosts; every call reads the plane's store."""

    def __init__(self, profile: Profile, store: Store) -> None:
        self.profile = profile
        self._store = store

    def hosts(self) -> dict[str, dict[str, Any]]:
        """The stored health of every host seen: name -> row (signals, warnings, facts)."""
        return {row["name"]: row for row in hosts.load_hosts(self._store)}

    def latest(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """The newest telemetry snapshot of each host (newer than `since`)."""
        return telemetry_ring.latest(self._store, since=since)

    def telemetry(self, reader: FleetReader, names: Iterable[str]) -> FleetTelemetry:
        """Latest snapshots and sparkline history of `names`, read incrementally by `reader`
        (one per view; use it from one thread)."""
        return reader.read(self._store, names)

    def snapshot(self, name: str) -> dict[str, Any] | None:
        return host_views.latest_snapshot(self._store, name)

    def models_on(self, name: str) -> list[host_views.HostModel]:
        return host_views.models_on(self._store, name, self.profile)

    def recent_tasks(self, name: str) -> list[host_views.HostTask]:
        return host_views.recent_tasks(self._store, name)

    def stored_check(self, name: str) -> dict[str, Any] | None:
        """The controller's stored view of a host (for `hosts check`), or None if never seen."""
        from bitinglip.control.fleet import checks  # asyncssh: only for the SSH commands

        return checks.stored_state(self._store, name)


async def host_key(host: HostConfig) -> HostKey:
    """The key the host offers and whether it is trusted, unknown or changed."""
    from bitinglip.control.fleet import checks

    return await checks.host_key(host)


def changed_key_error(host: HostConfig, key: HostKey) -> SshError:
    from bitinglip.control.fleet import checks

    return checks.changed_key_error(host, key)


def record_host_key(key: HostKey) -> Path:
    """Trust the key: write it to BitingLip's known_hosts; the file written."""
    from bitinglip.control.fleet import checks

    return checks.record(key)


async def setup_host(
    profile: Profile,
    host: HostConfig,
    *,
    runtime: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> SetupReport:
    """Put this version's agent (and with `runtime` llama-cpp-python) on an SSH host."""
    from bitinglip.control.fleet import checks

    return await checks.setup(profile, host, runtime=runtime, on_output=on_output)


async def check_host(profile: Profile, host: HostConfig) -> CheckReport:
    """Connect, probe and run the agent once on an SSH host; each health signal."""
    from bitinglip.control.fleet import checks

    return await checks.check(profile, host)


async def agent_log(profile: Profile, name: str, lines: int | None = None) -> list[str]:
    """The last lines of the agent's log on a host."""
    from bitinglip.control.fleet import logs

    if lines is None:
        return await logs.tail(profile, name)
    return await logs.tail(profile, name, lines)
