"""What the Hosts and GPUs views show, as plain values: a `HostRow` per host of the profile (its
health signals, the one-line why, CPU/RAM, its GPUs) built from the hosts table and the
telemetry, on the backend thread. Rows compare by value, so the list repaints only the hosts
whose numbers changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bitinglip.config import HostConfig
from bitinglip.control import HOST_ROW, SIGNALS, FleetTelemetry, History
from bitinglip.readable import age

NOT_SEEN = "no controller has seen it yet"
STALE_AFTER_S = 10.0  # a health row older than this was left by a controller that stopped
VERDICT_SIGNALS = ("ssh", "heartbeat")  # the scheduler's verdict: healthy when both are ok


@dataclass(frozen=True)
class GpuRow:
    host: str
    index: int
    name: str
    util: float | None
    mem_used: int | None
    mem_total: int | None
    temp: float | None
    power: float | None
    power_limit: float | None
    history: History
    processes: tuple[tuple[int, int | None], ...] = ()  # (pid, GPU memory bytes)

    @property
    def key(self) -> str:
        return f"{self.host}/{self.index}"


@dataclass(frozen=True)
class HostRow:
    name: str
    kind: str
    address: str
    verdict: str  # "healthy", "unhealthy" or "not seen"
    signals: tuple[tuple[str, str], ...]  # (signal, ok/bad/unknown) in SIGNALS order
    why: str | None  # the one line: why it is not healthy (or its first bad signal)
    why_bad: bool  # the why makes it unhealthy (else it is a warning)
    seen: str  # "3s ago", "-"
    cpu: float | None
    load: float | None
    ram_used: int | None
    ram_total: int | None
    disk_free: int | None
    cpu_history: History
    gpus: tuple[GpuRow, ...]
    stale: bool = False  # the health row is older than STALE_AFTER_S (no controller running)

    @property
    def lines(self) -> int:
        return 2 + (self.why is not None) + len(self.gpus)


def host_rows(
    hosts: Sequence[HostConfig],
    stored: Mapping[str, Mapping[str, Any]],
    telemetry: FleetTelemetry,
    now: float,
) -> list[HostRow]:
    """One row per host of the profile, in the profile's order."""
    return [
        host_row(h, stored.get(h.name), telemetry.latest.get(h.name), telemetry.history, now)
        for h in hosts
    ]


def host_row(
    host: HostConfig,
    state: Mapping[str, Any] | None,
    snapshot: Mapping[str, Any] | None,
    history: Mapping[tuple[str, int], History],
    now: float,
) -> HostRow:
    snap = snapshot or {}
    why, why_bad = one_line_why(state)
    last_seen = None if state is None else state.get("last_seen")
    return HostRow(
        name=host.name,
        kind=host.kind,
        address="this machine" if host.address is None else f"{host.address}:{host.port}",
        verdict=verdict(state),
        signals=signal_states(state),
        why=why,
        why_bad=why_bad,
        seen="-" if last_seen is None else f"{age(now - last_seen)} ago",
        cpu=number(snap.get("cpu_percent")),
        load=_first(snap.get("load")),
        ram_used=_int(snap.get("ram_used_bytes")),
        ram_total=_int(snap.get("ram_total_bytes")),
        disk_free=_int(snap.get("disk_free_bytes")),
        cpu_history=history.get((host.name, HOST_ROW), ()),
        gpus=gpu_rows(host.name, snap, history),
        stale=state is not None and now - float(state["updated_at"]) > STALE_AFTER_S,
    )


def verdict(state: Mapping[str, Any] | None) -> str:
    if state is None:
        return "not seen"
    return "healthy" if state["healthy"] else "unhealthy"


def signal_states(state: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    health = {} if state is None else state.get("health") or {}
    return tuple((name, str((health.get(name) or {}).get("state", "unknown"))) for name in SIGNALS)


def one_line_why(state: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """Why the host is not healthy (the first of ssh, heartbeat that is not ok, bad first);
    for a healthy host its first bad signal as a warning; None when there is nothing to say."""
    if state is None:
        return NOT_SEEN, False
    health: Mapping[str, Mapping[str, Any]] = state.get("health") or {}
    if not state["healthy"]:
        for wanted in ("bad", "unknown"):
            for name in VERDICT_SIGNALS:
                signal = health.get(name) or {}
                if signal.get("state") == wanted:
                    return f"{name}: {signal.get('why')}", True
    for name in SIGNALS:
        signal = health.get(name) or {}
        if signal.get("state") == "bad":
            return f"{name}: {signal.get('why')}", False
    return None, False


def gpu_rows(
    host: str, snapshot: Mapping[str, Any], history: Mapping[tuple[str, int], History]
) -> tuple[GpuRow, ...]:
    gpus = snapshot.get("gpus")
    if not isinstance(gpus, list):
        return ()
    rows = []
    for position, gpu in enumerate(gpus):
        if type(gpu) is not dict:
            continue
        index = gpu.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else position
        rows.append(
            GpuRow(
                host=host,
                index=index,
                name=str(gpu.get("name") or "-"),
                util=number(gpu.get("utilization_pct")),
                mem_used=_int(gpu.get("memory_used_bytes")),
                mem_total=_int(gpu.get("memory_total_bytes")),
                temp=number(gpu.get("temperature_c")),
                power=number(gpu.get("power_w")),
                power_limit=number(gpu.get("power_limit_w")),
                history=history.get((host, index), ()),
                processes=_processes(gpu.get("processes")),
            )
        )
    return tuple(sorted(rows, key=lambda r: r.index))


def number(value: Any) -> float | None:
    """A metric as a float; anything else (None, "NA", NaN, a bool) is unknown. Exact types (JSON
    gives int and float): this runs for every metric of every GPU every refresh."""
    kind = type(value)
    if kind is float:
        return value if value == value else None
    return float(value) if kind is int else None


def _int(value: Any) -> int | None:
    found = number(value)
    return None if found is None else int(found)


def _first(value: Any) -> float | None:
    return number(value[0]) if isinstance(value, list | tuple) and value else None


def _processes(value: Any) -> tuple[tuple[int, int | None], ...]:
    if not isinstance(value, list):
        return ()
    found = []
    for proc in value:
        if type(proc) is dict and type(proc.get("pid")) is int:
            found.append((int(proc["pid"]), _int(proc.get("memory_bytes"))))
    return tuple(found)


# -- `/` filters ---------------------------------------------------------------------------------


def matches(words: Iterable[str], haystack: Mapping[str, str]) -> bool:
    """Every word must match (AND); `key:value` matches that field (`host:gpu-a`), a bare word
    any field; `-word` excludes. Case-insensitive substring matches, but `gpu:N` is GPU N."""
    for word in words:
        negate = word.startswith("-") and len(word) > 1
        word = (word[1:] if negate else word).lower()
        key, sep, value = word.partition(":")
        if sep and key == "gpu" and value.isdigit() and "index" in haystack:
            found = haystack["index"] == value  # gpu:0 is GPU 0, not every name with a 0
        elif sep and key in haystack:
            found = value in haystack[key].lower()
        else:
            found = any(word in field.lower() for field in haystack.values())
        if found == negate:
            return False
    return True


def host_fields(row: HostRow, labels: Mapping[str, str]) -> dict[str, str]:
    return {
        "host": row.name,
        "kind": row.kind,
        "address": row.address,
        "state": row.verdict,
        "label": ",".join(f"{k}={v}" for k, v in labels.items()),
        "gpu": " ".join(g.name for g in row.gpus),
    }


def gpu_fields(row: GpuRow) -> dict[str, str]:
    return {"host": row.host, "gpu": row.name, "index": str(row.index)}
