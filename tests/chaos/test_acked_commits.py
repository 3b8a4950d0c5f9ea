"""Acked commits survive kill -9: what a writer was told is committed is in the database.

A child commits small transactions as fast as it can (TaskQueue.submit of one task, submit_many
of three, or a raw jobs row through Store.write()) and prints each id only after COMMIT returned.
The parent kills it with SIGKILL 5-50 ms after it said it was ready, then checks that every id it
printed is present with the content it was written with, and that the file is sound. One
database per durability, reused across the iterations (so later kills land in a larger WAL).
The committers are forked by one zygote process (roles.py), which has done the imports once.
"""

from __future__ import annotations

import os
import random
import signal
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
    zygote = Child.role("zygote", "zygote", stdin=True)
    try:
        for iteration in range(ITERATIONS[durability]):
            for line in commit_then_die(zygote, db, durability, rng.uniform(0.005, 0.05)):
                kind, row_id, tag = line.split()
                (acked_tasks if kind == "task" else acked_jobs)[int(row_id)] = tag
            _check(db, durability, acked_tasks, acked_jobs, iteration)
    finally:
        zygote.kill()
    # The kills must have hit a child at work, not only before its first commit.
    assert len(acked_tasks) > 10 * ITERATIONS[durability], len(acked_tasks)
    assert acked_jobs


def commit_then_die(zygote: Child, db: Path, durability: str, after_s: float) -> list[str]:
    """A committer forked by `zygote`, SIGKILLed `after_s` after it said it was ready; the
    `task ID TAG` and `job ID TAG` lines it printed."""
    start = len(zygote.out_lines())

    def said(prefix: str) -> list[str]:
        return [line for line in zygote.out_lines()[start:] if line.startswith(prefix)]

    zygote.send(f"{db} {durability}")
    zygote.wait_for(lambda _: bool(said("ready") and said("forked ")), 20)
    time.sleep(after_s)
    pid = int(said("forked ")[0].split()[1])
    os.kill(pid, signal.SIGKILL)
    zygote.wait_for(lambda _: bool(said(f"exit {pid} ")), 20)
    assert said(f"exit {pid} ") == [f"exit {pid} -9"], zygote.describe()
    return said("task ") + said("job ")


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
