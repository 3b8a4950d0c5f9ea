"""The durable queue: states, leases, fencing, retries, cancel, idempotency, placement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from bitinglip.config import Profile
from bitinglip.control.queue import views as task_views
from bitinglip.control.queue.tasks import MOVES, TaskQueue, TaskSpec, TaskState
from bitinglip.control.store.db import open_store
from bitinglip.errors import InputError, StaleLeaseError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(profile: Profile, clock: Clock) -> TaskQueue:
    return TaskQueue(open_store(profile.db_path), profile.queue, clock=clock)


def echo(i: int = 0, **kw: object) -> TaskSpec:
    return TaskSpec(kind="echo", payload={"i": i}, **kw)  # type: ignore[arg-type]


def state(queue: TaskQueue, task_id: int) -> TaskState:
    return task_views.get_task(queue.store, task_id).state


def test_submit_claim_complete_records_every_transition(queue: TaskQueue) -> None:
    task_id = queue.submit(echo(7))
    (claim,) = queue.claim("runner-a")
    assert (claim.task_id, claim.payload, claim.attempt) == (task_id, {"i": 7}, 1)
    assert state(queue, task_id) == TaskState.RUNNING
    queue.complete(task_id, claim.token, {"ok": True})
    task = task_views.get_task(queue.store, task_id)
    assert (task.state, task.result, task.lease_owner) == (TaskState.SUCCEEDED, {"ok": True}, None)
    moves = [(e["from_state"], e["to_state"]) for e in task_views.events(queue.store, task_id)]
    assert moves == [("queued", "running"), ("running", "succeeded")]


def test_every_recorded_move_is_an_allowed_move(queue: TaskQueue, clock: Clock) -> None:
    ids = queue.submit_many([echo(i) for i in range(4)])
    claims = queue.claim("r", limit=4)
    queue.complete(claims[0].task_id, claims[0].token, 1)
    queue.fail(claims[1].task_id, claims[1].token, "bad prompt", retryable=False)
    queue.fail(claims[2].task_id, claims[2].token, "agent lost", retryable=True)
    queue.cancel([claims[3].task_id])
    clock.now += 60
    queue.reap()
    queue.retry([claims[1].task_id])
    for task_id in ids:
        for e in task_views.events(queue.store, task_id):
            if e["from_state"] != e["to_state"]:
                assert (TaskState(e["from_state"]), TaskState(e["to_state"])) in MOVES


def test_a_stale_token_is_refused(queue: TaskQueue, clock: Clock) -> None:
    task_id = queue.submit(echo())
    (first,) = queue.claim("runner-a")
    clock.now += 10  # the lease (2 s) expires; the reaper requeues it
    assert queue.reap() == 1
    (second,) = queue.claim("runner-b")
    assert second.token != first.token and second.attempt == 2
    with pytest.raises(StaleLeaseError):
        queue.complete(task_id, first.token, "late")
    with pytest.raises(StaleLeaseError):
        queue.fail(task_id, first.token, "late", retryable=True)
    with pytest.raises(StaleLeaseError):
        queue.append_output(task_id, first.token, "late")
    assert queue.complete_many([(task_id, first.token, "late")]) == [task_id]
    queue.complete(task_id, second.token, "fresh")
    assert task_views.get_task(queue.store, task_id).result == "fresh"


def test_infrastructure_failures_run_exactly_max_attempts_then_dead(queue: TaskQueue) -> None:
    task_id = queue.submit(echo(max_attempts=4))
    runs = 0
    while claims := queue.claim("r"):
        runs += 1
        queue.fail(task_id, claims[0].token, f"crash {runs}", retryable=True, kind="runner_crashed")
    task = task_views.get_task(queue.store, task_id)
    assert runs == 4
    assert (task.state, task.attempt, task.error, task.error_kind) == (
        TaskState.DEAD,
        4,
        "crash 4",
        "runner_crashed",
    )


def test_expired_leases_count_as_attempts(queue: TaskQueue, clock: Clock) -> None:
    task_id = queue.submit(echo(max_attempts=2))
    for _ in range(2):
        assert queue.claim("r")
        clock.now += 10
        queue.reap()
    task = task_views.get_task(queue.store, task_id)
    assert task.state == TaskState.DEAD and task.error_kind == "lease_expired"


def test_application_errors_do_not_retry_unless_asked(queue: TaskQueue) -> None:
    plain, asked = queue.submit_many([echo(1), echo(2, retry_on_error=True)])
    for claim in queue.claim("r", limit=2):
        queue.fail(claim.task_id, claim.token, "unknown model", retryable=False)
    assert state(queue, plain) == TaskState.FAILED
    assert state(queue, asked) == TaskState.QUEUED
    assert task_views.get_task(queue.store, asked).attempt == 2


def test_retries_back_off_exponentially(profile: Profile, clock: Clock) -> None:
    config = replace(profile.queue, retry_backoff_s=1.0, retry_backoff_max_s=3.0, max_attempts=5)
    queue = TaskQueue(open_store(profile.db_path), config, clock=clock)
    task_id = queue.submit(echo())
    for delay in (1.0, 2.0, 3.0):
        (claim,) = queue.claim("r")
        queue.fail(task_id, claim.token, "x", retryable=True)
        assert queue.next_due() == pytest.approx(clock.now + delay)
        clock.now += delay - 0.01
        assert queue.claim("r") == []
        clock.now += 0.02


def test_heartbeat_extends_leases_and_reports_cancel_and_loss(
    queue: TaskQueue, clock: Clock
) -> None:
    a, b = queue.submit_many([echo(1), echo(2)])
    ca, cb = queue.claim("r", limit=2)
    clock.now += 1.5
    beat = queue.heartbeat("r", {a: ca.token, b: cb.token})
    assert beat.lost == frozenset() and beat.cancel == frozenset()
    clock.now += 1.5  # past the first lease, inside the renewed one
    assert queue.reap() == 0
    queue.cancel([b])
    beat = queue.heartbeat("r", {a: ca.token, b: cb.token})
    assert beat.cancel == {b}
    assert queue.heartbeat("someone-else", {a: ca.token}).lost == {a}
    assert queue.heartbeat("r", {a: ca.token + 1}).lost == {a}


def test_cancel_queued_at_once_running_when_runner_confirms(queue: TaskQueue) -> None:
    queued, running = queue.submit_many([echo(1, priority=-1), echo(2, priority=5)])
    (claim,) = queue.claim("r")
    assert claim.task_id == running
    assert queue.cancel([queued, running, 999]) == {
        queued: "canceled",
        running: "cancel requested",
        999: "not found",
    }
    assert state(queue, queued) == TaskState.CANCELED
    assert state(queue, running) == TaskState.RUNNING
    queue.confirm_canceled(running, claim.token)
    assert state(queue, running) == TaskState.CANCELED
    assert queue.cancel([running]) == {running: "already canceled"}


def test_a_running_cancel_ends_canceled_when_the_lease_ends(queue: TaskQueue, clock: Clock) -> None:
    task_id = queue.submit(echo())
    (claim,) = queue.claim("r")
    queue.cancel([task_id])
    clock.now += 10
    queue.reap()
    assert state(queue, task_id) == TaskState.CANCELED
    with pytest.raises(StaleLeaseError):
        queue.complete(task_id, claim.token, "too late")


def test_release_returns_tasks_without_an_attempt_penalty(queue: TaskQueue) -> None:
    task_id = queue.submit(echo())
    (claim,) = queue.claim("r")
    assert queue.release([(task_id, claim.token)], "shutting down") == 1
    task = task_views.get_task(queue.store, task_id)
    assert (task.state, task.attempt) == (TaskState.QUEUED, 1)


def test_retry_gives_a_fresh_budget_and_refuses_live_tasks(queue: TaskQueue) -> None:
    dead = queue.submit(echo(max_attempts=1))
    (claim,) = queue.claim("r")
    queue.fail(dead, claim.token, "x", retryable=True)
    live = queue.submit(echo())
    assert queue.retry([dead, live]) == {dead: "queued", live: "cannot retry a queued task"}
    task = task_views.get_task(queue.store, dead)
    assert (task.state, task.attempt, task.error) == (TaskState.QUEUED, 1, None)


def test_idempotency_key_returns_the_first_task(queue: TaskQueue) -> None:
    first = queue.submit(echo(1, idempotency_key="k1"))
    again = queue.submit(echo(2, idempotency_key="k1"))
    ids = queue.submit_many([echo(3, idempotency_key="k1"), echo(4, idempotency_key="k2")])
    assert again == first and ids[0] == first and ids[1] != first
    assert task_views.counts(queue.store)["queued"] == 2


def test_a_bulk_submit_with_one_bad_spec_queues_nothing(queue: TaskQueue) -> None:
    with pytest.raises(InputError):
        queue.submit_many([echo(1), TaskSpec(kind="generate", payload={"prompt": "x"})])
    with pytest.raises(InputError):
        queue.submit_many([echo(1), TaskSpec(kind="nope")])
    assert sum(task_views.counts(queue.store).values()) == 0


def test_bulk_ids_are_the_rows_inserted(queue: TaskQueue) -> None:
    queue.submit(echo(0))
    ids = queue.submit_many([echo(i) for i in range(1, 1001)])
    for i in (0, 500, 999):
        assert task_views.get_task(queue.store, ids[i]).payload == {"i": i + 1}


def test_priority_then_age_orders_claims(queue: TaskQueue) -> None:
    low, high, high2 = queue.submit_many([echo(1), echo(2, priority=10), echo(3, priority=10)])
    assert [c.task_id for c in queue.claim("r", limit=3)] == [high, high2, low]


def test_placement_by_host_labels_and_kind(queue: TaskQueue) -> None:
    pinned, labelled, other_host, anywhere = queue.submit_many(
        [echo(1, host="local"), echo(2, labels={"zone": "a"}), echo(3, host="gpu7"), echo(4)]
    )
    got = queue.claim("r", limit=10, host="local", labels={"zone": "a", "gpu": "h100"})
    assert {c.task_id for c in got} == {pinned, labelled, anywhere}
    assert queue.claim("r", limit=10, host="gpu7", labels={"zone": "b"})[0].task_id == other_host
    queue.submit(TaskSpec(kind="generate", model="m", payload={"prompt": "x"}))
    assert queue.claim("r", kinds=("echo",)) == []


def test_output_is_stored_in_batches_in_order(queue: TaskQueue) -> None:
    task_id = queue.submit(echo())
    (claim,) = queue.claim("r")
    for chunk in ("Hello", ", ", "world"):
        queue.append_output(task_id, claim.token, chunk)
    assert task_views.output(queue.store, task_id) == "Hello, world"


def test_two_queues_on_one_file_see_each_others_commits(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile()
    writer = TaskQueue(open_store(profile.db_path), profile.queue)
    reader = TaskQueue(open_store(profile.db_path), profile.queue)
    before = reader.store.data_version()
    writer.submit(echo())
    assert reader.store.data_version() != before
    assert task_views.counts(reader.store)["queued"] == 1
