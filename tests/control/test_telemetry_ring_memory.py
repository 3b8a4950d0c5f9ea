"""The ring's writer releases its page cache every SHRINK_EVERY records: ring pages are written
once a pass and never read back by that connection, so keeping them would grow the process by
the ring's size (up to the store's 32 MiB cache_size) — what `bitinglip bench tui` measures."""

from __future__ import annotations

import _sqlite3
import ctypes

from bitinglip.bench.fleet_telemetry import host_snapshot
from bitinglip.control.fleet.telemetry_ring import SHRINK_EVERY, TelemetryRing
from bitinglip.control.plane import ControlPlane

T0 = 1_800_000_000.0
HOSTS = [f"gpu-{i:02d}" for i in range(64)]
MIB = 1 << 20


def sqlite_memory_used() -> int:
    used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used())


def test_the_writers_page_cache_is_released_every_so_many_records(plane: ControlPlane) -> None:
    ring = TelemetryRing()

    def second(s: int) -> None:
        ring.record(plane.store, [(h, host_snapshot(i, T0 + s, 8)) for i, h in enumerate(HOSTS)])

    start = sqlite_memory_used()
    for s in range(SHRINK_EVERY - 1):
        second(s)
    grown = sqlite_memory_used()
    assert grown - start > 2 * MIB  # the pages written are cached...
    second(SHRINK_EVERY - 1)
    assert sqlite_memory_used() < start + (grown - start) / 4  # ...until the release
