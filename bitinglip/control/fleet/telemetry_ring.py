"""The telemetry ring: a bounded history of every host's and GPU's numbers, and each host's
latest snapshot.

A snapshot is the dict an agent pushes at 1 Hz (`bitinglip_agent.telemetry.Sampler.snapshot`).
`TelemetryRing.record` writes a batch of them (every host's newest, once per control-loop second)
in one write transaction: one `host_telemetry` row per host (gpu = -1) and one per GPU, each in
slot int(at // interval) % capacity, replacing what was there. The table never holds more than
`capacity` rows per (host, gpu) and is never DELETEd from; readers ignore rows older than the
window (capacity * interval) before the newest one. `at` is the agent's clock: recording the same
snapshot twice lands in the same slot. Metrics the host does not report (None, "NA") are NULL.

`host_telemetry_latest` keeps each host's newest snapshot as sent (GPU names and processes
included), for `latest` and `gpu_table`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from bitinglip.control.store.db import Store
from bitinglip.errors import ConfigError

HOST_ROW = -1  # the `gpu` of a host-level row
SHRINK_EVERY = 60  # records between two releases of the writer's page cache (a minute at 1 Hz)
GIB = 1 << 30

Snapshot = Mapping[str, Any]


class HostSample(NamedTuple):
    """One host-level sample (gpu = -1): CPU, load, RAM and the model dir's disk."""

    at: float
    cpu_pct: float | None
    load1: float | None
    ram_used_bytes: int | None
    ram_total_bytes: int | None
    disk_free_bytes: int | None
    disk_total_bytes: int | None


class GpuSample(NamedTuple):
    """One GPU sample: utilisation %, memory bytes, temperature C, power and its limit W."""

    at: float
    util_pct: float | None
    mem_used_bytes: int | None
    mem_total_bytes: int | None
    temp_c: float | None
    power_w: float | None
    power_limit_w: float | None


Sample = HostSample | GpuSample

# Snapshot key -> column, in column order (the sample classes' fields after `at`).
_HOST_KEYS = {
    "cpu_percent": "cpu_pct",
    "load": "load1",
    "ram_used_bytes": "ram_used_bytes",
    "ram_total_bytes": "ram_total_bytes",
    "disk_free_bytes": "disk_free_bytes",
    "disk_total_bytes": "disk_total_bytes",
}
_GPU_KEYS = {
    "utilization_pct": "util_pct",
    "memory_used_bytes": "mem_used_bytes",
    "memory_total_bytes": "mem_total_bytes",
    "temperature_c": "temp_c",
    "power_w": "power_w",
    "power_limit_w": "power_limit_w",
}


def _insert(columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    return (
        f"INSERT OR REPLACE INTO host_telemetry (host, gpu, slot, at, {names})"
        f" VALUES (?, ?, ?, ?, {marks})"
    )


def _select(columns: Sequence[str]) -> str:
    """Rows of one (host, gpu) since ?3, within the window (?4 s) before its newest row."""
    return (
        f"SELECT at, {', '.join(columns)} FROM host_telemetry"
        " WHERE host = ?1 AND gpu = ?2 AND at >= ?3"
        " AND at > (SELECT max(at) FROM host_telemetry WHERE host = ?1 AND gpu = ?2) - ?4"
        " ORDER BY at"
    )


_INSERT_HOST = _insert(list(_HOST_KEYS.values()))
_INSERT_GPU = _insert(list(_GPU_KEYS.values()))
_SELECT_HOST = _select(list(_HOST_KEYS.values()))
_SELECT_GPU = _select(list(_GPU_KEYS.values()))
_INSERT_LATEST = (
    "INSERT OR REPLACE INTO host_telemetry_latest (host, at, received_at, snapshot)"
    " VALUES (?, ?, ?, ?)"
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class TelemetryRing:
    """Telemetry history over the state database: `capacity` samples per (host, gpu), one every
    `interval_s` (the default keeps an hour of 1 Hz telemetry). Not thread-safe: the control
    loop records; any thread's Store may read."""

    def __init__(
        self,
        interval_s: float = 1.0,
        capacity: int = 3600,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0 or capacity < 1:
            raise ConfigError(
                f"telemetry ring: interval_s must be > 0 and capacity >= 1,"
                f" not {interval_s} and {capacity}"
            )
        self.interval_s = interval_s
        self.capacity = capacity
        self.clock = clock
        self._written: dict[str, float] = {}  # host -> `at` of its last recorded snapshot
        self._records = 0  # record() calls that wrote something

    @property
    def window_s(self) -> float:
        return self.interval_s * self.capacity

    def slot(self, at: float) -> int:
        return int(at // self.interval_s) % self.capacity

    def record(self, store: Store, batch: Sequence[tuple[str, Snapshot]]) -> int:
        """Write many hosts' snapshots in one transaction; returns how many were written.

        A snapshot already recorded for its host (same `at`) is skipped; one without a numeric
        `at` is placed at this machine's time."""
        received_at = self.clock()
        host_rows: list[tuple[Any, ...]] = []
        gpu_rows: list[tuple[Any, ...]] = []
        latest: dict[str, tuple[Any, ...]] = {}
        for host, snapshot in batch:
            at = _number(snapshot.get("at"))
            at = received_at if at is None else float(at)
            if self._written.get(host) == at:
                continue
            slot = self.slot(at)
            host_rows.append((host, HOST_ROW, slot, at, *_host_values(snapshot)))
            gpu_rows.extend((host, i, slot, at, *v) for i, v in _gpu_values(snapshot))
            latest[host] = (host, at, received_at, _dumps(dict(snapshot)))
        if not latest:
            return 0
        with store.write() as conn:
            conn.executemany(_INSERT_HOST, host_rows)
            conn.executemany(_INSERT_GPU, gpu_rows)
            conn.executemany(_INSERT_LATEST, latest.values())
        self._written.update((host, row[1]) for host, row in latest.items())
        self._records += 1
        if self._records % SHRINK_EVERY == 0:
            # Ring pages are written once a pass and not read back by this connection; left in
            # its page cache they would grow it by the ring's size (to cache_size, 32 MiB).
            store.conn.execute("PRAGMA shrink_memory")
        return len(host_rows)

    def history(self, store: Store, host: str, gpu: int, since: float) -> list[Sample]:
        """Samples of `host` (gpu -1) or one of its GPUs at or after `since`, oldest first."""
        if gpu == HOST_ROW:
            return list(self.host_history(store, host, since))
        return list(self.gpu_history(store, host, gpu, since))

    def host_history(self, store: Store, host: str, since: float) -> list[HostSample]:
        rows = store.conn.execute(_SELECT_HOST, (host, HOST_ROW, since, self.window_s))
        return [HostSample(*row) for row in rows]

    def gpu_history(self, store: Store, host: str, gpu: int, since: float) -> list[GpuSample]:
        rows = store.conn.execute(_SELECT_GPU, (host, gpu, since, self.window_s))
        return [GpuSample(*row) for row in rows]


def latest(store: Store, *, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Each host's newest snapshot as its agent sent it, by host name (sorted); with `since`,
    only snapshots received at or after it (this machine's clock)."""
    rows = store.conn.execute(
        "SELECT host, snapshot FROM host_telemetry_latest WHERE received_at >= ? ORDER BY host",
        (-math.inf if since is None else since,),
    )
    return {host: json.loads(snapshot) for host, snapshot in rows}


def _number(value: Any) -> int | float | None:
    """A metric as a number; anything else (None, "NA", NaN, a bool) is unknown. Exact types
    (JSON gives int and float): this runs for every metric of every host every second."""
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is float and math.isfinite(value):
        return value  # type: ignore[no-any-return]
    return None


def _host_values(snapshot: Snapshot) -> list[int | float | None]:
    values = []
    for key in _HOST_KEYS:
        value = snapshot.get(key)
        if key == "load":  # [1, 5, 15] minute averages; the ring keeps the first
            value = value[0] if isinstance(value, list | tuple) and value else None
        values.append(_number(value))
    return values


def _gpu_values(snapshot: Snapshot) -> list[tuple[int, list[int | float | None]]]:
    """(index, values) of each GPU in the snapshot; a GPU without an index takes its position."""
    gpus = snapshot.get("gpus")
    if not isinstance(gpus, list):
        return []
    found = []
    for position, gpu in enumerate(gpus):
        if not isinstance(gpu, Mapping):
            continue
        index = gpu.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else position
        found.append((index, [_number(gpu.get(key)) for key in _GPU_KEYS]))
    return found


# -- `bitinglip hosts top` -----------------------------------------------------------------------

GPU_TABLE_HEADERS = ["HOST", "GPU", "NAME", "UTIL %", "MEM GiB", "TEMP C", "POWER W"]


def gpu_table(latest: Mapping[str, Snapshot]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for `hosts top`: per host (by name) a host line (GPU "-", NAME "CPU",
    CPU % and RAM), then one line per GPU by index. Unknown values are "-"."""
    rows: list[list[str]] = []
    for host in sorted(latest):
        snapshot = latest[host]
        ram = _used_of(snapshot.get("ram_used_bytes"), snapshot.get("ram_total_bytes"))
        rows.append([host, "-", "CPU", _fixed(snapshot.get("cpu_percent"), 0), ram, "-", "-"])
        gpus = snapshot.get("gpus")
        gpus = [g for g in gpus if isinstance(g, Mapping)] if isinstance(gpus, list) else []
        for position, gpu in sorted(enumerate(gpus), key=lambda p: _gpu_index(*p)):
            rows.append(
                [
                    host,
                    str(_gpu_index(position, gpu)),
                    str(gpu.get("name") or "-"),
                    _fixed(gpu.get("utilization_pct"), 0),
                    _used_of(gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")),
                    _fixed(gpu.get("temperature_c"), 0),
                    _power(gpu.get("power_w"), gpu.get("power_limit_w")),
                ]
            )
    return list(GPU_TABLE_HEADERS), rows


def _gpu_index(position: int, gpu: Mapping[str, Any]) -> int:
    index = gpu.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def _fixed(value: Any, digits: int) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _used_of(used: Any, total: Any) -> str:
    """ "12.3/80.0" GiB; "-" when both are unknown."""
    u, t = _number(used), _number(total)
    if u is None and t is None:
        return "-"
    return (
        f"{_fixed(None if u is None else u / GIB, 1)}/{_fixed(None if t is None else t / GIB, 1)}"
    )


def _power(power: Any, limit: Any) -> str:
    """ "251/700" W, or "251" when the limit is unknown."""
    drawn = _fixed(power, 0)
    return drawn if _number(limit) is None else f"{drawn}/{_fixed(limit, 0)}"
