"""Finished tasks of a chosen age, made fast: one INSERT ... SELECT over a recursive series per
table (the tasks, their events and output chunks), in one transaction. The triggers of
migration 6 count them as any insert."""

from __future__ import annotations

import sqlite3
from collections import Counter

from bitinglip.control.store.db import Store

SERIES = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)"


def add_finished(
    store: Store,
    n: int,
    finished_at: float,
    *,
    state: str = "succeeded",
    job_id: int | None = None,
    chunks: int = 2,
    events: int = 3,
    pad: int = 200,
) -> list[int]:
    """`n` tasks in `state` finished at `finished_at`, each with `events` events and `chunks`
    output chunks; a job's lines when `job_id` is given. Returns their ids."""
    with store.write() as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM tasks").fetchone()[0]
        conn.execute(
            f"{SERIES} INSERT INTO tasks (id, kind, state, payload, job_id, line_no, custom_id,"
            " max_attempts, run_after, lease_token, result, error, created_at, started_at,"
            " finished_at) SELECT ? + i - 1, 'echo', ?, json_object('n', i, 'pad',"
            " printf('%.*c', ?, 'p')), ?, CASE WHEN ? IS NULL THEN NULL ELSE i END,"
            " CASE WHEN ? IS NULL THEN NULL ELSE 'line-' || i END, 3, ?, 1,"
            " CASE WHEN ? = 'succeeded' THEN json_object('n', i, 'pad', printf('%.*c', ?, 'r'))"
            " END, CASE WHEN ? = 'succeeded' THEN NULL ELSE 'it broke' END, ?, ?, ? FROM s",
            (
                n,
                first,
                state,
                pad,
                job_id,
                job_id,
                job_id,
                finished_at,
                state,
                pad,
                state,
                finished_at,
                finished_at,
                finished_at,
            ),
        )
        last = first + n - 1
        conn.execute(
            f"{SERIES} INSERT INTO task_events (task_id, at, from_state, to_state, attempt,"
            " detail) SELECT t.id, t.finished_at, 'queued', 'running', 1, 'claimed by test'"
            " FROM tasks t, s WHERE t.id BETWEEN ? AND ?",
            (events, first, last),
        )
        conn.execute(
            f"{SERIES} INSERT INTO task_output (task_id, seq, data) SELECT t.id, s.i,"
            " printf('%.*c', ?, 'o') FROM tasks t, s WHERE t.id BETWEEN ? AND ?",
            (chunks, pad, first, last),
        )
    return list(range(first, last + 1))


def add_job(store: Store, total: int, fmt: str = "bitinglip") -> int:
    with store.write() as conn:
        cur = conn.execute(
            "INSERT INTO jobs (name, source, format, total, created_at) VALUES (?, NULL, ?, ?, 0)",
            ("aged", fmt, total),
        )
    assert cur.lastrowid is not None
    return cur.lastrowid


def counters_match_rows(conn: sqlite3.Connection) -> None:
    """`task_counts` and `job_counts` equal count(*) per state (and per job)."""
    rows = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    kept = {s: n for s, n in conn.execute("SELECT state, n FROM task_counts") if n}
    assert kept == rows
    by_job = Counter(
        {
            (j, s): n
            for j, s, n in conn.execute(
                "SELECT job_id, state, count(*) FROM tasks WHERE job_id IS NOT NULL"
                " GROUP BY job_id, state"
            )
        }
    )
    kept_jobs = Counter(
        {(j, s): n for j, s, n in conn.execute("SELECT job_id, state, n FROM job_counts") if n}
    )
    assert kept_jobs == by_job
