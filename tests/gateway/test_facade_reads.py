"""What the gateway reads through the façade, without a model: the bridge's batched watch of
many tasks (new output, a rerun's restart, the end)."""

from __future__ import annotations

from pathlib import Path

from bitinglip.control import TaskSpec, TaskState, WatchMark, WatchStep, open_control_plane
from tests.conftest import NOWHERE
from tests.gateway.conftest import gateway_profile


def test_watch_steps_follow_output_restarts_and_ends(tmp_path: Path) -> None:
    with open_control_plane(gateway_profile(tmp_path, None)) as plane:
        streamed, quiet = plane.submit_many(
            [TaskSpec(kind="echo", labels=NOWHERE) for _ in range(2)]
        )
        marks = {streamed: WatchMark(), quiet: WatchMark(output=False)}

        def step() -> dict[int, WatchStep]:
            steps = plane.watch_steps(marks)
            marks.update({i: s.mark for i, s in steps.items()})
            return steps

        first = step()  # learns each task's lease token
        assert all(not s.chunks and s.final is None for s in first.values())
        assert step() == {}  # queued, no output: nothing new
        a, b = plane.queue.claim("test", limit=2, labels=NOWHERE)
        for claim in (a, b):
            plane.queue.append_output(claim.task_id, claim.token, "ab")
            plane.queue.append_output(claim.task_id, claim.token, "c")
        steps = step()
        assert steps[streamed].chunks == ["ab", "c"] and steps[quiet].chunks == []
        assert marks == {streamed: WatchMark(2, a.token), quiet: WatchMark(0, b.token, False)}
        assert step() == {}  # nothing new since
        plane.queue.release([(a.task_id, a.token)])  # the task runs again: output starts over
        [again] = plane.queue.claim("test", labels=NOWHERE)
        plane.queue.append_output(again.task_id, again.token, "z")
        plane.queue.complete(again.task_id, again.token, {"text": "z"})
        plane.queue.complete(b.task_id, b.token, {"text": "abc"})
        steps = step()
    assert steps[streamed].restarted and steps[streamed].chunks == ["z"]
    assert marks[streamed] == WatchMark(1, again.token)
    assert not steps[quiet].restarted and steps[quiet].chunks == []
    ended = {i: s.final.state for i, s in steps.items() if s.final is not None}
    assert ended == {streamed: TaskState.SUCCEEDED, quiet: TaskState.SUCCEEDED}
