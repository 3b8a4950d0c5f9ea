"""`bitinglip bench tui`: the console driven headless (`ConsoleApp.run_test`) on a fresh database.

Three phases, each with its own temporary profile:

1. refresh: `hosts` SSH hosts × `gpus` GPUs of generated telemetry (`fleet_telemetry`) written at
   1 Hz by a writer thread with the control plane's own write functions, and `tasks` queued tasks
   (labels no host has, so they stay queued). The console runs without a control loop (nothing
   may touch those hosts or tasks) and without its 1 s tick; each view is refreshed SAMPLES times
   a few times a second while the writer goes on. A refresh is `reload()` until the view posts
   `Refreshed` (its fetch on the backend thread and its `show`): `*_refresh_ms_median`, `_p95`.
2. idle: a profile with only this machine's host, a real control loop and its local agent; the
   console on the Hosts view with its 1 s tick; once the host is healthy, this process's CPU time
   (every thread) over `idle_s` in % of one core: `idle_cpu_percent` (the agent's own, a child
   process, is `idle_agent_cpu_percent`, for information).
3. memory: phase 1's fleet, the console on the Hosts view with its 1 s tick and the writer at
   1 Hz for `minutes`; `rss_growth_mb` is this process's RSS at the end minus at the start, and
   `sqlite_memory_growth_mb` the part of it in SQLite's heap (its connections' page caches,
   each bounded by the store's `cache_size`: the writer's fills with the ring pages it writes).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip.bench.fleet_telemetry import FleetWriter
from bitinglip.config import HostConfig, Profile
from bitinglip.control import TaskSpec, open_control_plane
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from bitinglip.tui.views.base import View

TARGETS = {  # figure -> (target, "max")
    "tasks_refresh_ms_median": 50.0,
    "tasks_refresh_ms_p95": 100.0,
    "fleet_refresh_ms_median": 50.0,
    "fleet_refresh_ms_p95": 100.0,
    "idle_cpu_percent": 2.0,
    "rss_growth_mb": 20.0,
}
SAMPLES = 60  # refreshes measured per view (by default)
REFRESH_GAP_S = 0.2  # between two measured refreshes (the writer keeps writing at 1 Hz)
HISTORY_S = 60  # seconds of telemetry written before the console opens (full sparklines)
HEALTHY_WAIT_S = 60.0
SIZE = (160, 50)
NOWHERE = {"gpu": "none"}  # labels no host has: the tasks stay queued

Progress = Callable[[str], None]


def run(
    profile: Profile,
    hosts: int = 64,
    gpus: int = 8,
    tasks: int = 10_000,
    idle_s: float = 30.0,
    minutes: float = 1.0,
    samples: int = SAMPLES,
    progress: Progress = lambda _s: None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hosts": hosts,
        "gpus_per_host": gpus,
        "tasks": tasks,
        "idle_s": idle_s,
        "minutes": minutes,
        "samples": samples,
    }
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        fleet = _fleet_profile(profile, Path(tmp) / "fleet", hosts)
        progress(f"[1/3] {tasks} tasks and {hosts}x{gpus} GPUs: refresh times")
        out.update(asyncio.run(_refresh(fleet, gpus, tasks, samples)))
        progress(f"[2/3] idle CPU for {idle_s:g} s with the local agent")
        out.update(asyncio.run(_idle(_local_profile(profile, Path(tmp) / "idle"), idle_s)))
        progress(f"[3/3] memory over {minutes:g} min of 1 Hz telemetry")
        out.update(asyncio.run(_memory(fleet, gpus, minutes)))
    out["targets"] = dict(TARGETS)
    out["pass"] = {key: out[key] <= target for key, target in TARGETS.items()}
    out["ok"] = all(out["pass"].values())
    return out


def _fleet_profile(profile: Profile, data_dir: Path, hosts: int) -> Profile:
    fleet = tuple(
        HostConfig(name=f"gpu-{i:02d}", kind="ssh", address=f"10.0.{i // 250}.{i % 250 + 1}")
        for i in range(hosts)
    )
    return replace(profile, data_dir=data_dir, hosts=fleet)


def _local_profile(profile: Profile, data_dir: Path) -> Profile:
    return replace(profile, data_dir=data_dir, hosts=(HostConfig(name="local", kind="local"),))


# -- the telemetry writer ----------------------------------------------------------------------


class Writer:
    """A thread that writes every host's generated telemetry and health once a second."""

    def __init__(self, profile: Profile, gpus: int) -> None:
        self.profile, self.gpus = profile, gpus
        self.stop = threading.Event()
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="bench-telemetry", daemon=True)

    def backfill(self, seconds: int) -> None:
        """`seconds` of history before now, at once (so sparklines start full)."""
        with FleetWriter.opened(self.profile, self.gpus) as writer:
            now = time.time()
            for back in range(seconds, 0, -1):
                writer.write(now - back)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with FleetWriter.opened(self.profile, self.gpus) as writer:
            next_at = time.monotonic()
            while not self.stop.is_set():
                writer.write(time.time())
                self.writes += 1
                next_at += 1.0
                self.stop.wait(max(next_at - time.monotonic(), 0.0))


# -- 1. refresh times --------------------------------------------------------------------------


async def _refresh(profile: Profile, gpus: int, tasks: int, samples: int) -> dict[str, Any]:
    with open_control_plane(profile) as plane:
        specs = [TaskSpec(kind="echo", payload={"i": i}, labels=NOWHERE) for i in range(tasks)]
        plane.submit_many(specs)
    writer = Writer(profile, gpus)
    writer.backfill(HISTORY_S)
    writer.start()
    backend = Backend(profile, control=False)
    backend.start()
    try:
        app = ConsoleApp(backend, start="hosts", tick_s=3600.0)
        done: dict[str, asyncio.Event] = {}
        parts: list[tuple[float, float]] = []  # (fetch_ms, show_ms) of the measured refreshes

        def hook(message: Any) -> None:
            if isinstance(message, View.Refreshed) and message.view in done:
                parts.append((message.fetch_ms, message.show_ms))
                done[message.view].set()

        async with app.run_test(size=SIZE, message_hook=hook) as pilot:
            out: dict[str, Any] = {}
            for name, figure in (("hosts", "fleet"), ("gpus", "gpus"), ("tasks", "tasks")):
                parts.clear()
                times = await _times(app, pilot, name, done, samples)
                out.update(_stats(figure, times))
                out[f"{figure}_fetch_ms_median"] = round(statistics.median(p[0] for p in parts), 2)
                out[f"{figure}_show_ms_median"] = round(statistics.median(p[1] for p in parts), 2)
    finally:
        backend.close()
        writer.close()
    return out


async def _times(
    app: ConsoleApp, pilot: Any, name: str, done: dict[str, asyncio.Event], count: int
) -> list[float]:
    app.show_view(name)
    await pilot.pause(0.5)  # its first load (the whole history window) is not measured
    samples = []
    for _ in range(count):
        event = done[name] = asyncio.Event()
        started = time.perf_counter()
        app.views[name].reload()
        await asyncio.wait_for(event.wait(), 30)
        samples.append((time.perf_counter() - started) * 1000)
        await pilot.pause(REFRESH_GAP_S)
    done.pop(name, None)
    return samples


def _stats(figure: str, samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
    return {
        f"{figure}_refresh_ms_median": round(statistics.median(ordered), 2),
        f"{figure}_refresh_ms_p95": round(p95, 2),
    }


# -- 2. idle CPU -------------------------------------------------------------------------------


async def _idle(profile: Profile, seconds: float) -> dict[str, Any]:
    backend = Backend(profile)
    backend.start()
    try:
        app = ConsoleApp(backend, start="hosts")
        async with app.run_test(size=SIZE) as pilot:
            await _until_healthy(backend, pilot)
            await pilot.pause(2.0)  # let the first refreshes after the hello settle
            cpu, agent, wall = time.process_time(), _children_cpu_s(), time.perf_counter()
            await pilot.pause(seconds)
            cpu, agent = time.process_time() - cpu, _children_cpu_s() - agent
            wall = time.perf_counter() - wall
    finally:
        backend.close()
    return {
        "idle_cpu_percent": round(cpu / wall * 100, 2),
        "idle_agent_cpu_percent": round(agent / wall * 100, 2),
    }


async def _until_healthy(backend: Backend, pilot: Any) -> None:
    deadline = time.monotonic() + HEALTHY_WAIT_S
    while time.monotonic() < deadline:
        rows = await backend.call(lambda plane: list(plane.fleet.hosts().values()))
        if rows and all(row["healthy"] for row in rows):
            return
        await pilot.pause(0.2)
    raise TimeoutError(f"the local host was not healthy within {HEALTHY_WAIT_S:g} s")


def _children_cpu_s() -> float:
    """CPU seconds of this process's live children (the local agent), via /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc").iterdir():
        if not task.name.isdigit():
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # ppid
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# -- 3. memory ---------------------------------------------------------------------------------


async def _memory(profile: Profile, gpus: int, minutes: float) -> dict[str, Any]:
    open_control_plane(profile).close()  # the database exists before the writer opens it
    writer = Writer(profile, gpus)
    writer.start()
    backend = Backend(profile, control=False)
    backend.start()
    try:
        app = ConsoleApp(backend, start="hosts")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(3.0)
            start, sqlite_start = _rss_mb(), _sqlite_mb()
            await pilot.pause(minutes * 60)
            end, sqlite_end = _rss_mb(), _sqlite_mb()
    finally:
        backend.close()
        writer.close()
    sqlite = None if sqlite_start is None or sqlite_end is None else sqlite_end - sqlite_start
    return {
        "rss_start_mb": round(start, 1),
        "rss_end_mb": round(end, 1),
        "rss_growth_mb": round(end - start, 1),
        "sqlite_memory_growth_mb": None if sqlite is None else round(sqlite, 1),
        "telemetry_writes": writer.writes,
    }


def _sqlite_mb() -> float | None:
    """SQLite's own heap in this process (every connection's page cache), when the library
    says: the part of the RSS growth that SQLite's bounded caches account for."""
    try:
        import _sqlite3

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    used.restype = ctypes.c_int64
    return int(used()) / (1 << 20)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
