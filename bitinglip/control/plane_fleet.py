"""The fleet's desk of the ControlPlane (`plane.fleet`): the hosts' stored health, their
telemetry, what is on one host, what is loaded on every host (`loaded`, from the agents'
telemetry), and the SSH work on a host (trust, setup, check, agent logs).

The SSH calls are coroutines that load asyncssh only when called; they need no database, so
they are plain functions here too (`host_key`, `setup_host`, `check_host`, `agent_log`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip.config import HostConfig, Profile
from bitinglip.control.fleet import hosts, telemetry_ring
from bitinglip.control.fleet import views as host_views
from bitinglip.control.fleet.telemetry_views import FleetReader, FleetTelemetry
from bitinglip.control.models import aliases, registry
from bitinglip.control.store.db import Store
from bitinglip.readable import age, human_size

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

    def loaded(self, now: float | None = None) -> LoadedReport:
        """Every model loaded on every host, from the agents' latest telemetry (each child's
        settings, requests, idle time, when it unloads, its memory), named as tasks name them;
        the replicas of models with `min_replicas`; hosts whose report is stale."""
        return read_loaded(
            self.profile,
            telemetry_ring.latest(self._store),
            registry.rows(self._store, self.profile),
            time.time() if now is None else now,
        )

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


# -- what is loaded where (`bitinglip ps`, the console's :ps) ---------------------------------

STALE_S = 10.0  # a host's report older than this is not shown as loaded (no controller running)


@dataclass(frozen=True)
class LoadedModel:
    """One model loaded in an inference child on a host, from its agent's telemetry (contract
    4's `loaded`), with the time since that report taken off `idle_s` and `unloads_in_s`.
    `gpus`: the GPU indices it uses ("0", "0,1"), "cpu", or "" when unknown."""

    host: str
    name: str
    path: str
    mode: str | None
    gpus: str
    gpu_memory_bytes: int | None
    rss_bytes: int | None
    running: int
    queued: int
    idle_s: float | None  # None while working
    keep_alive_s: float | None  # -1: forever
    unloads_in_s: float | None  # None: never, or working
    loaded_at: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int | None:
        """GPU memory when NVML says, else the child's RSS."""
        return self.gpu_memory_bytes if self.gpu_memory_bytes is not None else self.rss_bytes

    @property
    def idle_words(self) -> str:
        """`42s`, or `busy` while it has work."""
        return "busy" if self.idle_s is None else span(self.idle_s)

    @property
    def unload_words(self) -> str:
        """When it unloads: `never`, `in 4m`, `when idle` (working; `+5m` after that)."""
        keep = self.keep_alive_s
        if keep is not None and keep < 0:
            return "never"
        if self.unloads_in_s is not None:
            return f"in {span(self.unloads_in_s)}"
        if self.idle_s is None and keep is not None:
            return "when idle" if keep == 0 else f"idle +{span(keep)}"
        return "-"

    def cells(self) -> tuple[str, ...]:
        """Its row as `bitinglip ps` and the console's Loaded view show it (`LOADED_COLUMNS`)."""
        n_ctx = self.settings.get("n_ctx")
        return (
            self.host,
            self.name,
            self.gpus or "-",
            human_size(self.gpu_memory_bytes),
            human_size(self.rss_bytes),
            str(self.running),
            str(self.queued),
            self.idle_words,
            self.unload_words,
            "-" if n_ctx is None else str(n_ctx),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LOADED_COLUMNS = (
    "host",
    "model",
    "gpu",
    "gpu mem",
    "rss",
    "run",
    "queue",
    "idle",
    "unloads",
    "ctx",
)


@dataclass(frozen=True)
class Replicas:
    """A model with `min_replicas`: how many hosts should hold it loaded, and which do."""

    model: str
    desired: int
    ready: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "desired": self.desired, "ready": len(self.ready)} | {
            "hosts": list(self.ready)
        }


@dataclass(frozen=True)
class LoadedReport:
    """What `FleetDesk.loaded` read: the loaded models (by host, then name), the replicas of
    models with `min_replicas`, and the hosts whose last report is too old to show (their
    age in seconds)."""

    models: list[LoadedModel]
    replicas: list[Replicas]
    stale: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "loaded": [m.to_dict() for m in self.models],
            "replicas": [r.to_dict() for r in self.replicas],
            "stale_hosts": dict(self.stale),
        }


def read_loaded(
    profile: Profile,
    latest: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    now: float,
) -> LoadedReport:
    """The report from each host's latest snapshot and the registry's rows (for names)."""
    names = aliases.names_by_path(profile, rows)
    found: list[LoadedModel] = []
    stale: dict[str, float] = {}
    for host, snapshot in latest.items():
        at = snapshot.get("at")
        age = max(now - float(at), 0.0) if isinstance(at, int | float) else 0.0
        if age > STALE_S:
            stale[host] = age
            continue
        found += [_loaded(host, e, snapshot, names, age) for e in _entries(snapshot)]
    found.sort(key=lambda m: (m.host, m.name))
    replicas = []
    for name, alias in profile.models.items():
        desired = int(getattr(alias, "min_replicas", 0) or 0)
        if desired > 0:
            ready = tuple(sorted({m.host for m in found if m.name == name}))
            replicas.append(Replicas(name, desired, ready))
    return LoadedReport(found, replicas, stale)


def _entries(snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The snapshot's `loaded` entries; from an agent that sends only `models_loaded` (paths),
    one bare entry per path."""
    loaded = snapshot.get("loaded")
    if isinstance(loaded, list):
        return [e for e in loaded if isinstance(e, Mapping) and isinstance(e.get("path"), str)]
    paths = snapshot.get("models_loaded")
    return [{"path": p} for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def _loaded(
    host: str,
    entry: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    names: Mapping[str, str],
    age: float,
) -> LoadedModel:
    settings = entry.get("settings")
    settings = dict(settings) if isinstance(settings, Mapping) else {}
    idle, unloads = _number(entry.get("idle_s")), _number(entry.get("unloads_in_s"))
    return LoadedModel(
        host=host,
        name=aliases.name_of_path(names, str(entry["path"])),
        path=str(entry["path"]),
        mode=entry.get("mode") if isinstance(entry.get("mode"), str) else None,
        gpus=_gpus(entry, snapshot, settings),
        gpu_memory_bytes=_count(entry.get("gpu_memory_bytes")),
        rss_bytes=_count(entry.get("rss_bytes")),
        running=_count(entry.get("running")) or 0,
        queued=_count(entry.get("queued")) or 0,
        idle_s=None if idle is None else idle + age,
        keep_alive_s=_number(entry.get("keep_alive_s")),
        unloads_in_s=None if unloads is None else max(unloads - age, 0.0),
        loaded_at=_number(entry.get("loaded_at")),
        settings=settings,
    )


def _gpus(entry: Mapping[str, Any], snapshot: Mapping[str, Any], settings: dict[str, Any]) -> str:
    """The GPUs a model uses: as the agent says (`gpus`, or its child's `pid` among the GPUs'
    processes), else from its settings (llama.cpp splits layers over every GPU unless
    `split_mode` is "none", which uses `main_gpu`); "cpu" with no GPU or no layers on one."""
    given = entry.get("gpus")
    if isinstance(given, list):
        return ",".join(str(g) for g in given) or "cpu"
    gpus = snapshot.get("gpus")
    gpus = [g for g in gpus if isinstance(g, Mapping)] if isinstance(gpus, list) else []
    indices = [g.get("index", i) for i, g in enumerate(gpus)]
    pid = entry.get("pid")
    if pid is not None:
        using = [
            str(i)
            for i, g in zip(indices, gpus, strict=True)
            if any(isinstance(p, Mapping) and p.get("pid") == pid for p in g.get("processes") or [])
        ]
        if using:
            return ",".join(using)
    if not gpus or settings.get("gpu_layers") == 0:
        return "cpu"
    if settings.get("split_mode") == "none":
        return str(settings.get("main_gpu", indices[0]))
    split = settings.get("tensor_split")
    if isinstance(split, list) and split:
        return ",".join(str(i) for i, share in zip(indices, split, strict=False) if share)
    return ",".join(str(i) for i in indices)


def span(seconds: float) -> str:
    """`42s`, `4m05s` under an hour (a keep-alive counts down by the second), then `2h`, `3d`."""
    whole = int(max(seconds, 0.0))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return age(whole)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
