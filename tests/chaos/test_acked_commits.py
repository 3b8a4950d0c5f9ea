"""Acked commits survive kill -9: what a writer was told is committed is in the database.

A child commits small transactions as fast as it can (TaskQueue.submit of one task, submit_many
of three, or a raw jobs row through Store.write()) and prints each id only after COMMIT returned.
The parent kills it with SIGKILL 5-50 ms after it said it was ready, then checks that every id it
printed is present with the content it was written with, and that the file is sound. One
database per durability, reused across the iterations (so later kills land in a larger WAL).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bitinglip.control.store.db import open_store

from .harness import Child, storage_problems

ITERATIONS = {"normal": 70, "full": 40}


@pytest.mark.slow
@pytest.mark.parametrize("durability", sorted(ITERATIONS))
def test_every_acked_commit_survives_kill_9(tmp_path: Path, durability: str) -> None:
    rng = random.Random(durability)
    db = tmp_path / "state.db"
    open_store(db, durability).close()  # created once, so no child races to create it
    acked_tasks: dict[int, str] = {}
    acked_jobs: dict[int, str] = {}
    for iteration in range(ITERATIONS[durability]):
        child = Child.role("committer", "committer", str(db), durability)
        try:
            child.wait_for(lambda c: c.has_out("ready"), 20)
            time.sleep(rng.uniform(0.005, 0.05))
        finally:
            child.kill()
        assert child.proc.returncode == -9, f"iteration {iteration}\n{child.describe()}"
        for line in child.out_lines()[1:]:
            kind, row_id, tag = line.split()
            (acked_tasks if kind == "task" else acked_jobs)[int(row_id)] = tag
        _check(db, durability, acked_tasks, acked_jobs, iteration)
    # The kills must have hit a child at work, not only before its first commit.
    assert len(acked_tasks) > 10 * ITERATIONS[durability], len(acked_tasks)
    assert acked_jobs


def _check(
    db: Path, durability: str, tasks: dict[int, str], jobs: dict[int, str], iteration: int
) -> None:
    store = open_store(db, durability, create=False)
    try:
        problems = storage_problems(store)
        found_tasks = {
            i: tag
            for i, tag in store.conn.execute("SELECT id, json_extract(payload, '$.tag') FROM tasks")
        }
        found_jobs = dict(store.conn.execute("SELECT id, name FROM jobs"))
    finally:
        store.close()
    lost = [(i, tag, found_tasks.get(i)) for i, tag in tasks.items() if found_tasks.get(i) != tag]
    lost += [(i, tag, found_jobs.get(i)) for i, tag in jobs.items() if found_jobs.get(i) != tag]
    if lost:
        problems.append(f"acked rows lost or changed (id, acked, found): {lost[:10]}")
    assert not problems, f"after kill {iteration + 1} ({durability}): " + "; ".join(problems)
