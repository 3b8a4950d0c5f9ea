"""Telemetry for live views: every host's latest snapshot and a short history of one headline
metric per host (CPU %) and per GPU (utilisation %), for sparklines.

A view refreshes about once a second. `FleetReader.read` does it in at most three queries
whatever the fleet's size: the latest snapshots' times, the snapshots that changed (parsed again
only when a host sent a new one, so a burst of frames from one host is one change), and, only
when a snapshot cannot extend a host's history by itself (a new host, or samples missed), the
ring rows newer than what the reader holds, found by slot range per host through the ring's
primary key (one query: the hosts' ranges are a VALUES list joined to `host_telemetry`). The
history is kept on the reader's side, bounded to `points` samples per (host, gpu).

Pure SQL and the standard library: any thread's Store, one reader per thread.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bitinglip.control.fleet.telemetry_ring import HOST_ROW, TelemetryRing
from bitinglip.control.store.db import Store

HISTORY_POINTS = 60  # samples per sparkline: a minute of 1 Hz telemetry
NEXT_SAMPLE_S = 1.5  # in intervals: a snapshot this close after the last one seen is the next
_PARAMS_PER_RANGE = 4
_MAX_RANGES = 200  # SQLite allows 32766 parameters; this keeps one statement well under it

History = tuple[float | None, ...]


@dataclass(frozen=True)
class FleetTelemetry:
    """One read: `latest` snapshots by host (as sent), when each arrived (this machine's clock),
    and `history` by (host, gpu) (gpu -1: the host's CPU %), oldest first."""

    latest: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    received_at: Mapping[str, float] = field(default_factory=dict)
    history: Mapping[tuple[str, int], History] = field(default_factory=dict)


@dataclass
class _Latest:
    at: float
    received_at: float
    snapshot: Mapping[str, Any]


class FleetReader:
    """Reads `FleetTelemetry` for a set of hosts, incrementally. Not thread-safe."""

    def __init__(self, ring: TelemetryRing | None = None, points: int = HISTORY_POINTS) -> None:
        self.ring = ring or TelemetryRing()
        self.points = points
        self._latest: dict[str, _Latest] = {}
        self._seen: dict[str, float] = {}  # host -> newest `at` merged into the history
        self._history: dict[tuple[str, int], collections.deque[float | None]] = {}

    def read(self, store: Store, hosts: Iterable[str]) -> FleetTelemetry:
        wanted = set(hosts)
        self._forget(wanted)
        self._read_latest(store, wanted)
        self._read_history(store)
        return FleetTelemetry(
            latest={h: self._latest[h].snapshot for h in sorted(self._latest)},
            received_at={h: v.received_at for h, v in self._latest.items()},
            history={key: tuple(values) for key, values in self._history.items()},
        )

    def _forget(self, wanted: set[str]) -> None:
        for host in [h for h in self._latest if h not in wanted]:
            del self._latest[host]
            self._seen.pop(host, None)
        for key in [k for k in self._history if k[0] not in wanted]:
            del self._history[key]

    def _read_latest(self, store: Store, wanted: set[str]) -> None:
        rows = store.conn.execute("SELECT host, at, received_at FROM host_telemetry_latest")
        changed = []
        for host, at, received_at in rows:
            if host not in wanted:
                continue
            known = self._latest.get(host)
            if known is None or known.at != at:
                changed.append(host)
            else:
                known.received_at = received_at
        for host, at, received_at, snapshot in _snapshots(store, changed):
            self._latest[host] = _Latest(at, received_at, json.loads(snapshot))

    def _read_history(self, store: Store) -> None:
        """A host's next sample comes from its latest snapshot (already read); the ring is read
        only for what that cannot give: a new host's window, or the samples of a gap (a refresh
        that came late). Steady refreshes touch no ring page, so the reader's page cache does
        not grow with the ring."""
        ranges = []
        step = NEXT_SAMPLE_S * self.ring.interval_s
        for host, latest in self._latest.items():
            seen = self._seen.get(host)
            if seen is not None and seen < latest.at <= seen + step:
                self._append(host, latest)
                continue
            since = max(seen or -1.0, latest.at - self.points * self.ring.interval_s)
            if latest.at > since:
                ranges.extend(self._slot_ranges(host, since, latest.at))
        for start in range(0, len(ranges), _MAX_RANGES):
            self._merge(_rows_in(store, ranges[start : start + _MAX_RANGES]))

    def _append(self, host: str, latest: _Latest) -> None:
        snapshot = latest.snapshot
        self._values(host, HOST_ROW).append(_metric(snapshot.get("cpu_percent")))
        gpus = snapshot.get("gpus")
        for position, gpu in enumerate(gpus if isinstance(gpus, list) else []):
            if isinstance(gpu, Mapping):
                index = gpu.get("index")
                index = index if type(index) is int else position
                self._values(host, index).append(_metric(gpu.get("utilization_pct")))
        self._seen[host] = latest.at

    def _values(self, host: str, gpu: int) -> collections.deque[float | None]:
        values = self._history.get((host, gpu))
        if values is None:
            values = self._history[(host, gpu)] = collections.deque(maxlen=self.points)
        return values

    def _slot_ranges(self, host: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """(host, first slot, last slot, since) covering (since, until]; two when it wraps."""
        ring = self.ring
        if until - since >= ring.window_s:
            return [(host, 0, ring.capacity - 1, since)]
        first, last = ring.slot(since), ring.slot(until)
        if first <= last:
            return [(host, first, last, since)]
        return [(host, first, ring.capacity - 1, since), (host, 0, last, since)]

    def _merge(self, rows: Iterable[tuple[str, int, float, float | None, float | None]]) -> None:
        """Append rows in time order; a host is then seen up to its newest row merged."""
        for host, gpu, at, util, cpu in sorted(rows, key=lambda r: r[2]):
            self._values(host, gpu).append(cpu if gpu == HOST_ROW else util)
            if at > self._seen.get(host, -1.0):
                self._seen[host] = at


def _metric(value: Any) -> float | None:
    """A metric as the ring stores it (a REAL); anything else (None, "NA", NaN, a bool) is None."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    return float(value) if kind is int else None


def _snapshots(store: Store, hosts: list[str]) -> list[tuple[str, float, float, str]]:
    if not hosts:
        return []
    marks = ", ".join("?" * len(hosts))
    return store.conn.execute(
        "SELECT host, at, received_at, snapshot FROM host_telemetry_latest"
        f" WHERE host IN ({marks})",
        hosts,
    ).fetchall()


def _rows_in(
    store: Store, ranges: list[tuple[Any, ...]]
) -> list[tuple[str, int, float, float | None, float | None]]:
    """Ring rows of each (host, first slot, last slot, since): newer than `since`."""
    if not ranges:
        return []
    values = ", ".join(["(?, ?, ?, ?)"] * len(ranges))
    params = [p for r in ranges for p in r]
    assert len(params) == len(ranges) * _PARAMS_PER_RANGE
    return store.conn.execute(
        f"WITH wanted (host, first, last, since) AS (VALUES {values})"
        " SELECT t.host, t.gpu, t.at, t.util_pct, t.cpu_pct FROM wanted"
        " JOIN host_telemetry t ON t.host = wanted.host"
        " AND t.slot BETWEEN wanted.first AND wanted.last AND t.at > wanted.since",
        params,
    ).fetchall()
