"""A claim's first read (is there anything to claim?): model and serving kinds are looked for
among the queued tasks that name a model, so a backlog of echo tasks is not walked for them, and
what they claim is what a claim over every queued task would."""

from __future__ import annotations

import time

from bitinglip.config import Profile
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec, _probe
from bitinglip.control.store.db import open_store


def _queue(profile: Profile) -> TaskQueue:
    return TaskQueue(open_store(profile.db_path), profile.queue)


def test_model_kinds_are_claimed_behind_an_echo_backlog_with_host_labels_and_models(
    profile: Profile,
) -> None:
    queue = _queue(profile)
    queue.submit_many([TaskSpec(kind="echo", payload={"i": i}) for i in range(300)])
    other_host = queue.submit(TaskSpec(kind="generate", model="m", host="elsewhere"))
    gpu_only = queue.submit(TaskSpec(kind="generate", model="m", labels={"gpu": "a100"}))
    other_model = queue.submit(TaskSpec(kind="chat", model="n"))
    wanted = queue.submit(TaskSpec(kind="generate", model="m"))
    unload = queue.submit(TaskSpec(kind="unload", model="m"))
    kinds = ("generate", "chat", "embed")
    claims = queue.claim("r", limit=8, kinds=kinds, host="here", labels={}, models={"m"})
    assert [c.task_id for c in claims] == [wanted]
    claims = queue.claim("r", limit=8, kinds=kinds, host="here", labels={"gpu": "a100"}, models=())
    assert claims == []  # no model of theirs: the probe honours `models` too
    claims = queue.claim("r", limit=8, kinds=kinds, host="here", labels={"gpu": "a100"})
    assert sorted(c.task_id for c in claims) == sorted([gpu_only, other_model])
    assert [c.task_id for c in queue.claim("r", kinds=("unload",), host="here")] == [unload]
    assert queue.claim("r", kinds=kinds, host="here") == []
    assert [c.task_id for c in queue.claim("r", kinds=kinds, host="elsewhere")] == [other_host]
    assert len(queue.claim("r", limit=500, kinds=("echo",))) == 300


def test_the_probe_of_model_kinds_reads_the_queued_model_index(profile: Profile) -> None:
    queue = _queue(profile)
    where = "state = 'queued' AND run_after <= ?"
    plan = queue.store.conn.execute(
        f"EXPLAIN QUERY PLAN {_probe(('generate', 'unload'), where)[0]}",
        ("generate", "unload", time.time()),
    ).fetchall()
    assert "tasks_queued_model" in str(plan)
    mixed, _ = _probe(("echo", "generate"), where)  # echo names no model: every queued task
    assert "tasks_ready" in mixed and "tasks_queued_model" not in mixed
