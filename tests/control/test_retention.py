"""Retention: what is pruned, what never is, the counters, the space given back, exports.

Real SQLite files and a real control loop in a thread; old tasks are made by SQL with the age
wanted (aged_tasks.py), since waiting a day is not a test."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitinglip.config import Profile, RetentionConfig
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.retention import BATCH, Cutoffs, Pruner
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.store import space
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import NotFoundError
from tests.control.aged_tasks import add_finished, add_job, counters_match_rows

HOUR = 3600.0
NO_HOSTS = "[controller]\nlease_s = 1.0\n[queue]\nreaper_interval_s = 0.1\n"
NOWHERE = {"gpu": "none"}  # no runner has this label: the task stays queued


@pytest.fixture
def hourly(make_profile: Callable[..., Profile]) -> Profile:
    """Echo in process (no hosts); outputs kept an hour, rows two."""
    return make_profile(body=NO_HOSTS + '[retention]\noutputs = "1h"\ntasks = "2h"\n')


@contextmanager
def running(profile: Profile) -> Iterator[ControlLoop]:
    loop = ControlLoop(profile)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert loop.is_controller.wait(10)
        yield loop
    finally:
        loop.stop()
        thread.join(10)
    assert not thread.is_alive() and loop.failure is None


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def one(store: Store, sql: str, *args: object) -> int:
    return int(store.conn.execute(sql, args).fetchone()[0])


def children(store: Store, ids: list[int]) -> int:
    marks = ",".join("?" * len(ids))
    return one(store, f"SELECT count(*) FROM task_events WHERE task_id IN ({marks})", *ids) + one(
        store, f"SELECT count(*) FROM task_output WHERE task_id IN ({marks})", *ids
    )


def snapshot(store: Store) -> str:
    """A digest of every task, event and output chunk (what a dry run must not change)."""
    digest = hashlib.sha256()
    for table in ("tasks", "task_events", "task_output", "task_counts", "job_counts", "jobs"):
        for row in store.conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
            digest.update(repr(row).encode())
    return digest.hexdigest()


def test_the_controller_prunes_old_work_and_never_touches_queued_or_running(
    hourly: Profile,
) -> None:
    plane = open_control_plane(hourly)
    store = plane.store
    now = time.time()
    job = add_job(store, 2 * BATCH)
    gone = add_finished(store, 2 * BATCH, now - 2 * HOUR - 60, job_id=job, state="failed")
    pruned = add_finished(store, 2 * BATCH + 7, now - HOUR - 60)  # several batches
    kept = add_finished(store, 5, now - HOUR + 120)
    queued = plane.submit(TaskSpec(kind="echo", payload={"p": "q"}, labels=NOWHERE))
    running_id = plane.queue.submit(TaskSpec(kind="chat", payload={"p": "r"}, model="m"))
    (claim,) = plane.queue.claim("elsewhere", kinds=("chat",), lease_s=3600)
    with store.write() as conn:  # an old finished_at on live tasks must not fool the prune
        conn.execute(
            "UPDATE tasks SET finished_at = ? WHERE id IN (?, ?)",
            (now - 9 * HOUR, queued, claim.task_id),
        )
    before = {i: plane.task(i) for i in (queued, running_id)}
    with running(hourly):
        fresh = plane.submit_many([TaskSpec(kind="echo", payload={"n": i}) for i in range(300)])
        wait_until(
            "the controller to prune",
            lambda: (
                one(store, "SELECT count(*) FROM tasks WHERE pruned_at IS NOT NULL") == len(pruned)
                and one(store, "SELECT count(*) FROM tasks WHERE id <= ?", gone[-1]) == 0
            ),
        )
        assert plane.wait(fresh[-1], 10).state == TaskState.SUCCEEDED
    for task_id, was in before.items():
        now_task = plane.task(task_id)
        assert (now_task.state, now_task.payload, now_task.pruned_at) == (
            was.state,
            was.payload,
            None,
        )
    assert plane.task(running_id).lease_token == claim.token  # still running, same lease
    assert children(store, gone + pruned) == 0
    assert children(store, kept) == 5 * (3 + 2)
    sample = plane.task(pruned[0])
    assert (sample.state, sample.result, sample.payload) == (TaskState.SUCCEEDED, None, {})
    assert sample.pruned_at is not None and plane.events(sample.id) == []
    assert all(plane.task(i).result is not None and plane.task(i).pruned_at is None for i in kept)
    assert plane.task(fresh[0]).result == {"n": 0}
    counters_match_rows(store.conn)
    assert plane.job(job).deleted == 2 * BATCH
    plane.close()


def test_a_task_finished_a_second_before_the_cut_off_survives(hourly: Profile) -> None:
    """The boundary, on a fixed clock, while a controller (keeping everything) runs."""
    forever = RetentionConfig(outputs=float("inf"), tasks=float("inf"))
    profile = dataclasses.replace(hourly, retention=forever)
    store = open_store(profile.db_path)
    now = 1_900_000_000.0
    cut = Cutoffs.of(hourly.retention, now)
    assert cut.outputs_before is not None and cut.rows_before is not None
    row_old, row_young = (
        add_finished(store, 1, cut.rows_before - 1),
        add_finished(store, 1, cut.rows_before + 1),
    )
    out_old, out_young = (
        add_finished(store, 1, cut.outputs_before - 1),
        add_finished(store, 1, cut.outputs_before + 1),
    )
    with running(profile):
        done = Pruner(store, clock=lambda: now).prune(cut)
    assert (done.tasks_deleted, done.outputs_pruned) == (1, 2)  # row_young keeps its row only
    ids = {i for (i,) in store.conn.execute("SELECT id FROM tasks")}
    assert row_old[0] not in ids and {row_young[0], out_old[0], out_young[0]} <= ids
    pruned = {i for (i,) in store.conn.execute("SELECT id FROM tasks WHERE pruned_at IS NOT NULL")}
    assert pruned == {row_young[0], out_old[0]}
    assert children(store, out_young) == 5
    counters_match_rows(store.conn)
    store.close()


def test_a_dry_run_changes_nothing_and_counts_what_a_prune_removes(plane: ControlPlane) -> None:
    now = time.time()
    add_finished(plane.store, 1500, now - 40 * 86400)  # past the default 30d: rows go
    add_finished(plane.store, 1200, now - 8 * 86400)  # past 7d: outputs go
    add_finished(plane.store, 10, now - 60)
    before = snapshot(plane.store)
    dry = plane.db.prune(dry_run=True)
    assert snapshot(plane.store) == before
    assert (dry.pruned.tasks_deleted, dry.pruned.outputs_pruned) == (1500, 1200)
    real = plane.db.prune()
    assert real.pruned.to_dict() == dry.pruned.to_dict()
    assert (real.pruned.events, real.pruned.output_chunks) == (2700 * 3, 2700 * 2)
    assert plane.db.prune().pruned.tasks == 0  # nothing left past the cut-offs
    counters_match_rows(plane.store.conn)


def test_pruning_gives_the_space_back(plane: ControlPlane) -> None:
    add_finished(plane.store, 20_000, time.time() - 86400, pad=400)
    space.truncate_wal(plane.store)
    full = sum(space.file_bytes(plane.store.path))
    report = plane.db.prune(older_than_s=3600, outputs_only=True)
    assert report.pruned.outputs_pruned == 20_000 and report.auto_vacuum == "incremental"
    assert report.pages_given_back > 0 and report.hint is None
    assert report.file_bytes_after <= 0.2 * full, (report.file_bytes_after, full)
    assert plane.db.stats().freelist_pages == 0


def test_a_database_made_without_incremental_vacuum_is_told_how_to_convert(
    plane: ControlPlane,
) -> None:
    plane.store.conn.execute("PRAGMA auto_vacuum = NONE")
    plane.store.conn.execute("VACUUM")
    assert space.auto_vacuum(plane.store) == "none"
    add_finished(plane.store, 3000, time.time() - 86400)
    report = plane.db.prune(older_than_s=60)
    assert report.pages_given_back == 0 and report.hint and "--vacuum" in report.hint
    add_finished(plane.store, 3000, time.time() - 86400)
    report = plane.db.prune(older_than_s=60, vacuum=True)
    assert report.vacuumed and report.auto_vacuum == "incremental" and report.hint is None
    assert plane.db.stats().freelist_pages == 0


def test_a_pruned_task_cannot_be_retried(plane: ControlPlane) -> None:
    (task_id,) = add_finished(plane.store, 1, time.time() - 86400, state="failed")
    plane.db.prune(older_than_s=60, outputs_only=True)
    assert plane.retry([task_id]) == {task_id: "cannot retry: retention pruned its payload"}
    assert plane.task(task_id).state == TaskState.FAILED


def test_export_of_a_pruned_job_says_so_on_every_line(plane: ControlPlane) -> None:
    job = add_job(plane.store, 4)
    ids = add_finished(plane.store, 4, time.time() - 86400, job_id=job)
    plane.db.prune(older_than_s=60, outputs_only=True)
    lines = [json.loads(line) for line in plane.export_job(job)]
    assert [(ln["line"], ln["error_kind"], ln["result"]) for ln in lines] == [
        (n, "pruned", None) for n in (1, 2, 3, 4)
    ]
    assert all("pruned by retention" in ln["error"] and ln["pruned_at"] for ln in lines)
    with plane.store.write() as conn:  # two rows deleted, as retention's rows walk does
        conn.execute("DELETE FROM task_events WHERE task_id IN (?, ?)", ids[:2])
        conn.execute("DELETE FROM tasks WHERE id IN (?, ?)", ids[:2])
    lines = [json.loads(line) for line in plane.export_job(job)]
    assert [ln["line"] for ln in lines] == [3, 4, None, None]
    assert [ln["error_kind"] for ln in lines] == ["pruned"] * 4
    assert "2 of job" in lines[-1]["error"]
    plane.db.prune(older_than_s=60)
    with pytest.raises(NotFoundError, match=f"job {job}: all 4 of its tasks were deleted"):
        plane.export_job(job)
    assert plane.job(job).to_dict()["deleted"] == 4 and plane.job(job).done == 4


def test_openai_export_of_pruned_lines_is_a_pruned_error(
    plane: ControlPlane, tmp_path: Path
) -> None:
    line = {
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}]},
    }
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in (1, 2)))
    job = plane.submit_job(path)
    claims = plane.queue.claim("runner", limit=2, kinds=("chat",))
    for claim in claims:
        plane.queue.complete(claim.task_id, claim.token, {"text": "hello"})
    with plane.store.write() as conn:
        conn.execute(
            "UPDATE tasks SET finished_at = finished_at - 86400 WHERE job_id = ?", (job.id,)
        )
    plane.db.prune(older_than_s=3600, outputs_only=True)
    lines = [json.loads(text) for text in plane.export_job(job.id)]
    assert [(ln["custom_id"], ln["response"], ln["error"]["code"]) for ln in lines] == [
        ("r1", None, "pruned"),
        ("r2", None, "pruned"),
    ]
    plane.db.prune(older_than_s=3600)
    with pytest.raises(NotFoundError, match="nothing is left to export"):
        plane.export_job(job.id)


def test_every_batch_query_is_bounded_by_an_index(plane: ControlPlane) -> None:
    """The statements a batch runs, traced and explained: ranges of `tasks_finished` and
    lookups by key; no scan of a task table, no sort of one."""
    now = time.time()
    add_finished(plane.store, 50, now - 40 * 86400)
    add_finished(plane.store, 50, now - 8 * 86400)
    traced: list[str] = []
    plane.store.conn.set_trace_callback(traced.append)
    try:
        Pruner(plane.store).prune(Cutoffs.of(RetentionConfig(), now), batch=20)
    finally:
        plane.store.conn.set_trace_callback(None)
    copy = "CREATE TEMP TABLE pruning AS "  # the rows rewritten smaller: explain its SELECT
    traced = [t.removeprefix(copy) for t in traced if "temp.pruning" not in t]
    statements = [t for t in traced if t.lstrip().startswith(("SELECT", "DELETE", "UPDATE"))]
    assert len(statements) > 20
    for statement in statements:
        plan = " | ".join(
            row[3] for row in plane.store.conn.execute(f"EXPLAIN QUERY PLAN {statement}")
        )
        assert "TEMP B-TREE" not in plan, (statement, plan)
        for table in ("tasks", "task_events", "task_output"):
            assert f"SCAN {table} " not in f"{plan} ", (statement, plan)
    candidates = [t for t in statements if "INDEXED BY tasks_finished" in t]
    assert candidates and all("LIMIT 20" in t for t in candidates)
