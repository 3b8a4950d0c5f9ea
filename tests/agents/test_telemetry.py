"""Telemetry on the real machine, no mocks: the psutil path in this process, the /proc path in an
interpreter that cannot see site-packages, and NVML as this machine has it (usually: no driver)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bitinglip_agent import telemetry
from bitinglip_agent.telemetry import Sampler

AGENTS_DIR = Path(__file__).resolve().parents[2] / "agents"
SNAPSHOT_KEYS = {
    "at",
    "cpu_percent",
    "load",
    "ram_used_bytes",
    "ram_total_bytes",
    "disk_free_bytes",
    "disk_total_bytes",
    "uptime_s",
    "gpus",
    "gpu_error",
    "source",
}
GPU_KEYS = {
    "index",
    "name",
    "uuid",
    "utilization_pct",
    "memory_used_bytes",
    "memory_total_bytes",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "clock_sm_mhz",
    "clock_mem_mhz",
    "processes",
}
CPUS = os.cpu_count() or 1
# One thread spinning on one of CPUS cores makes the whole machine at least this busy (with room).
SPIN_FLOOR_PCT = 100.0 / CPUS / 4


def nvml_works() -> bool:
    """Asked of pynvml directly, not through the module under test."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_NVML = nvml_works()


@contextmanager
def spinning() -> Iterator[None]:
    """A thread that keeps one core busy for the duration."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def two_snapshots_while_spinning(sampler: Sampler) -> tuple[dict[str, Any], dict[str, Any]]:
    with spinning():
        first = sampler.snapshot()
        time.sleep(0.2)
        second = sampler.snapshot()
    return first, second


def assert_sane(snap: dict[str, Any]) -> None:
    assert set(snap) == SNAPSHOT_KEYS
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert abs(snap["at"] - time.time()) < 60
    assert snap["cpu_percent"] is not None
    assert 0.0 <= snap["cpu_percent"] <= 100.0
    assert len(snap["load"]) == 3
    assert all(x >= 0 for x in snap["load"])
    assert 0 < snap["ram_used_bytes"] < snap["ram_total_bytes"]
    assert 0 < snap["disk_free_bytes"] <= snap["disk_total_bytes"]
    assert snap["uptime_s"] > 0
    assert snap["source"] in ("psutil", "proc")
    for gpu in snap["gpus"]:
        assert set(gpu) == GPU_KEYS


def assert_no_gpu_because(snap: dict[str, Any], reason: str) -> None:
    assert snap["gpus"] == []
    assert snap["gpu_error"].startswith(reason)
    assert "\n" not in snap["gpu_error"]


def test_host_facts_describe_this_machine() -> None:
    facts = telemetry.host_facts()
    assert set(facts) == {"hostname", "os", "python", "cpu_count", "ram_bytes", "arch"}
    assert facts["hostname"] and facts["os"] and facts["arch"]
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["cpu_count"] == CPUS
    assert facts["ram_bytes"] > 64 * 1024 * 1024
    json.dumps(facts)


def test_capabilities_find_what_this_venv_has() -> None:
    caps = telemetry.capabilities()
    assert set(caps) == {"llama_cpp", "huggingface_hub", "psutil", "pynvml"}
    assert all(isinstance(v, bool) for v in caps.values())
    assert caps["psutil"] is True
    assert caps["pynvml"] is True


def test_importing_and_asking_capabilities_imports_no_optional_package() -> None:
    code = (
        "import sys\nfrom bitinglip_agent import telemetry\ntelemetry.capabilities()\n"
        "print(' '.join(m for m in telemetry.OPTIONAL_PACKAGES if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == []


def test_a_snapshot_is_sane_and_serialisable(tmp_path: Path) -> None:
    with Sampler(str(tmp_path)) as sampler:
        snap = sampler.snapshot()
    assert_sane(snap)
    assert snap["source"] == "psutil"


def test_cpu_percent_sees_a_busy_core() -> None:
    with Sampler() as sampler:
        first, second = two_snapshots_while_spinning(sampler)
    assert first["cpu_percent"] is not None
    assert second["cpu_percent"] >= SPIN_FLOOR_PCT


def test_disk_of_a_model_dir_not_yet_created_is_that_of_its_parent(tmp_path: Path) -> None:
    with Sampler(str(tmp_path / "models" / "not-yet")) as sampler:
        snap = sampler.snapshot()
    total = os.statvfs(tmp_path)
    assert snap["disk_total_bytes"] == total.f_blocks * total.f_frsize


@pytest.mark.skipif(HAS_NVML, reason="NVML works here; see test_gpus_are_reported")
def test_pynvml_without_a_driver_is_an_error_line_not_an_exception() -> None:
    sampler = Sampler()
    snap = sampler.snapshot()
    assert_no_gpu_because(snap, "NVML unavailable: ")
    assert_sane(snap)
    sampler.close()
    sampler.close()  # Idempotent.


@pytest.mark.skipif(not HAS_NVML, reason="no NVML driver on this machine")
def test_gpus_are_reported() -> None:
    with Sampler() as sampler:
        snap = sampler.snapshot()
    assert_sane(snap)
    assert snap["gpu_error"] is None
    assert [g["index"] for g in snap["gpus"]] == list(range(len(snap["gpus"])))
    for gpu in snap["gpus"]:
        assert isinstance(gpu["name"], str)
        assert gpu["memory_total_bytes"] > 0
        assert 0 <= gpu["memory_used_bytes"] <= gpu["memory_total_bytes"]
        for proc in gpu["processes"]:
            assert set(proc) == {"pid", "memory_bytes"}


ISOLATED = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from bitinglip_agent import telemetry

stop = threading.Event()
def spin():
    while not stop.is_set():
        pass
sampler = telemetry.Sampler()
thread = threading.Thread(target=spin, daemon=True)
thread.start()
first = sampler.snapshot()
time.sleep(0.2)
second = sampler.snapshot()
stop.set()
thread.join()
start = time.process_time()
for _ in range(100):
    sampler.snapshot()
cost = (time.process_time() - start) / 100
print(json.dumps({
    "caps": telemetry.capabilities(), "facts": telemetry.host_facts(),
    "first": first, "second": second, "cost": cost,
    "imported": [m for m in ("psutil", "pynvml") if m in sys.modules],
}))
"""


@pytest.fixture(scope="module")
def isolated() -> dict[str, Any]:
    """The module in an interpreter with no site-packages (-I -S): no psutil, no pynvml. -I also
    ignores PYTHONPATH, so the agent's directory goes in as an argument."""
    argv = [sys.executable, "-I", "-S", "-c", ISOLATED, str(AGENTS_DIR)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the fallback reads Linux's /proc")
class TestProcFallback:
    def test_no_optional_package_is_importable(self, isolated: dict[str, Any]) -> None:
        assert isolated["caps"] == dict.fromkeys(telemetry.OPTIONAL_PACKAGES, False)
        assert isolated["imported"] == []

    def test_host_facts_agree_with_psutil(self, isolated: dict[str, Any]) -> None:
        assert isolated["facts"]["ram_bytes"] == telemetry.host_facts()["ram_bytes"]

    def test_snapshots_are_sane_from_proc(self, isolated: dict[str, Any]) -> None:
        for snap in (isolated["first"], isolated["second"]):
            assert_sane(snap)
            assert snap["source"] == "proc"
            assert_no_gpu_because(snap, "pynvml is not installed")

    def test_cpu_percent_sees_a_busy_core(self, isolated: dict[str, Any]) -> None:
        assert isolated["second"]["cpu_percent"] >= SPIN_FLOOR_PCT
