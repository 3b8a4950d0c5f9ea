"""Compare `bitinglip bench queue` with Huey's SqliteHuey on this machine, in one run.

Huey runs with its defaults (WAL, synchronous FULL) and one worker thread; its round trip is
measured with the consumer's polling tuned to 1 ms (its default polling gives ~100 ms). Then
`bitinglip bench queue --json` runs in a subprocess (durability "normal", the default, then
"full" like Huey), then `bitinglip bench dispatch --json` (echo through the local agent), and the
ratios are printed with the targets
of issue 2 as one JSON object. Exit status 0 whether or not targets are met: it reports.

    python tests/bench/huey_compare.py [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def huey_numbers(tasks: int) -> dict[str, float]:
    from huey import SqliteHuey

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        huey = SqliteHuey(filename=str(Path(tmp) / "huey.db"))

        @huey.task()  # type: ignore[untyped-decorator]
        def echo(x: int) -> int:
            return x

        start = time.perf_counter()
        for i in range(tasks):
            echo(i)
        out["enqueue_per_s"] = tasks / (time.perf_counter() - start)

        consumer = huey.create_consumer(
            workers=1,
            worker_type="thread",
            initial_delay=0.001,
            backoff=1.0,
            max_delay=0.001,
            periodic=False,
        )
        start = time.perf_counter()
        consumer.start()
        _wait_results(huey, tasks)
        out["drain_per_s"] = tasks / (time.perf_counter() - start)

        start = time.perf_counter()
        for i in range(tasks):
            echo(i)
        _wait_results(huey, tasks)
        out["e2e_per_s"] = tasks / (time.perf_counter() - start)

        samples = []
        for i in range(300):
            time.sleep(0.002)
            start = time.perf_counter()
            result = echo(i)
            assert result.get(blocking=True, backoff=1.0, max_delay=0.0002, timeout=5) == i
            samples.append(time.perf_counter() - start)
        out["rtt_p50_ms"] = statistics.median(samples) * 1000
        consumer.stop(graceful=True)
    return {k: round(v, 3) for k, v in out.items()}


def _wait_results(huey: Any, count: int) -> None:
    deadline = time.monotonic() + 120
    while huey.result_count() < count:
        if time.monotonic() > deadline:
            raise TimeoutError("huey did not drain")
        time.sleep(0.001)
    huey.storage.flush_results()


def _bitinglip(tasks: int, durability: str, bench: str = "queue") -> dict[str, Any]:
    env = {**os.environ, "BITINGLIP_DURABILITY": durability}
    command = [sys.executable, "-m", "bitinglip", "bench", bench, "--tasks", str(tasks), "--json"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    args = parser.parse_args()
    huey = huey_numbers(args.tasks)
    ours = _bitinglip(args.tasks, "normal")
    ours_full = _bitinglip(args.tasks, "full")
    dispatch = _bitinglip(args.tasks, "normal", "dispatch")
    ratios = {
        "dispatch_e2e_vs_huey_enqueue_drain": dispatch["e2e_per_s"] / huey["e2e_per_s"],
        "enqueue_vs_huey": ours["enqueue_per_s"] / huey["enqueue_per_s"],
        "e2e_vs_huey_enqueue_drain": ours["e2e_per_s"] / huey["e2e_per_s"],
        "claim_complete_vs_raw_sqlite": ours["claim_complete_per_s"]
        / ours["raw_claim_complete_per_s"],
    }
    targets = {
        "enqueue_vs_huey": ratios["enqueue_vs_huey"] >= 3,
        "bulk_enqueue_per_s": ours["bulk_enqueue_per_s"] >= 100_000,
        "e2e_vs_huey_enqueue_drain": ratios["e2e_vs_huey_enqueue_drain"] >= 3,
        "claim_complete_vs_raw_sqlite": ratios["claim_complete_vs_raw_sqlite"] >= 0.5,
        "rtt_p50_ms": ours["rtt_p50_ms"] <= 2,
        "dispatch_e2e_vs_huey_enqueue_drain": ratios["dispatch_e2e_vs_huey_enqueue_drain"] >= 3,
        "dispatch_rtt_p50_ms": dispatch["rtt_p50_ms"] <= 2,
        "agent_rss_mb": dispatch["agent_rss_mb"] <= 40,
        "agent_cold_start_ms": dispatch["agent_cold_start_ms"] <= 500,
        "agent_telemetry_cpu_pct": dispatch["agent_telemetry_cpu_pct"] <= 1,
    }
    print(
        json.dumps(
            {
                "huey": huey,
                "bitinglip": ours,
                "bitinglip_full": ours_full,
                "bitinglip_dispatch": dispatch,
                "ratios": {k: round(v, 2) for k, v in ratios.items()},
                "targets_met": targets,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
