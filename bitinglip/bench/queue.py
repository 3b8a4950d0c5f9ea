"""`bitinglip bench queue`: the durable queue's throughput and latency, on a fresh database.

Measured in one run, with the durability mode in use, against a raw-SQLite baseline (a bare
table, one claim and one complete per task, two commits per task, the same pragmas) so that the
queue's own overhead is visible as a ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip.config import Profile
from bitinglip.control import TaskSpec, open_control_plane
from bitinglip.control.queue.tasks import TaskQueue  # the queue itself is what is measured
from bitinglip.control.store.db import connect, open_store

CLAIM_BATCH = 64


def run(
    profile: Profile, tasks: int = 5000, progress: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        # The queue alone: no hosts, so the controller runs echo in process.
        base = replace(profile, data_dir=Path(tmp), hosts=())
        out: dict[str, Any] = {"tasks": tasks, "durability": profile.durability}
        steps: list[tuple[str, Callable[[Profile, int], dict[str, float]]]] = [
            ("enqueue", _enqueue),
            ("bulk enqueue", _bulk),
            ("claim+complete", _claim_complete),
            ("raw sqlite baseline", _raw_baseline),
            ("end to end", _e2e),
            ("round trip", _rtt),
        ]
        for i, (name, step) in enumerate(steps):
            progress(f"[{i + 1}/{len(steps)}] {name}")
            out.update(step(replace(base, data_dir=Path(tmp) / name.replace(" ", "_")), tasks))
    out["claim_complete_vs_raw"] = round(
        out["claim_complete_per_s"] / out["raw_claim_complete_per_s"], 3
    )
    return out


def _echo(i: int) -> TaskSpec:
    return TaskSpec(kind="echo", payload={"i": i})


def _queue(profile: Profile) -> TaskQueue:
    return TaskQueue(open_store(profile.db_path, profile.durability), profile.queue)


def _enqueue(profile: Profile, n: int) -> dict[str, float]:
    queue = _queue(profile)
    specs = [_echo(i) for i in range(n)]
    start = time.perf_counter()
    for spec in specs:
        queue.submit(spec)
    elapsed = time.perf_counter() - start
    queue.store.close()
    return {"enqueue_per_s": round(n / elapsed)}


def _bulk(profile: Profile, n: int) -> dict[str, float]:
    queue = _queue(profile)
    count = max(n * 10, 50_000)
    specs = [_echo(i) for i in range(count)]
    start = time.perf_counter()
    queue.submit_many(specs)
    elapsed = time.perf_counter() - start
    queue.store.close()
    return {"bulk_enqueue_per_s": round(count / elapsed)}


def _claim_complete(profile: Profile, n: int) -> dict[str, float]:
    queue = _queue(profile)
    queue.submit_many([_echo(i) for i in range(2 * n)])
    start = time.perf_counter()
    done = 0
    while done < n:
        claims = queue.claim("bench", limit=CLAIM_BATCH, kinds=("echo",))
        queue.complete_many([(c.task_id, c.token, c.payload) for c in claims])
        done += len(claims)
    batched = done / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n // 4):
        (claim,) = queue.claim("bench", kinds=("echo",))
        queue.complete(claim.task_id, claim.token, claim.payload)
    single = (n // 4) / (time.perf_counter() - start)
    queue.store.close()
    return {
        "claim_complete_per_s": round(batched),
        "claim_complete_single_per_s": round(single),
        "claim_batch": CLAIM_BATCH,
    }


def _raw_baseline(profile: Profile, n: int) -> dict[str, float]:
    """A bare queue table: claim (UPDATE ... RETURNING) and complete, one commit each."""
    path = profile.db_path
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, profile.durability)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, state TEXT, payload TEXT, result TEXT)")
    conn.execute("CREATE INDEX q_ready ON q (id) WHERE state = 'queued'")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO q (state, payload) VALUES ('queued', ?)", [(f'{{"i":{i}}}',) for i in range(n)]
    )
    conn.execute("COMMIT")
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        task_id, payload = conn.execute(
            "UPDATE q SET state = 'running' WHERE id = (SELECT id FROM q WHERE state = 'queued'"
            " ORDER BY id LIMIT 1) RETURNING id, payload"
        ).fetchone()
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE q SET state = 'done', result = ? WHERE id = ?", (payload, task_id))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return {"raw_claim_complete_per_s": round(n / elapsed)}


def _e2e(profile: Profile, n: int) -> dict[str, float]:
    """Single durable submits while the embedded controller executes them; until all stored."""
    with open_control_plane(profile) as plane, plane.embedded():
        specs = [_echo(i) for i in range(n)]
        start = time.perf_counter()
        ids = [plane.submit(spec) for spec in specs]
        plane.wait(ids[-1])
        while plane.status()["tasks"]["succeeded"] < n:
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    return {"e2e_per_s": round(n / elapsed)}


def _rtt(profile: Profile, n: int) -> dict[str, float]:
    """One task at a time into an idle queue, until its result is readable."""
    samples: list[float] = []
    with open_control_plane(profile) as plane, plane.embedded():
        for i in range(min(n, 500)):
            time.sleep(0.002)  # let the controller go idle
            start = time.perf_counter()
            task = plane.wait(plane.submit(_echo(i)))
            samples.append(time.perf_counter() - start)
            assert task.result == {"i": i}
    samples.sort()
    return {
        "rtt_p50_ms": round(statistics.median(samples) * 1000, 3),
        "rtt_p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
    }
