"""Host and GPU snapshots for the agent's `hello` and its 1 Hz `telemetry` push.

The only module of the agent that imports psutil and pynvml (nvidia-ml-py), each lazily and each
optional. Without psutil the host numbers come from /proc (source "proc"); without NVML the
snapshot carries `"gpus": []` and a one-line `gpu_error`. A metric the GPU or driver does not
support is None (NA), never an exception.

A snapshot is a plain JSON-serialisable dict built fresh on every call. A Sampler is not
thread-safe: the agent polls from one place and polls never overlap.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import time
from typing import Any, Callable

OPTIONAL_PACKAGES = ("llama_cpp", "huggingface_hub", "psutil", "pynvml")


def capabilities() -> dict[str, bool]:
    """Which optional packages are importable, found without importing them."""
    return {name: _importable(name) for name in OPTIONAL_PACKAGES}


def host_facts() -> dict[str, Any]:
    """Facts that do not change while the agent runs, for `hello`."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _memory(_import_psutil())[1],
        "arch": platform.machine(),
    }


def model_files(model_dir: str | None) -> list[str]:
    """The names of the GGUF files in `model_dir` (without `.gguf`), for `hello`."""
    if not model_dir:
        return []
    try:
        names = os.listdir(os.path.expanduser(model_dir))
    except OSError:
        return []
    return sorted(n[: -len(".gguf")] for n in names if n.endswith(".gguf"))


class Sampler:
    """Takes snapshots of one host: CPU, memory, disk of `model_dir`, uptime and NVIDIA GPUs.

    CPU percent is system-wide (0..100, all cores together) over the interval since the previous
    snapshot; the constructor takes the first reading, so the first snapshot has a value too.
    """

    def __init__(self, model_dir: str | None = None) -> None:
        self._disk_path = model_dir or os.path.expanduser("~")
        self._psutil = _import_psutil()
        self._boot_time: float | None = float(self._psutil.boot_time()) if self._psutil else None
        self._cpu_before = self._cpu_times()
        self._cpu_percent: float | None = None
        self._gpus = _Gpus()

    def snapshot(self) -> dict[str, Any]:
        used, total = _memory(self._psutil)
        disk_free, disk_total = _disk_usage(self._disk_path)
        return {
            "at": time.time(),
            "cpu_percent": self._next_cpu_percent(),
            "load": _load(self._psutil),
            "ram_used_bytes": used,
            "ram_total_bytes": total,
            "disk_free_bytes": disk_free,
            "disk_total_bytes": disk_total,
            "uptime_s": self._uptime(),
            "gpus": self._gpus.snapshot(),
            "gpu_error": self._gpus.error,
            "source": "psutil" if self._psutil else "proc",
        }

    def close(self) -> None:
        self._gpus.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cpu_times(self) -> tuple[float, float] | None:
        if self._psutil is None:
            return _proc_cpu_times()
        times = self._psutil.cpu_times()
        # As psutil.cpu_percent counts, but per Sampler: psutil keeps one module-wide baseline,
        # so two callers of cpu_percent(interval=None) would shorten each other's interval.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return total - times.idle - getattr(times, "iowait", 0.0), total

    def _next_cpu_percent(self) -> float | None:
        now, before = self._cpu_times(), self._cpu_before
        if now is None or before is None:
            return None
        if now[1] <= before[1]:  # No clock tick since the last reading.
            if self._cpu_percent is not None:
                return self._cpu_percent
            before = (0.0, 0.0)  # The first snapshot came too soon: the average since boot.
        busy = (now[0] - before[0]) / (now[1] - before[1]) * 100.0
        self._cpu_percent = round(min(100.0, max(0.0, busy)), 1)
        self._cpu_before = now
        return self._cpu_percent

    def _uptime(self) -> float | None:
        if self._boot_time is not None:
            return round(time.time() - self._boot_time, 1)
        line = _first_line("/proc/uptime")
        return float(line.split()[0]) if line else None


class _Gpus:
    """NVML, initialised once with its device handles kept; one set of queries per device per
    poll, each unsupported metric None."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._names: list[str | None] = []
        self._uuids: list[str | None] = []
        try:
            import pynvml  # type: ignore[import-untyped]
        except ImportError:
            self.error = "pynvml is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.error = _one_line(f"NVML unavailable: {exc}")
            return
        self._nvml = pynvml
        count = self._na(pynvml.nvmlDeviceGetCount)
        if count is None:
            self.error = "NVML could not count the GPUs"
            count = 0
        self._handles = [self._na(pynvml.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
        # Static facts, asked once.
        self._names = [self._na(pynvml.nvmlDeviceGetName, h) for h in self._handles]
        self._uuids = [self._na(pynvml.nvmlDeviceGetUUID, h) for h in self._handles]

    def snapshot(self) -> list[dict[str, Any]]:
        if self._nvml is None:
            return []
        return [self._device(index) for index in range(len(self._handles))]

    def close(self) -> None:
        if self._nvml is not None:
            self._na(self._nvml.nvmlShutdown)
            self._nvml, self._handles = None, []

    def _na(self, query: Callable[..., Any], *args: Any) -> Any:
        """One NVML query; a metric the GPU or driver does not support (any NVMLError) is None."""
        try:
            return query(*args)
        except self._nvml.NVMLError:
            return None

    def _device(self, index: int) -> dict[str, Any]:
        nvml, handle, na = self._nvml, self._handles[index], self._na
        mem = util = power = limit = temp = sm = mem_clock = None
        if handle is not None:
            mem = na(nvml.nvmlDeviceGetMemoryInfo, handle)
            util = na(nvml.nvmlDeviceGetUtilizationRates, handle)
            power = na(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
            limit = na(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)  # milliwatts
            temp = na(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            sm = na(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
            mem_clock = na(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM)
        return {
            "index": index,
            "name": self._names[index],
            "uuid": self._uuids[index],
            "utilization_pct": util.gpu if util is not None else None,
            "memory_used_bytes": mem.used if mem is not None else None,
            "memory_total_bytes": mem.total if mem is not None else None,
            "temperature_c": temp,
            "power_w": power / 1000.0 if power is not None else None,
            "power_limit_w": limit / 1000.0 if limit is not None else None,
            "clock_sm_mhz": sm,
            "clock_mem_mhz": mem_clock,
            "processes": self._processes(handle) if handle is not None else [],
        }

    def _processes(self, handle: Any) -> list[dict[str, Any]]:
        """Compute and graphics processes together, one entry per pid; memory None where the
        driver does not say (usedGpuMemory is None, e.g. under WDDM or without permission)."""
        by_pid: dict[int, int | None] = {}
        for query in (
            self._nvml.nvmlDeviceGetComputeRunningProcesses,
            self._nvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for proc in self._na(query, handle) or []:
                if by_pid.get(proc.pid) is None:
                    by_pid[proc.pid] = proc.usedGpuMemory
        return [{"pid": pid, "memory_bytes": by_pid[pid]} for pid in sorted(by_pid)]


def with_memory(loaded: list[dict[str, Any]], gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each loaded model's entry (its child's `pid` taken out) with the child's resident memory
    (`rss_bytes`, from /proc), GPU memory (`gpu_memory_bytes`, NVML's per-process figures in
    this snapshot's `gpus`; None without them) and, where NVML lists the child, the indices of
    the GPUs it is on (`gpus`)."""
    from bitinglip_agent.child import rss_bytes

    for entry in loaded:
        pid = entry.pop("pid")
        entry["rss_bytes"] = rss_bytes(pid)
        on = [
            (gpu.get("index", i), proc.get("memory_bytes"))
            for i, gpu in enumerate(gpus)
            for proc in gpu.get("processes") or []
            if proc.get("pid") == pid
        ]
        used = [m for _, m in on if m is not None]
        entry["gpu_memory_bytes"] = sum(used) if used else None
        if on:
            entry["gpus"] = sorted({i for i, _ in on})
    return loaded


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_psutil() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    return psutil


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.readline()
    except OSError:
        return None


def _proc_cpu_times() -> tuple[float, float] | None:
    """(busy, total) clock ticks from the first line of /proc/stat, counted as psutil does:
    guest time is already inside user and nice; idle includes iowait."""
    line = _first_line("/proc/stat")
    if not line or not line.startswith("cpu "):
        return None
    ticks = [float(t) for t in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def _memory(psutil: Any) -> tuple[int | None, int | None]:
    """(used, total) bytes, where used is total minus available on either path."""
    if psutil is not None:
        vm = psutil.virtual_memory()
        return vm.total - vm.available, vm.total
    info = _proc_meminfo()
    total = info.get("MemTotal")
    available = info.get("MemAvailable")
    if available is None and "MemFree" in info:  # Kernels before 3.14.
        available = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0)
    if total is None:
        return None, _sysconf_ram()
    return (total - available if available is not None else None), total


def _proc_meminfo() -> dict[str, int]:
    wanted = {"MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"}
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in wanted:
                    found[key] = int(rest.split()[0]) * 1024  # Values are in kB.
                    if len(found) == len(wanted):
                        break
    except (OSError, ValueError, IndexError):
        return found  # no /proc (not Linux) or an odd line: what was read; the rest is NA
    return found


def _sysconf_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _load(psutil: Any) -> list[float] | None:
    try:
        loads = os.getloadavg() if hasattr(os, "getloadavg") else psutil.getloadavg()
    except (AttributeError, OSError):
        return None
    return [round(x, 2) for x in loads]


def _disk_usage(path: str) -> tuple[int | None, int | None]:
    """(free, total) bytes of the filesystem that holds `path`, or would once it is created."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None, None
    return usage.free, usage.total
