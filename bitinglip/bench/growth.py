"""`bitinglip bench growth`: what the queue, the console and the database cost as they grow.

Each figure is taken at a small and a large size (10,000 and 1,000,000 tasks by default) in the
same run, on temporary databases, and compared:

- `e2e_per_s`: echo tasks through the local agent (claim → pipe → agent → result stored), the
  first `drain` of a backlog of N queued tasks, from the moment the agent is up;
- `tasks_refresh_ms`: the console's Tasks view refreshed (fetch and show) over those N tasks,
  median of `samples`; `status_ms` and `health_ms`: `bitinglip status`'s and the gateway's
  `/health` snapshot, medians;
- `jobs_submit_lines_per_s` and `jobs_submit_peak_rss_mb`: `bitinglip jobs submit` of an N-line
  echo file, a real subprocess (its peak RSS from `wait4` in a small wrapper process);
- `prune_size_ratio`: the database file (with its WAL) after pruning the outputs of N finished
  tasks shaped like 256-token generations (`growth_fill`), over its size before.

Targets: e2e at the large size ≥ 0.8 of the small; the Tasks view ≤ 50 ms, status and /health
≤ 20 ms, at the large size; jobs submit ≥ 50,000 lines/s with peak RSS ≤ 200 MB at the large
size; the pruned database ≤ 10% of before at the large size.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip.bench.growth_fill import finished_generations
from bitinglip.bench.tui import SIZE, _times
from bitinglip.config import HostConfig, Profile
from bitinglip.control import TaskSpec, open_control_plane
from bitinglip.gateway.bridge import health_snapshot
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from bitinglip.tui.views.base import View

TARGETS: dict[str, tuple[float, str]] = {  # figure -> (target, "min" or "max")
    "e2e_ratio": (0.8, "min"),
    "tasks_refresh_ms_large": (50.0, "max"),
    "status_ms_large": (20.0, "max"),
    "health_ms_large": (20.0, "max"),
    "jobs_submit_lines_per_s_large": (50_000.0, "min"),
    "jobs_submit_peak_rss_mb_large": (200.0, "max"),
    "prune_size_ratio_large": (0.10, "max"),
}
CHUNK = 50_000  # tasks per submit while filling a backlog
WEEK_S = 7 * 86_400

Progress = Callable[[str], None]


def run(
    profile: Profile,
    small: int = 10_000,
    large: int = 1_000_000,
    drain: int = 5_000,
    samples: int = 30,
    progress: Progress = lambda _s: None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"small": small, "large": large, "drain": min(drain, small)}
    steps = 4
    for size, n in (("small", small), ("large", large)):
        with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
            base = Path(tmp)
            progress(f"[{size} 1/{steps}] {n:,} queued echo tasks: end to end, views, status")
            figures = _queue(profile, base / "queue", n, out["drain"], samples)
            progress(f"[{size} 2/{steps}] jobs submit of {n:,} lines")
            figures.update(_jobs_submit(base / "jobs", n))
            progress(f"[{size} 3/{steps}] {n:,} finished generations")
            finished_generations(_db(profile, base / "prune"), n, time.time() - WEEK_S - 60)
            progress(f"[{size} 4/{steps}] prune their outputs")
            figures.update(_prune(profile, base / "prune"))
        out.update({f"{key}_{size}": value for key, value in figures.items()})
    out["e2e_ratio"] = round(out["e2e_per_s_large"] / out["e2e_per_s_small"], 3)
    out["targets"] = {
        k: f"{'>=' if how == 'min' else '<='} {t:g}" for k, (t, how) in TARGETS.items()
    }
    out["pass"] = {
        key: out[key] >= t if how == "min" else out[key] <= t for key, (t, how) in TARGETS.items()
    }
    out["ok"] = all(out["pass"].values())
    return out


def _local(profile: Profile, data_dir: Path) -> Profile:
    local = HostConfig(name="local", kind="local", max_concurrency=4)
    return replace(profile, data_dir=data_dir, hosts=(local,))


def _db(profile: Profile, data_dir: Path) -> Path:
    """A fresh state database (made by opening a control plane on it); its path."""
    prof = replace(profile, data_dir=data_dir, hosts=())
    with open_control_plane(prof):
        pass
    return prof.db_path


def _queue(profile: Profile, data_dir: Path, n: int, drain: int, samples: int) -> dict[str, Any]:
    prof = _local(profile, data_dir)
    with open_control_plane(prof) as plane:
        for at in range(0, n, CHUNK):
            plane.submit_many(
                [TaskSpec(kind="echo", payload={"i": i}) for i in range(at, min(n, at + CHUNK))]
            )
        with plane.embedded():
            first = plane.submit(TaskSpec(kind="echo", payload={"first": 1}, priority=9))
            plane.wait(first, timeout=120)  # the agent is up
            start = time.perf_counter()
            while plane.task_counts()["succeeded"] < drain + 1:
                time.sleep(0.002)
            e2e = drain / (time.perf_counter() - start)
        status = _median_ms(plane.status, samples)
        health = _median_ms(lambda: health_snapshot(plane, False, 0), samples)
    refresh = asyncio.run(_tasks_refresh(prof, samples))
    return {
        "e2e_per_s": round(e2e),
        "tasks_refresh_ms": refresh,
        "status_ms": status,
        "health_ms": health,
    }


def _median_ms(call: Callable[[], object], samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


async def _tasks_refresh(profile: Profile, samples: int) -> float:
    backend = Backend(replace(profile, hosts=()), control=False)
    backend.start()
    try:
        app = ConsoleApp(backend, start="tasks", tick_s=3600.0)
        done: dict[str, asyncio.Event] = {}

        def hook(message: Any) -> None:
            if isinstance(message, View.Refreshed) and message.view in done:
                done[message.view].set()

        async with app.run_test(size=SIZE, message_hook=hook) as pilot:
            times = await _times(app, pilot, "tasks", done, samples)
    finally:
        backend.close()
    return round(statistics.median(times), 2)


def _jobs_submit(data_dir: Path, n: int) -> dict[str, Any]:
    data_dir.mkdir(parents=True)
    path = data_dir / "batch.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            out.write(f'{{"kind": "echo", "id": "line-{i}", "payload": {{"i": {i}}}}}\n')
    command = [sys.executable, "-m", "bitinglip", "--data-dir", str(data_dir / "state")]
    command += ["jobs", "submit", str(path), "--json"]
    out_path, err_path = data_dir / "stdout", data_dir / "stderr"
    # Through a small wrapper process: a child forked from this (large) process would report
    # this process's RSS as its peak; the wrapper's child starts from the wrapper's.
    wrapper = [sys.executable, "-c", _WAIT4, json.dumps(command), str(out_path), str(err_path)]
    measured = json.loads(subprocess.run(wrapper, capture_output=True, check=True).stdout)
    status, elapsed = measured["status"], measured["elapsed"]
    if os.waitstatus_to_exitcode(status) != 0:
        said = err_path.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"jobs submit failed: {said[-1] if said else status}")
    total = json.loads(out_path.read_text())["total"]
    if total != n:
        raise RuntimeError(f"jobs submit queued {total} of {n} lines")
    return {
        "jobs_submit_lines_per_s": round(n / elapsed),
        "jobs_submit_peak_rss_mb": round(measured["maxrss_kb"] / 1024, 1),
    }


_WAIT4 = """
import json, os, subprocess, sys, time
command, out, err = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(out, "wb") as stdout, open(err, "wb") as stderr:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
print(json.dumps({"status": status, "elapsed": elapsed, "maxrss_kb": usage.ru_maxrss}))
"""


def _prune(profile: Profile, data_dir: Path) -> dict[str, Any]:
    prof = replace(profile, data_dir=data_dir, hosts=())
    with open_control_plane(prof) as plane:
        report = plane.db.prune(older_than_s=WEEK_S, outputs_only=True)
    return {
        "prune_s": round(report.seconds, 1),
        "db_mb_before_prune": round(report.file_bytes_before / 2**20, 1),
        "db_mb_after_prune": round(report.file_bytes_after / 2**20, 1),
        "prune_size_ratio": round(report.file_bytes_after / report.file_bytes_before, 3),
    }
