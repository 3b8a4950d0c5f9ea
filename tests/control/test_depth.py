"""The queue's per-step work does not grow with the backlog or the history (issue 15).

Each operation the control loop, the console, `status`, `/health` and `/metrics` run per step is
measured in SQLite virtual-machine instructions (a progress handler counts them: deterministic,
not a timing) on a small database and on one twenty times larger, side by side. An operation
whose cost follows the table shows a ratio near 20; a bounded one stays near 1. The counters the
triggers keep are checked against `count(*)` after every kind of move.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile
from bitinglip.control.fleet.views import recent_tasks
from bitinglip.control.queue import views as task_views
from bitinglip.control.queue import waiting
from bitinglip.control.queue.pace import job_paces
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.queue.usage import usage
from bitinglip.control.store.db import open_store

SMALL, LARGE = 1_000, 20_000
NOW = 2_000_000_000.0
MODEL_KINDS = ("generate", "chat", "embed")
ALL_KINDS = ("echo", "generate", "chat", "embed", "load", "unload", "pull", "remove")


def _fill(queue: TaskQueue, n: int) -> None:
    """`n` queued echo tasks, `n` queued generate tasks of two models (all of m0 first), a job
    of `n` lines, and `n` finished tasks with token usage."""
    conn = queue.store.conn
    with queue.store.write():
        conn.execute(
            "INSERT INTO jobs (id, name, source, format, total, created_at)"
            " VALUES (1, 'big', NULL, 'bitinglip', ?, 0)",
            (n,),
        )
    queue.submit_many([TaskSpec(kind="echo", payload={"i": i}) for i in range(n)])
    queue.submit_many(
        [
            TaskSpec(kind="generate", model=f"m{i * 2 // n}", payload={"prompt": "x"})
            for i in range(n)
        ]
    )
    queue.submit_many(
        [TaskSpec(kind="echo", payload={"i": i}, job_id=1, line_no=i + 1) for i in range(n)]
    )
    queue.submit_many([TaskSpec(kind="echo", payload={"i": i}, priority=9) for i in range(n)])
    usage_result = {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    done = 0
    while done < n:  # the priority-9 ones, an hour before the operations measured
        claims = queue.claim("filler", limit=min(500, n - done), kinds=("echo",))
        queue.complete_many([(c.task_id, c.token, usage_result) for c in claims])
        done += len(claims)


def _instructions(queue: TaskQueue, operation: Callable[[], Any]) -> int:
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    queue.store.conn.set_progress_handler(tick, 100)
    try:
        operation()
    finally:
        queue.store.conn.set_progress_handler(None, 0)
    return ticks[0] * 100


def _operations(queue: TaskQueue) -> dict[str, Callable[[], Any]]:
    store = queue.store

    def claim_and_complete(kinds: tuple[str, ...], **kw: Any) -> Callable[[], None]:
        def run() -> None:
            claims = queue.claim("r", limit=8, kinds=kinds, **kw)
            assert claims, kinds
            queue.complete_many([(c.task_id, c.token, {"ok": 1}) for c in claims])

        return run

    return {
        "claim+complete echo": claim_and_complete(("echo",)),
        "claim+complete a model": claim_and_complete(MODEL_KINDS, host="h", models={"m1"}),
        "claim of kinds with nothing queued": lambda: queue.claim("r", kinds=("pull", "remove")),
        "next backoff due": lambda: queue.next_due(ALL_KINDS),
        "counts (status, /health, console)": lambda: task_views.counts(store),
        "a job's counts (jobs show)": lambda: task_views.counts(store, job_id=1),
        "usage (/metrics)": lambda: usage(store, 5, NOW - 60),
        "the queue ahead, capped (gateway)": lambda: task_views.queued_at_or_above(store, 0, 64),
        "placement's demand": lambda: waiting.demand(store, MODEL_KINDS),
        "a job's pace (Jobs view)": lambda: job_paces(store, [1]),
        "a host's recent tasks (its screen)": lambda: recent_tasks(store, "idle", window=500),
    }


def _costs(profile: Profile, tmp: Path, n: int) -> dict[str, int]:
    store = open_store(tmp / f"depth-{n}.db")
    clock = [NOW - 3600]
    queue = TaskQueue(store, profile.queue, clock=lambda: clock[0])
    _fill(queue, n)
    clock[0] = NOW
    return {name: _instructions(queue, op) for name, op in _operations(queue).items()}


@pytest.fixture(scope="module")
def costs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], dict[str, int]]:
    from bitinglip.config import parse_profile

    profile = parse_profile("", name="depth", path=None, data_dir=tmp_path_factory.mktemp("d"))
    tmp = tmp_path_factory.mktemp("depth")
    return _costs(profile, tmp, SMALL), _costs(profile, tmp, LARGE)


@pytest.mark.parametrize(
    "operation",
    [
        "claim+complete echo",
        "claim+complete a model",
        "claim of kinds with nothing queued",
        "next backoff due",
        "counts (status, /health, console)",
        "a job's counts (jobs show)",
        "usage (/metrics)",
        "the queue ahead, capped (gateway)",
        "placement's demand",
        "a job's pace (Jobs view)",
        "a host's recent tasks (its screen)",
    ],
)
def test_per_step_work_does_not_grow_with_the_backlog(
    costs: tuple[dict[str, int], dict[str, int]], operation: str
) -> None:
    small, large = costs
    # 20x the rows: a scan would cost ~20x; a B-tree search a few more instructions per level.
    assert large[operation] <= 2 * small[operation] + 2_000, (operation, small, large)


def test_the_counters_equal_the_rows_after_every_kind_of_move(profile: Profile) -> None:
    queue = TaskQueue(open_store(profile.db_path), profile.queue)
    conn = queue.store.conn
    conn.execute(
        "INSERT INTO jobs (id, name, source, format, total, created_at)"
        " VALUES (1, 'j', NULL, 'bitinglip', 3, 0)"
    )
    queue.submit_many([TaskSpec(kind="echo", payload={}, job_id=1, line_no=i) for i in range(3)])
    queue.submit_many([TaskSpec(kind="generate", model="m", payload={}) for _ in range(6)])
    claims = queue.claim("r", limit=9, kinds=("echo", "generate"))
    usage_result = {"usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    queue.complete(claims[0].task_id, claims[0].token, usage_result)
    queue.fail(claims[1].task_id, claims[1].token, "bad", retryable=False)
    queue.fail(claims[2].task_id, claims[2].token, "lost", retryable=True)
    queue.release([(claims[3].task_id, claims[3].token)])
    queue.cancel([claims[4].task_id])
    queue.retry([claims[1].task_id])
    (pace,) = job_paces(queue.store, [1]).values()
    first, last = conn.execute(
        "SELECT min(started_at), max(finished_at) FROM tasks WHERE job_id = 1"
    ).fetchone()
    # The last finish is kept when a retry clears it from its row (and when rows are pruned).
    assert pace.first_started_at == first and pace.last_finished_at >= last
    with queue.store.write():
        conn.execute("DELETE FROM task_events WHERE task_id = ?", (claims[0].task_id,))
        conn.execute("DELETE FROM tasks WHERE id = ?", (claims[0].task_id,))

    rows = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    assert {s: n for s, n in task_views.counts(queue.store).items() if n} == rows
    job_rows = dict(
        conn.execute("SELECT state, count(*) FROM tasks WHERE job_id = 1 GROUP BY state")
    )
    assert {s: n for s, n in task_views.counts(queue.store, job_id=1).items() if n} == job_rows
    groups = conn.execute(
        "SELECT model, kind, sum(n) FROM queued_groups WHERE n > 0 GROUP BY model, kind"
    ).fetchall()
    queued = conn.execute(
        "SELECT model, kind, count(*) FROM tasks WHERE state = 'queued' AND model IS NOT NULL"
        " GROUP BY model, kind"
    ).fetchall()
    assert groups == queued
    totals = dict(conn.execute("SELECT name, n FROM queue_totals"))
    assert totals == {"prompt_tokens": 5, "completion_tokens": 7}  # kept after the row went


def test_a_jobs_tasks_are_read_by_pages_in_line_order(profile: Profile) -> None:
    queue = TaskQueue(open_store(profile.db_path), profile.queue)
    queue.store.conn.execute(
        "INSERT INTO jobs (id, name, source, format, total, created_at)"
        " VALUES (1, 'j', NULL, 'bitinglip', 50, 0)"
    )
    lines = [n * 2 + 1 for n in range(50)]  # blank lines between them
    queue.submit_many([TaskSpec(kind="echo", payload={"n": n}, job_id=1, line_no=n) for n in lines])
    assert [t.line_no for t in task_views.job_tasks(queue.store, 1, page=7)] == lines
    assert [t.line_no for t in task_views.job_tasks(queue.store, 1, page=50)] == lines
