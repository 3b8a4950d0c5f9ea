"""Real inference on the demo model through the control plane and a real local agent.

One control plane (and so one agent, with one inference child per mode) serves the whole
module: loading the model costs seconds on a small CPU, generation costs a few tokens a second,
so every test keeps `max_tokens` small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TERMINAL, TaskSpec, TaskState
from bitinglip.control.runtime.loop import ControlLoop
from tests.agents.conftest import (
    INFER_ENV,
    agent_pid,
    event_details,
    first_output,
    generate,
    infer_children,
    succeeded,
    wait_for,
)
from tests.conftest import FAST_QUEUE

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
# Leases outlive the streaming test's pause of the controller (heartbeats every LEASE_TTL_S / 4).
LEASE_TTL_S = 4.0
HOLD_S = 1.5


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path
) -> Iterator[tuple[ControlPlane, ControlLoop]]:
    home = tmp_path_factory.mktemp("inference-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CONFIG_HOME", str(home / "config"))
        env.setenv("XDG_DATA_HOME", str(home / "data"))
        for name, value in INFER_ENV.items():
            env.setenv(name, value)
        body = FAST_QUEUE.replace("lease_ttl_s = 2.0", f"lease_ttl_s = {LEASE_TTL_S}")
        assert body != FAST_QUEUE
        profile = parse_profile(body, name="inference", path=None, data_dir=home / "state")
        with open_control_plane(profile) as plane, plane.embedded() as loop:
            assert loop is not None
            agent_pid(loop)
            yield plane, loop


@pytest.fixture
def plane(served: tuple[ControlPlane, ControlLoop]) -> ControlPlane:
    return served[0]


def run(plane: ControlPlane, spec: TaskSpec, timeout: float = 120.0) -> dict[str, Any]:
    task = succeeded(plane, plane.submit(spec), timeout)
    assert task.attempt == 1, event_details(plane, task.id)
    assert isinstance(task.result, dict)
    return task.result


def test_generate_is_deterministic(plane: ControlPlane, demo_model: Path) -> None:
    """Temperature 0, a fixed seed: the same prompt gives the same text, whatever ran between."""
    first = run(plane, generate(demo_model, PROMPT, 8))
    other = run(plane, generate(demo_model, "My favourite fruit is", 8))
    second = run(plane, generate(demo_model, PROMPT, 8))
    assert first["text"].strip(), first
    assert first["text"] == second["text"]
    assert other["text"] != first["text"]
    assert first["finish_reason"] in ("length", "stop")
    usage = first["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert first["timings"]["total_s"] > 0


def chat(demo_model: Path, content: str) -> TaskSpec:
    payload = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        "seed": 1,
    }
    return TaskSpec(kind="chat", model=str(demo_model), payload=payload)


def test_chat_replies(plane: ControlPlane, demo_model: Path) -> None:
    reply = run(plane, chat(demo_model, "Name a colour."))
    assert reply["text"].strip(), reply
    assert reply["finish_reason"] in ("length", "stop")
    assert 0 < reply["usage"]["completion_tokens"] <= 8
    assert reply["usage"]["prompt_tokens"] > 0


def test_chat_is_deterministic(plane: ControlPlane, demo_model: Path) -> None:
    """The same chat twice, a generate between: the same reply."""
    spec = chat(demo_model, "Name a colour.")
    first = run(plane, spec)
    run(plane, generate(demo_model, PROMPT, 4))
    second = run(plane, spec)
    assert first["text"] == second["text"]


def test_embed_is_deterministic(plane: ControlPlane, demo_model: Path) -> None:
    texts = ["hello world", "The sky is blue because of Rayleigh scattering."]
    spec = TaskSpec(kind="embed", model=str(demo_model), payload={"input": texts})
    first = run(plane, spec)
    single = run(plane, TaskSpec(kind="embed", model=str(demo_model), payload={"input": "x y"}))
    second = run(plane, spec)
    vectors = first["embeddings"]
    assert len(vectors) == 2
    dim = len(vectors[0])
    assert dim > 0 and len(vectors[1]) == dim
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert vectors[0] != vectors[1]
    assert second["embeddings"] == vectors
    assert first["usage"]["prompt_tokens"] > 0
    # A single string is one input.
    assert len(single["embeddings"]) == 1 and len(single["embeddings"][0]) == dim
    assert single["embeddings"][0] != vectors[0]


def test_an_input_embeds_the_same_alone_and_among_others(
    plane: ControlPlane, demo_model: Path
) -> None:
    """Inputs share llama.cpp batches: each still gets its own vector, the one it gets alone
    (the mean over its own tokens, not over its neighbours')."""
    texts = [f"input {n}: {'word ' * (n % 7)}end" for n in range(40)]

    def embed(payload: object) -> list[list[float]]:
        spec = TaskSpec(kind="embed", model=str(demo_model), payload={"input": payload})
        return list(run(plane, spec)["embeddings"])

    together = embed(texts)
    for n in (0, 17, 39):
        (alone,) = embed(texts[n])
        cosine = sum(a * b for a, b in zip(alone, together[n], strict=True))
        assert cosine > 0.9995, (n, cosine)  # batched sums round differently: 0.99985 seen
    # ... and apart from its neighbours' (the closest pair of these seen at 0.9978)
    assert sum(a * b for a, b in zip(together[1], together[8], strict=True)) < 0.999


def test_streamed_output_is_the_result_and_is_stored_in_batches(
    plane: ControlPlane, demo_model: Path
) -> None:
    """`follow` delivers exactly the final text, in fewer rows than tokens.

    Chunks that arrive while the controller is busy are coalesced into one row. On a fast
    machine that happens on its own (tokens come faster than the 50 ms flush); on a slow one
    each token may be its own chunk, so the test holds the database's write lock for a moment
    after the first chunk: everything the agent says meanwhile must land as one batch.
    """
    task_id = plane.submit(generate(demo_model, PROMPT, 64))
    stream = plane.follow(task_id, timeout=120)
    chunks = [next(stream)]
    with plane.store.write():
        time.sleep(HOLD_S)
    chunks += stream
    task = succeeded(plane, task_id)
    assert task.attempt == 1
    result = task.result
    tokens = result["usage"]["completion_tokens"]
    assert tokens >= 32, result  # the batch check needs a long generation
    assert "".join(chunks) == result["text"]
    assert plane.output(task_id) == result["text"]
    rows = plane.store.conn.execute(
        "SELECT count(*) FROM task_output WHERE task_id = ?", (task_id,)
    ).fetchone()[0]
    assert rows == len(chunks)
    assert rows < tokens, f"{rows} output rows for {tokens} tokens: output is not batched"
    # What came during the pause (several tokens' worth, each a word here) is one row.
    assert max(len(chunk.split()) for chunk in chunks) >= 3, chunks


def test_follow_gets_the_last_rows_when_the_task_ends_during_a_chunk(profile: Profile) -> None:
    """No processes: a runner stores two rows and the result while the follower is busy."""
    with open_control_plane(profile) as reader, open_control_plane(profile) as runner:
        queue = runner.queue
        task_id = queue.submit(TaskSpec(kind="echo", payload={}))
        [claim] = queue.claim("runner")
        queue.append_output(task_id, claim.token, "a")
        stream = reader.follow(task_id, timeout=10)
        seen = [next(stream)]  # the caller handles "a" (prints it, say) ...
        queue.append_output(task_id, claim.token, "b")  # ... as the last chunk and the result land
        queue.complete(task_id, claim.token, {"text": "ab"})
        seen += stream
        assert reader.output(task_id) == "ab"
        assert "".join(seen) == "ab"


def test_cancel_mid_stream_ends_the_task_and_the_agent_keeps_serving(
    served: tuple[ControlPlane, ControlLoop], demo_model: Path
) -> None:
    plane, loop = served
    pid = agent_pid(loop)
    # Long enough that it cannot finish before the cancel reaches it (the next heartbeat).
    task_id = plane.submit(generate(demo_model, PROMPT, 256))
    first_output(plane, task_id)
    started = time.monotonic()
    assert plane.cancel([task_id]) == {task_id: "cancel requested"}
    task = plane.wait(task_id, 15)
    elapsed = time.monotonic() - started
    assert task.state == TaskState.CANCELED, (task.state, task.error_kind, task.error)
    assert elapsed < 5.0, f"cancel took {elapsed:.1f}s"
    # The runner stopped it (not a lease expiry), and it stopped early.
    assert event_details(plane, task_id)[-1] == "canceled by the runner"
    assert task.result is None
    assert len(plane.output(task_id).split()) < 128
    # The same agent serves the next task.
    follow_up = run(plane, generate(demo_model, PROMPT, 4))
    assert follow_up["text"].strip()
    assert agent_pid(loop) == pid


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_concurrent_generates_are_serialized_and_not_corrupted(
    served: tuple[ControlPlane, ControlLoop], demo_model: Path
) -> None:
    plane, loop = served
    prompts = [
        "The capital of France is",
        "My favourite fruit is",
        "Once upon a time there was",
        "The quick brown fox",
    ]
    alone = {p: run(plane, generate(demo_model, p, 8))["text"] for p in prompts}
    assert len(set(alone.values())) == len(prompts), alone
    pid = agent_pid(loop)
    [child] = infer_children(pid, mode="generate")
    specs = [generate(demo_model, prompts[i % len(prompts)], 8) for i in range(16)]
    ids = plane.submit_many(specs)
    seen: set[int] = set()

    def all_ended() -> bool:
        seen.update(c.pid for c in infer_children(pid, mode="generate"))
        return all(plane.task(task_id).state in TERMINAL for task_id in ids)

    wait_for(all_ended, 240, "the 16 tasks to end")
    tasks = [succeeded(plane, task_id, 0) for task_id in ids]
    for spec, task in zip(specs, tasks, strict=True):
        assert task.attempt == 1, event_details(plane, task.id)
        assert task.result["text"] == alone[spec.payload["prompt"]], (task.id, spec.payload)
    # The dispatcher ran at most max_concurrency of them at a time, and did run several at once.
    intervals = [(t.started_at or 0.0, t.finished_at or 0.0) for t in tasks]
    max_concurrency = plane.profile.hosts[0].max_concurrency
    assert 2 <= _max_overlap(intervals) <= max_concurrency, intervals
    # One context, one request at a time: all ran in the one child there was before, and the
    # child's own run times fit end to end in the span.
    assert seen == {child.pid}
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    busy = sum(t.result["timings"]["total_s"] for t in tasks)
    assert busy <= span * 1.02 + 0.05, (busy, span)
    assert agent_pid(loop) == pid
