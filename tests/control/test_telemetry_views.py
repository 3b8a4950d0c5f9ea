"""FleetReader: every host's latest snapshot and a bounded, incremental history of CPU % and GPU
utilisation, read from a real ring (including one that wraps around)."""

from __future__ import annotations

from bitinglip.bench.fleet_telemetry import FleetWriter, gpu_snapshot, host_snapshot
from bitinglip.control.fleet.telemetry_ring import HOST_ROW, TelemetryRing
from bitinglip.control.fleet.telemetry_views import FleetReader
from bitinglip.control.plane import ControlPlane

T0 = 1_800_000_000.0
HOSTS = ["gpu-a", "gpu-b"]


def utils(host_no: int, gpu: int, seconds: range) -> tuple[float, ...]:
    return tuple(float(gpu_snapshot(host_no, gpu, T0 + s)["utilization_pct"]) for s in seconds)


def test_reads_are_incremental_and_never_repeat_a_sample(plane: ControlPlane) -> None:
    writer = FleetWriter(plane.store, HOSTS, gpus=2)
    reader = FleetReader(points=100)
    for s in range(5):
        writer.write(T0 + s)
    first = reader.read(plane.store, HOSTS)
    assert first.history[("gpu-b", 1)] == utils(1, 1, range(5))
    cpu = tuple(host_snapshot(0, T0 + s, 2)["cpu_percent"] for s in range(5))
    assert first.history[("gpu-a", HOST_ROW)] == cpu
    assert reader.read(plane.store, HOSTS).history == first.history  # nothing new, nothing added
    for s in range(5, 8):
        writer.write(T0 + s)
        reader.read(plane.store, HOSTS)  # read after every write: each sample lands once
    last = reader.read(plane.store, HOSTS)
    assert last.history[("gpu-b", 1)] == utils(1, 1, range(8))
    assert last.latest["gpu-a"]["at"] == T0 + 7 and list(last.latest) == HOSTS
    assert last.received_at["gpu-a"] == T0 + 7
    for s in range(8, 12):  # a refresh that comes late: the gap is read from the ring
        writer.write(T0 + s)
    late = reader.read(plane.store, HOSTS)
    assert late.history[("gpu-b", 1)] == utils(1, 1, range(12))
    cpu = tuple(host_snapshot(0, T0 + s, 2)["cpu_percent"] for s in range(12))
    assert late.history[("gpu-a", HOST_ROW)] == cpu


def test_history_is_bounded_and_a_burst_reads_as_its_latest(plane: ControlPlane) -> None:
    writer = FleetWriter(plane.store, HOSTS, gpus=1)
    reader = FleetReader(points=4)
    for s in range(10):
        writer.write(T0 + s)
    read = reader.read(plane.store, HOSTS)
    assert read.history[("gpu-a", 0)] == utils(0, 0, range(6, 10))
    assert read.latest["gpu-b"]["gpus"][0] == gpu_snapshot(1, 0, T0 + 9)


def test_a_ring_that_wraps_around_reads_in_time_order(plane: ControlPlane) -> None:
    ring = TelemetryRing(capacity=8)  # slots wrap every 8 s
    reader = FleetReader(ring, points=6)
    for s in range(13):
        ring.record(plane.store, [("gpu-a", host_snapshot(0, T0 + s, 1))])
        if s in (3, 9):
            reader.read(plane.store, ["gpu-a"])
    read = reader.read(plane.store, ["gpu-a"])
    assert read.history[("gpu-a", 0)] == utils(0, 0, range(7, 13))


def test_only_the_hosts_asked_for_are_read_and_kept(plane: ControlPlane) -> None:
    writer = FleetWriter(plane.store, HOSTS, gpus=1)
    reader = FleetReader()
    writer.write(T0)
    assert set(reader.read(plane.store, HOSTS).latest) == set(HOSTS)
    read = reader.read(plane.store, ["gpu-b", "gpu-z"])
    assert list(read.latest) == ["gpu-b"]
    assert {host for host, _ in read.history} == {"gpu-b"}
