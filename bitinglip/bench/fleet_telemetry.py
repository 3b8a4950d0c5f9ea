"""Generated fleet telemetry: snapshots shaped like an agent's (`bitinglip_agent.telemetry`
`Sampler.snapshot` plus `models_loaded`), and a `FleetWriter` that stores them with the control
plane's own write functions (`TelemetryRing.record`, `hosts.save` after a `HealthTracker`), as
the dispatcher's `FleetWatch` does each second.

The numbers are smooth functions of the host, the GPU and the time, so a given `at` always gives
the same snapshot (snapshot tests rely on it) and the values move every second (benchmarks rely
on that). For `bitinglip bench tui` and the console's tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bitinglip.config import Profile
from bitinglip.control.fleet import hosts
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.store.db import Store, open_store

GIB = 1 << 30
GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_MEMORY = 80 * GIB
POWER_LIMIT_W = 700.0
RAM = 1024 * GIB


def _wave(seed: int, at: float, period: float) -> float:
    """0..1, smooth in `at`, a different phase per seed."""
    return 0.5 + 0.5 * math.sin(at / period + seed * 0.7)


def gpu_snapshot(host_no: int, index: int, at: float) -> dict[str, Any]:
    seed = host_no * 8 + index
    util = round(100 * _wave(seed, at, 7.0))
    used = int(GPU_MEMORY * (0.1 + 0.8 * _wave(seed, at, 60.0)))
    return {
        "index": index,
        "name": GPU_NAME,
        "uuid": f"GPU-{host_no:04d}-{index:04d}",
        "utilization_pct": util,
        "memory_used_bytes": used,
        "memory_total_bytes": GPU_MEMORY,
        "temperature_c": 35 + round(50 * util / 100),
        "power_w": round(80 + 6.0 * util, 1),
        "power_limit_w": POWER_LIMIT_W,
        "clock_sm_mhz": 1980,
        "clock_mem_mhz": 2619,
        "processes": [{"pid": 4000 + index, "memory_bytes": used - GIB}] if util > 20 else [],
    }


def host_snapshot(host_no: int, at: float, gpus: int) -> dict[str, Any]:
    cpu = round(100 * _wave(host_no, at, 11.0) * 0.4, 1)
    return {
        "at": at,
        "cpu_percent": cpu,
        "load": [round(cpu / 10, 2), round(cpu / 12, 2), round(cpu / 15, 2)],
        "ram_used_bytes": int(RAM * 0.3),
        "ram_total_bytes": RAM,
        "disk_free_bytes": 900 * GIB,
        "disk_total_bytes": 2000 * GIB,
        "uptime_s": 86400.0,
        "gpus": [gpu_snapshot(host_no, i, at) for i in range(gpus)],
        "gpu_error": None if gpus else hosts.NO_PYNVML,
        "source": "psutil",
        "models_loaded": [],
    }


def hello(name: str, gpus: int) -> dict[str, Any]:
    """A hello as the agent sends it (its envelope and facts), with every runtime present."""
    return {
        "v": 1,
        "type": "hello",
        "version": "0.1.0",
        "protocol": 1,
        "name": name,
        "host": {
            "hostname": name,
            "os": "Linux-6.8.0-x86_64-with-glibc2.39",
            "python": "3.11.9",
            "cpu_count": 64,
            "ram_bytes": RAM,
            "arch": "x86_64",
        },
        "capabilities": {
            "llama_cpp": True,
            "huggingface_hub": True,
            "psutil": True,
            "pynvml": True,
        },
        "models": [],
        "model_dir": "/srv/models",
    }


class FleetWriter:
    """Stores generated telemetry and health for `names` (SSH hosts with `gpus` GPUs each).
    Not thread-safe: one writer per thread and Store."""

    def __init__(self, store: Store, names: Sequence[str], gpus: int = 8) -> None:
        self.store = store
        self.names = list(names)
        self.gpus = gpus
        self.received_at = 0.0
        self.ring = TelemetryRing(clock=lambda: self.received_at)
        self.tracker = hosts.HealthTracker()

    @classmethod
    @contextmanager
    def opened(cls, profile: Profile, gpus: int = 8) -> Iterator[FleetWriter]:
        """A writer for the profile's hosts on a connection of its own, closed after."""
        store = open_store(profile.db_path, profile.durability)
        try:
            yield cls(store, [h.name for h in profile.hosts], gpus)
        finally:
            store.close()

    def write(self, at: float, received_at: float | None = None) -> None:
        """Every host's snapshot at `at` and its health, in two transactions (as FleetWatch)."""
        received = self.received_at = at if received_at is None else received_at
        samples = [(name, host_snapshot(i, at, self.gpus)) for i, name in enumerate(self.names)]
        healths = [
            self.tracker.observe(self.observation(name, snapshot, received), received)
            for name, snapshot in samples
        ]
        hosts.save(self.store, healths)
        self.ring.record(self.store, samples)

    def observation(
        self, name: str, snapshot: dict[str, Any], received_at: float
    ) -> hosts.HostObservation:
        number = self.names.index(name)
        return hosts.HostObservation(
            host=name,
            connected=True,
            last_seen_age_s=0.2,
            hello=hello(name, self.gpus),
            telemetry=snapshot,
            received_at=received_at,
            kind="ssh",
            address=f"10.0.{number // 250}.{number % 250 + 1}:22",
        )
