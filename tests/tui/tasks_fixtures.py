"""Tasks and jobs written with a fixed clock, for the Tasks and Jobs views' tests and snapshots.

`write_history(plane)` goes through the real queue (submit, claim, complete, fail) as a runner
would, but with the queue's clock set by hand, so every time on screen is fixed: the console
under test runs with `now=lambda: NOW`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from tests.conftest import NOWHERE

T0 = 1_700_000_000.0
NOW = T0 + 900.0
OWNER = "agent local"
DIED = "agent lost: the local agent exited with signal 9 (out of memory?)"


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> float:
        return self.at

    def step(self, seconds: float) -> float:
        self.at += seconds
        return self.at


@dataclass(frozen=True)
class History:
    succeeded: int
    dead: int
    failed: int
    canceled: int
    running: int
    queued: list[int]
    job: int
    job_tasks: list[int]


def generate(prompt: str, priority: int = 0, **labels: str) -> TaskSpec:
    return TaskSpec(
        kind="generate",
        model="gemma-3-270m",
        payload={"prompt": prompt, "max_tokens": 16, "temperature": 0.0},
        priority=priority,
        labels=labels or None,
    )


def write_history(plane: ControlPlane) -> History:
    """A queue with one task in each state and a job half done, all at fixed times."""
    clock = Clock()
    queue = TaskQueue(plane.store, plane.profile.queue, clock=clock)
    succeeded = _succeed(queue, clock, generate("The capital of France is"), "Paris.", 14.2)
    dead = _die(queue, clock, generate("Tell me a very long story"))
    failed = queue.submit(TaskSpec(kind="echo", payload={"n": 1}))
    clock.step(2)
    (claim,) = queue.claim(OWNER, host="local")
    clock.step(1)
    queue.fail(failed, claim.token, "bad payload: n must be a string", retryable=False)
    canceled = queue.submit(generate("never mind"))
    queue.cancel([canceled])
    clock.step(30)
    running = queue.submit(generate("Write a haiku about GPUs", priority=5))
    clock.step(1)
    (claim,) = queue.claim(OWNER, host="local")
    queue.append_output(running, claim.token, "Silicon rivers\nhum beneath")
    queued = [queue.submit(generate(f"question {n}", priority=n % 3, **NOWHERE)) for n in range(4)]
    job, job_tasks = _half_done_job(queue, clock)
    return History(succeeded, dead, failed, canceled, running, queued, job, job_tasks)


def _succeed(queue: TaskQueue, clock: Clock, spec: TaskSpec, text: str, rate: float) -> int:
    task_id = queue.submit(spec)
    clock.step(1)
    (claim,) = queue.claim(OWNER, host="local")
    queue.append_output(task_id, claim.token, text)
    clock.step(2)
    result = {
        "text": text,
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9},
        "timings": {"ttft_s": 0.2, "total_s": 0.4, "tokens_per_s": rate},
    }
    queue.complete(task_id, claim.token, result)
    return task_id


def _die(queue: TaskQueue, clock: Clock, spec: TaskSpec) -> int:
    """Every attempt loses its runner: dead after max_attempts (3 in the tests' profiles)."""
    task_id = queue.submit(spec)
    for _ in range(queue.config.max_attempts):
        clock.step(5)
        (claim,) = queue.claim(OWNER, host="local")
        queue.append_output(task_id, claim.token, "Once upon a time")
        clock.step(10)
        queue.fail(task_id, claim.token, DIED, retryable=True, kind="agent_lost")
    return task_id


def _half_done_job(queue: TaskQueue, clock: Clock) -> tuple[int, list[int]]:
    """A job of 10 echo lines: 4 succeeded and 1 failed over 2 minutes, 5 queued."""
    clock.step(60)
    specs = [TaskSpec(kind="echo", payload={"n": n}, line_no=n + 1) for n in range(10)]
    job, ids = queue.submit_job("numbers.jsonl", "/data/numbers.jsonl", "bitinglip", specs)
    for n in range(5):
        clock.step(24)
        (claim,) = queue.claim(OWNER, host="local")
        if n == 2:
            queue.fail(claim.task_id, claim.token, "bad line", retryable=False)
        else:
            queue.complete(claim.task_id, claim.token, {"n": n})
    return job, ids


def write_batch(folder: Path, lines: list[str], name: str = "batch.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
