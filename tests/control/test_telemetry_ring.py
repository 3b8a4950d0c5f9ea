"""The telemetry ring: bounded per (host, gpu), one transaction per batch, NULL for NA, the
window, each host's latest snapshot, and the `hosts top` table."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from bitinglip.config import Profile
from bitinglip.control.fleet.telemetry_ring import (
    GIB,
    HOST_ROW,
    GpuSample,
    HostSample,
    TelemetryRing,
    gpu_table,
    latest,
)
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import ConfigError

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(profile: Profile) -> Iterator[Store]:
    opened = open_store(profile.db_path)
    yield opened
    opened.close()


def gpu(index: int, **over: Any) -> dict[str, Any]:
    """A GPU as the agent's `_device` reports it."""
    return {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{index}",
        "utilization_pct": 87,
        "memory_used_bytes": 12 * GIB,
        "memory_total_bytes": 80 * GIB,
        "temperature_c": 64,
        "power_w": 251.3,
        "power_limit_w": 700.0,
        "clock_sm_mhz": 1980,
        "clock_mem_mhz": 2619,
        "processes": [{"pid": 4242, "memory_bytes": 11 * GIB}],
    } | over


def snap(at: float, gpus: int = 2, **over: Any) -> dict[str, Any]:
    """A snapshot as the agent's `Sampler.snapshot` sends it."""
    return {
        "at": at,
        "cpu_percent": 12.5,
        "load": [0.5, 0.4, 0.3],
        "ram_used_bytes": 3 * GIB,
        "ram_total_bytes": 16 * GIB,
        "disk_free_bytes": 100 * GIB,
        "disk_total_bytes": 500 * GIB,
        "uptime_s": 1234.5,
        "gpus": [gpu(i) for i in range(gpus)],
        "gpu_error": None,
        "source": "psutil",
    } | over


def rows_per_ring(store: Store) -> dict[tuple[str, int], int]:
    rows = store.conn.execute("SELECT host, gpu, count(*) FROM host_telemetry GROUP BY host, gpu")
    return {(host, g): n for host, g, n in rows}


def statements(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def test_the_ring_never_holds_more_than_capacity_rows_per_host_and_gpu(store: Store) -> None:
    ring = TelemetryRing(interval_s=1.0, capacity=10)
    for i in range(30):  # 3 x capacity, with a little jitter in the agents' clocks
        ring.record(store, [("a", snap(T0 + i + 0.37)), ("b", snap(T0 + i + 0.91, gpus=1))])
    assert rows_per_ring(store) == {
        ("a", -1): 10,
        ("a", 0): 10,
        ("a", 1): 10,
        ("b", -1): 10,
        ("b", 0): 10,
    }
    assert store.conn.execute("SELECT count(*) FROM host_telemetry").fetchone()[0] == 50
    expected = [T0 + i + 0.37 for i in range(20, 30)]
    assert [s.at for s in ring.history(store, "a", HOST_ROW, since=0)] == expected
    assert [s.at for s in ring.history(store, "a", 1, since=0)] == expected
    assert [s.at for s in ring.history(store, "a", 1, since=T0 + 27)] == expected[-3:]


def test_history_ignores_slots_older_than_the_window(store: Store) -> None:
    ring = TelemetryRing(interval_s=1.0, capacity=10)
    for i in range(10):
        ring.record(store, [("a", snap(T0 + i))])
    for i in range(25, 28):  # the agent was away 15 s: slots 5-7 are new, the rest an old hour
        ring.record(store, [("a", snap(T0 + i))])
    assert rows_per_ring(store)[("a", -1)] == 10
    assert [s.at for s in ring.history(store, "a", HOST_ROW, since=0)] == [
        T0 + 25,
        T0 + 26,
        T0 + 27,
    ]


def test_a_sub_second_interval_keeps_its_window(store: Store) -> None:
    ring = TelemetryRing(interval_s=0.5, capacity=4)
    for i in range(12):
        ring.record(store, [("a", snap(T0 + i * 0.5, gpus=0))])
    assert rows_per_ring(store) == {("a", -1): 4}
    assert [s.at for s in ring.history(store, "a", HOST_ROW, 0)] == [
        T0 + 4.0,
        T0 + 4.5,
        T0 + 5.0,
        T0 + 5.5,
    ]


def test_a_batch_of_many_hosts_is_one_transaction(store: Store) -> None:
    ring = TelemetryRing()
    batch = [(f"host-{n:03d}", snap(T0, gpus=8)) for n in range(50)]
    seen = statements(store.conn)
    assert ring.record(store, batch) == 50
    store.conn.set_trace_callback(None)
    assert [s for s in seen if s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    assert store.conn.execute("SELECT count(*) FROM host_telemetry").fetchone()[0] == 50 * 9
    assert len(latest(store)) == 50


def test_the_same_snapshot_is_written_once(store: Store) -> None:
    ring = TelemetryRing()
    assert ring.record(store, [("a", snap(T0)), ("b", snap(T0))]) == 2
    seen = statements(store.conn)
    assert ring.record(store, [("a", snap(T0)), ("b", snap(T0))]) == 0  # no new telemetry
    assert seen == []  # not even a transaction
    assert ring.record(store, [("a", snap(T0)), ("b", snap(T0 + 1))]) == 1
    store.conn.set_trace_callback(None)
    assert rows_per_ring(store) == {
        ("a", -1): 1,
        ("a", 0): 1,
        ("a", 1): 1,
        ("b", -1): 2,
        ("b", 0): 2,
        ("b", 1): 2,
    }


def test_unknown_metrics_are_null(store: Store) -> None:
    ring = TelemetryRing()
    odd_gpu = gpu(
        0,
        utilization_pct="NA",
        memory_used_bytes=None,
        temperature_c=True,
        power_w=math.nan,
        power_limit_w=None,
    )
    ring.record(
        store,
        [
            (
                "a",
                snap(T0, cpu_percent=None, load=None, ram_total_bytes="NA", gpus=0)
                | {"gpus": [odd_gpu]},
            )
        ],
    )
    (host,) = ring.host_history(store, "a", 0)
    assert host == HostSample(T0, None, None, 3 * GIB, None, 100 * GIB, 500 * GIB)
    (one,) = ring.gpu_history(store, "a", 0, 0)
    assert one == GpuSample(T0, None, None, 80 * GIB, None, None, None)
    nulls = store.conn.execute(
        "SELECT util_pct IS NULL AND mem_used_bytes IS NULL AND temp_c IS NULL AND power_w IS NULL"
        " AND cpu_pct IS NULL AND typeof(mem_total_bytes) = 'integer'"
        " FROM host_telemetry WHERE host = 'a' AND gpu = 0"
    ).fetchone()[0]
    assert nulls == 1


def test_numbers_are_columns_and_a_gpu_without_an_index_takes_its_position(store: Store) -> None:
    ring = TelemetryRing()
    no_index = {k: v for k, v in gpu(9, power_w=300.0).items() if k != "index"}
    ring.record(store, [("a", snap(T0, gpus=1) | {"gpus": [gpu(0), no_index]})])
    assert ring.history(store, "a", 1, 0) == [
        GpuSample(T0, 87.0, 12 * GIB, 80 * GIB, 64.0, 300.0, 700.0)
    ]
    assert ring.history(store, "a", HOST_ROW, 0) == [
        HostSample(T0, 12.5, 0.5, 3 * GIB, 16 * GIB, 100 * GIB, 500 * GIB)
    ]
    assert ring.history(store, "nobody", 0, 0) == []


def test_latest_is_each_hosts_newest_snapshot_as_sent(store: Store) -> None:
    clock = Clock()
    ring = TelemetryRing(clock=clock)
    ring.record(
        store, [("a", snap(T0)), ("b", snap(T0, gpus=0, gpu_error="NVML: Driver Not Loaded"))]
    )
    clock.now += 5
    ring.record(store, [("a", snap(T0 + 5))])
    found = latest(store)
    assert list(found) == ["a", "b"]
    assert found["a"] == snap(T0 + 5)  # processes, names and all
    assert found["b"]["gpu_error"] == "NVML: Driver Not Loaded"
    assert list(latest(store, since=T0 + 1)) == ["a"]  # b was last heard at T0


def test_a_snapshot_without_a_time_is_placed_at_this_machines_time(store: Store) -> None:
    clock = Clock()
    ring = TelemetryRing(clock=clock)
    clock.now = T0 + 42
    ring.record(store, [("a", snap(T0, gpus=0) | {"at": "NA"})])
    assert [s.at for s in ring.history(store, "a", HOST_ROW, 0)] == [T0 + 42]


def test_a_ring_needs_a_positive_interval_and_capacity() -> None:
    with pytest.raises(ConfigError, match="interval_s must be > 0"):
        TelemetryRing(interval_s=0)
    with pytest.raises(ConfigError, match="capacity >= 1"):
        TelemetryRing(capacity=0)


def test_gpu_table_has_a_host_line_and_a_line_per_gpu() -> None:
    headers, rows = gpu_table(
        {
            "zeta": snap(T0, gpus=0, cpu_percent=None, ram_used_bytes=None, ram_total_bytes=None),
            "alpha": snap(T0, gpus=0)
            | {
                "gpus": [
                    gpu(1, utilization_pct=None, power_limit_w=None, temperature_c="NA"),
                    gpu(0, memory_used_bytes=None, name=None),
                ]
            },
        }
    )
    assert headers == ["HOST", "GPU", "NAME", "UTIL %", "MEM GiB", "TEMP C", "POWER W"]
    assert rows == [
        ["alpha", "-", "CPU", "12", "3.0/16.0", "-", "-"],
        ["alpha", "0", "-", "87", "-/80.0", "64", "251/700"],
        ["alpha", "1", "NVIDIA H100 80GB HBM3", "-", "12.0/80.0", "-", "251"],
        ["zeta", "-", "CPU", "-", "-", "-", "-"],
    ]
    assert gpu_table({}) == (headers, [])
