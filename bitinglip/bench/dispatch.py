"""`bitinglip bench dispatch`: echo tasks through the local agent, and the agent's footprint.

- `e2e_per_s`: single durable submits, executed by the local agent (claim → pipe → agent →
  pipe → result stored), until every result is stored;
- `rtt_p50_ms`, `rtt_p99_ms`: one task into an idle queue until its result is readable;
- the agent alone: `agent_rss_mb` with no model loaded, `agent_cold_start_ms` (spawn to
  `hello`), `agent_telemetry_cpu_pct` (share of one core at 1 Hz telemetry, over 5 s).
"""

from __future__ import annotations

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

from bitinglip.config import HostConfig, Profile
from bitinglip.control import TaskSpec, open_control_plane


def run(
    profile: Profile, tasks: int = 5000, progress: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    local = HostConfig(name="local", kind="local", max_concurrency=4)
    out: dict[str, Any] = {"tasks": tasks, "durability": profile.durability}
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        bench = replace(profile, data_dir=Path(tmp), hosts=(local,))
        progress("[1/3] end to end through the local agent")
        out.update(_e2e(replace(bench, data_dir=Path(tmp) / "e2e"), tasks))
        progress("[2/3] round trip")
        out.update(_rtt(replace(bench, data_dir=Path(tmp) / "rtt"), min(tasks, 500)))
    progress("[3/3] agent footprint")
    out.update(_footprint())
    return out


def _echo(i: int) -> TaskSpec:
    return TaskSpec(kind="echo", payload={"i": i})


def _e2e(profile: Profile, n: int) -> dict[str, float]:
    with open_control_plane(profile) as plane, plane.embedded():
        plane.wait(plane.submit(_echo(-1)), timeout=30)  # the agent is up
        start = time.perf_counter()
        ids = [plane.submit(_echo(i)) for i in range(n)]
        plane.wait(ids[-1], timeout=120)
        while plane.status()["tasks"]["succeeded"] < n + 1:
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
        ran_on = plane.task(ids[0]).ran_on
    return {"e2e_per_s": round(n / elapsed), "ran_on": ran_on}  # type: ignore[dict-item]


def _rtt(profile: Profile, n: int) -> dict[str, float]:
    samples: list[float] = []
    with open_control_plane(profile) as plane, plane.embedded():
        plane.wait(plane.submit(_echo(-1)), timeout=30)
        for i in range(n):
            time.sleep(0.002)
            start = time.perf_counter()
            task = plane.wait(plane.submit(_echo(i)), timeout=10)
            samples.append(time.perf_counter() - start)
            assert task.result == {"i": i}, task
    samples.sort()
    return {
        "rtt_p50_ms": round(statistics.median(samples) * 1000, 3),
        "rtt_p99_ms": round(samples[max(int(len(samples) * 0.99) - 1, 0)] * 1000, 3),
    }


def _footprint() -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitinglip_agent", "--telemetry-interval", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    hello = json.loads(proc.stdout.readline())
    cold_ms = (time.perf_counter() - start) * 1000
    assert hello["type"] == "hello", hello
    proc.stdout.readline()  # the first telemetry snapshot
    cpu0, wall0 = _cpu_s(proc.pid), time.perf_counter()
    for _ in range(5):
        proc.stdout.readline()
    cpu_pct = (_cpu_s(proc.pid) - cpu0) / (time.perf_counter() - wall0) * 100
    rss_mb = _rss_mb(proc.pid)
    proc.stdin.close()
    proc.wait(10)
    return {
        "agent_rss_mb": round(rss_mb, 1),
        "agent_cold_start_ms": round(cold_ms, 1),
        "agent_telemetry_cpu_pct": round(cpu_pct, 3),
    }


def _cpu_s(pid: int) -> float:
    """CPU time of all the process's threads, in ns precision (schedstat), else in ticks."""
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
