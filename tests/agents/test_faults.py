"""Faults on a real agent: bad model files, a killed inference child, a killed agent, and a task
that crashes its child every time. Each test runs its own control plane and agent."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bitinglip.config import Profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec, TaskState
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.errors import InputError, StaleLeaseError
from tests.agents import gguf_corpus as corpus
from tests.agents.conftest import (
    agent_pid,
    event_details,
    first_output,
    generate,
    gone,
    infer_children,
    succeeded,
    wait_for,
)

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time there was"

Served = tuple[ControlPlane, ControlLoop]


@pytest.fixture
def served(
    make_profile: Callable[..., Profile], demo_model: Path, passive_openmp: None
) -> Iterator[Served]:
    with open_control_plane(make_profile()) as plane, plane.embedded() as loop:
        assert loop is not None
        agent_pid(loop)
        yield plane, loop


def _prefix(src: Path, dest: Path, size: int) -> Path:
    with src.open("rb") as f:
        dest.write_bytes(f.read(size))
    return dest


def test_bad_model_files_fail_as_invalid_gguf_and_the_agent_survives(
    served: Served, demo_model: Path, tmp_path: Path
) -> None:
    plane, loop = served
    pid = agent_pid(loop)
    valid = corpus.write_valid_gguf(tmp_path / "tiny.gguf")
    cases = {
        name: (c.path, c.reason) for name, c in corpus.write_bad_corpus(tmp_path, valid).items()
    }
    if not corpus.permission_checks_apply():
        del cases["permission_denied"]  # as root, mode 000 does not stop reads
    size = demo_model.stat().st_size
    for name, cut in (
        ("demo_cut_1k", 1024),
        ("demo_cut_1m", 1 << 20),
        ("demo_cut_half", size // 2),
    ):
        cases[name] = (_prefix(demo_model, tmp_path / f"{name}.gguf", cut), "truncated")

    # Names are checked at submit: a missing file and a directory are refused there.
    for name in ("missing", "directory"):
        path, _ = cases.pop(name)
        with pytest.raises(InputError, match="unknown model"):
            plane.submit(generate(path, PROMPT, 4))

    # A good generate is running while the bad ones come and go.
    good = plane.submit(generate(demo_model, PROMPT, 32))
    first_output(plane, good)
    [child] = infer_children(pid)
    bad = {name: plane.submit(generate(path, PROMPT, 4)) for name, (path, _) in cases.items()}
    cut_1m = cases["demo_cut_1m"]  # the other model kinds are checked the same way
    for kind, payload in (
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}),
        ("embed", {"input": "hi"}),
    ):
        cases[f"{kind}_cut_1m"] = cut_1m
        bad[f"{kind}_cut_1m"] = plane.submit(
            TaskSpec(kind=kind, model=str(cut_1m[0]), payload=payload)
        )
    echoes = plane.submit_many([TaskSpec(kind="echo", payload={"n": i}) for i in range(8)])

    for name, task_id in bad.items():
        task = plane.wait(task_id, 60)
        assert (task.state, task.error_kind, task.attempt) == (
            TaskState.FAILED,
            "invalid_gguf",
            1,
        ), (name, task.state, task.error_kind, task.attempt, task.error)
        assert task.error is not None and cases[name][1] in task.error, (name, task.error)
        assert sum(1 for e in plane.events(task_id) if e["to_state"] == "running") == 1, name
    for i, task_id in enumerate(echoes):
        assert succeeded(plane, task_id, 30).result == {"n": i}
    good_task = succeeded(plane, good)
    assert good_task.result["text"].strip()
    assert good_task.attempt == 1
    first_bad_end = min(plane.task(task_id).finished_at or 0.0 for task_id in bad.values())
    assert (good_task.finished_at or 0.0) > first_bad_end, "the good task ran alongside"

    # The same agent, the same inference child: nothing crashed.
    assert agent_pid(loop) == pid
    assert [c.pid for c in infer_children(pid)] == [child.pid]
    # And it still serves the good model.
    assert succeeded(plane, plane.submit(generate(demo_model, PROMPT, 2))).result["text"]


def test_a_model_file_broken_between_submit_and_dispatch_fails_without_retry(
    make_profile: Callable[..., Profile], tmp_path: Path
) -> None:
    """Names are checked again at dispatch: a file deleted, or replaced by a directory, after
    it was submitted (no controller was running then) fails at once, on its first attempt."""
    deleted, swapped = tmp_path / "deleted.gguf", tmp_path / "swapped.gguf"
    with open_control_plane(make_profile()) as plane:
        ids = []
        for path in (deleted, swapped):
            corpus.write_valid_gguf(path)
            ids.append(plane.submit(generate(path, PROMPT, 4)))
        deleted.unlink()
        swapped.unlink()
        swapped.mkdir()
        with plane.embedded() as loop:
            pid = agent_pid(loop)
            for task_id in ids:
                task = plane.wait(task_id, 30)
                assert (task.state, task.attempt) == (TaskState.FAILED, 1), (
                    task.state,
                    task.error_kind,
                    task.error,
                )
                assert task.error_kind in ("unknown_model", "invalid_gguf"), task.error_kind
            assert agent_pid(loop) == pid


def test_killing_the_inference_child_retries_the_task_on_a_new_child(
    served: Served, demo_model: Path
) -> None:
    plane, loop = served
    pid = agent_pid(loop)
    task_id = plane.submit(generate(demo_model, PROMPT, 32))
    first_output(plane, task_id)
    [child] = infer_children(pid)
    os.kill(child.pid, signal.SIGKILL)

    task = succeeded(plane, task_id)
    assert task.attempt == 2
    assert task.result["text"].strip()
    assert plane.output(task_id) == task.result["text"]  # attempt 1's partial output is gone
    details = event_details(plane, task_id)
    assert any(d.startswith("runner_crashed: the inference child died") for d in details), details
    assert agent_pid(loop) == pid
    children = infer_children(pid)
    assert len(children) == 1 and children[0].pid != child.pid
    assert gone(child.pid)


def test_killing_the_agent_requeues_the_task_and_fences_the_old_lease(
    served: Served, demo_model: Path
) -> None:
    plane, loop = served
    pid = agent_pid(loop)
    task_id = plane.submit(generate(demo_model, PROMPT, 32))
    first_output(plane, task_id)
    running = plane.task(task_id)
    assert (running.state, running.attempt) == (TaskState.RUNNING, 1)
    old_token = running.lease_token
    [child] = infer_children(pid)
    os.kill(pid, signal.SIGKILL)

    # Requeued as agent_lost, then claimed again (attempt 2) by the restarted agent.
    def second_attempt() -> bool:
        task = plane.task(task_id)
        again = task.attempt == 2 and task.lease_token != old_token
        return again or task.state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD)

    wait_for(second_attempt, 30, "the second attempt")
    with pytest.raises(StaleLeaseError):  # a late report of the first attempt is refused
        plane.queue.complete(task_id, old_token, {"text": "from the dead agent"})
    task = succeeded(plane, task_id)
    assert task.attempt == 2
    assert task.result["text"].strip() and task.result["text"] != "from the dead agent"
    assert plane.output(task_id) == task.result["text"]
    details = event_details(plane, task_id)
    assert any(d.startswith("agent_lost: agent lost") for d in details), details
    new_pid = agent_pid(loop)
    assert new_pid != pid and gone(pid)
    with pytest.raises(StaleLeaseError):
        plane.queue.complete(task_id, old_token, {"text": "from the dead agent"})
    assert plane.task(task_id).result == task.result
    # The dead agent's inference child does not linger (its stdin closed with the agent).
    wait_for(lambda: gone(child.pid), 30, "the orphaned inference child to exit")


def test_a_task_that_always_crashes_its_child_ends_dead_after_max_attempts(
    served: Served, demo_model: Path
) -> None:
    plane, loop = served
    pid = agent_pid(loop)
    killed: set[int] = set()
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            for child in infer_children(pid):
                try:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.add(child.pid)
                except ProcessLookupError:
                    continue
            time.sleep(0.005)

    watcher = threading.Thread(target=reaper, daemon=True)
    watcher.start()
    try:
        task = plane.wait(plane.submit(generate(demo_model, PROMPT, 8)), 60)
    finally:
        stop.set()
        watcher.join()
    max_attempts = plane.profile.queue.max_attempts
    assert max_attempts == 3
    assert (task.state, task.error_kind, task.attempt) == (
        TaskState.DEAD,
        "runner_crashed",
        max_attempts,
    ), (task.state, task.error_kind, task.attempt, task.error)
    events = plane.events(task.id)
    assert sum(1 for e in events if e["to_state"] == "running") == max_attempts
    crashes = [e for e in events if str(e["detail"]).startswith("runner_crashed")]
    assert [e["to_state"] for e in crashes] == ["queued"] * (max_attempts - 1) + ["dead"]
    assert len(killed) >= max_attempts
    assert agent_pid(loop) == pid
    # The agent still serves the model once its children are left alone.
    assert succeeded(plane, plane.submit(generate(demo_model, PROMPT, 2))).result["text"]


def test_a_late_report_from_a_failed_attempt_is_refused(plane: ControlPlane) -> None:
    """Fencing without processes: a token from before a retry no longer completes the task."""
    queue: TaskQueue = plane.queue
    task_id = queue.submit(TaskSpec(kind="echo", payload={}))
    [first] = queue.claim("runner")
    queue.fail(task_id, first.token, "child died", retryable=True, kind="runner_crashed")
    [second] = queue.claim("runner")
    assert second.attempt == 2 and second.token != first.token
    with pytest.raises(StaleLeaseError):
        queue.complete(task_id, first.token, "late")
    queue.complete(task_id, second.token, "on time")
    assert plane.task(task_id).result == "on time"


def test_a_retried_task_keeps_only_its_last_attempts_output(plane: ControlPlane) -> None:
    queue: TaskQueue = plane.queue
    task_id = queue.submit(TaskSpec(kind="echo", payload={}))
    [first] = queue.claim("runner")
    queue.append_output(task_id, first.token, "partial ")
    queue.fail(task_id, first.token, "child died", retryable=True, kind="runner_crashed")
    [second] = queue.claim("runner")
    queue.append_output(task_id, second.token, "full text")
    queue.complete(task_id, second.token, {"text": "full text"})
    assert plane.output(task_id) == "full text"


def test_following_a_task_across_a_retry_gives_its_final_text(profile: Profile) -> None:
    with open_control_plane(profile) as reader, open_control_plane(profile) as runner:
        queue = runner.queue
        task_id = queue.submit(TaskSpec(kind="echo", payload={}))
        [first] = queue.claim("runner")
        queue.append_output(task_id, first.token, "partial ")
        stream = reader.follow(task_id, timeout=10)
        seen = [next(stream)]
        queue.fail(task_id, first.token, "child died", retryable=True, kind="runner_crashed")
        [second] = queue.claim("runner")
        queue.append_output(task_id, second.token, "full ")
        queue.append_output(task_id, second.token, "text")
        seen.append(next(stream))
        queue.complete(task_id, second.token, {"text": "full text"})
        seen += stream
        assert reader.output(task_id) == "full text"
        # What a follower shows must end as the final text (a restart may be signalled, but
        # attempt 2's text must not lose its first rows).
        assert "".join(seen).endswith("full text"), seen
