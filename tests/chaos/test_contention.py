"""Contention: several processes write the same database at once.

The main test queues 4,000 echo tasks; four claimer processes start together and each does 1,000
claim(limit=1) + complete pairs (8,000 write transactions in all). No "database is locked" (nor
any other sqlite3 or BitinglipError) may reach a caller, no claim may come back empty while work
is queued, every completion must be accepted, and the result must be exact: every task succeeded
once, by the process that claimed it, with exactly one queued->running and one
running->succeeded event.

With durability "full" every commit holds the write lock across an fsync. SQLite's busy handler
alone lets a waiting writer starve there (it polls with sleeps of up to 100 ms and keeps no
queue); writers queue on an flock instead, and the last test is the reproduction of that bug.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import QueueConfig
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import open_store

from .harness import Child, queue_problems, rows

PROCESSES = 4
PER_PROCESS = 1000
TOTAL = PROCESSES * PER_PROCESS


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_four_processes_claim_and_complete_without_lock_errors(
    tmp_path: Path, durability: str
) -> None:
    db = tmp_path / "state.db"
    store = open_store(db, durability)
    TaskQueue(store, QueueConfig()).submit_many([TaskSpec("echo", {"n": n}) for n in range(TOTAL)])
    summaries = _race([f"claimer-{k}" for k in range(PROCESSES)], db, durability, PER_PROCESS)

    # Exact, whatever the lock did: no task claimed twice, and the log agrees with the rows.
    claimed_by = {i: s["owner"] for s in summaries for i in s["completed"]}
    completions = sum(len(s["completed"]) for s in summaries)
    assert completions == len(claimed_by), "a task was completed by two processes"
    assert queue_problems(store, {}) == []

    errors = {f"{s['owner']}: {e}": n for s in summaries for e, n in s["errors"].items()}
    assert not errors, f"errors reached the caller (error: times): {errors}"
    for summary in summaries:
        owner = summary["owner"]
        assert summary["stale"] == 0, f"{owner}: {summary['stale']} completions were refused"
        assert summary["empty_claims"] == 0, f"{owner}: claims came back empty with work queued"
        assert len(summary["completed"]) == PER_PROCESS, owner
    assert sorted(claimed_by) == list(range(1, TOTAL + 1)), "a task was never claimed"

    tasks = rows(store)
    not_once = [
        t.id for t in tasks.values() if (t.state, t.attempt, t.lease_token) != ("succeeded", 1, 1)
    ]
    assert not not_once, f"tasks not succeeded exactly once, first attempt: {not_once[:20]}"
    with store.read() as conn:
        moves = conn.execute(
            "SELECT task_id, from_state, to_state, detail FROM task_events ORDER BY id"
        ).fetchall()
    expected: set[tuple[int, str, str, str | None]]
    expected = {(i, "queued", "running", f"claimed by {o}") for i, o in claimed_by.items()}
    expected |= {(i, "running", "succeeded", None) for i in claimed_by}
    assert len(moves) == 2 * TOTAL, f"{len(moves)} events for {TOTAL} tasks; want two each"
    assert set(moves) == expected, sorted(set(moves) ^ expected)[:20]
    store.close()


@pytest.mark.slow
def test_a_claim_is_not_starved_by_a_writer_of_short_transactions(tmp_path: Path) -> None:
    """One process commits 5 ms transactions back to back (none of them long); a claim from
    another process must still get its turn within a few seconds."""
    db = tmp_path / "state.db"
    store = open_store(db)
    TaskQueue(store, QueueConfig()).submit(TaskSpec("echo", {}))
    store.close()
    hog = Child.role("hog", "hog", str(db), "--seconds", "15")
    try:
        hog.wait_for(lambda c: c.has_out("ready"), 20)
        summary = _race(["claimer"], db, "normal", 1, timeout=3.0)[0]
    finally:
        hog.kill()
    assert not summary["errors"] and len(summary["completed"]) == 1, summary


def _race(
    owners: list[str], db: Path, durability: str, count: int, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Start one claimer per owner, let them go at once, return their JSON summaries."""
    children = [
        Child.role(o, "claimer", str(db), durability, o, "--count", str(count), stdin=True)
        for o in owners
    ]
    try:
        for child in children:
            child.wait_for(lambda c: c.has_out("ready"), 20)
        for child in children:
            child.send("go")
        for child in children:
            child.wait_for(lambda c: c.has_out("{"), timeout)
            assert child.finish(10) == 0, child.describe()
    finally:
        for child in children:
            child.kill()
    return [json.loads(c.out_lines()[-1]) for c in children]
