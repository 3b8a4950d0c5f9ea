"""Continuous batching on the demo model, through a real agent and its inference child: up to
`parallel` requests decoded together, each with its own sampling, length, stop strings and
cancel; new ones join between steps, finished ones leave at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents.model_agent import ModelAgent, Run

pytestmark = pytest.mark.slow

BATCHED = {"parallel": 8, "n_ctx": 256, "threads": 2}
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "def fibonacci(n):",
    "My favourite fruit is",
    "The capital of France is",  # twins: the same request, one later with a stop string
    "Water boils at",
    "The best way to learn a language is",
]


@pytest.fixture(scope="module")
def agent(demo_model: Path) -> Iterator[ModelAgent]:
    proc = ModelAgent(demo_model)
    try:
        yield proc
    finally:
        proc.close()


def eight(stop_for_twin: str | None = None) -> list[dict[str, Any]]:
    """Eight requests of different lengths and sampling; the sixth is the first's twin."""
    payloads = []
    for i, prompt in enumerate(PROMPTS):
        payload: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": [12, 5, 9, 16, 7, 12, 3, 10][i],
            "temperature": [0, 0.9, 0, 0.7, 1.2, 0, 0.5, 0][i],
            "top_p": [0.95, 0.9, 1.0, 0.8, 0.95, 0.95, 0.9, 0.95][i],
            "top_k": [40, 20, 40, 50, 0, 40, 10, 40][i],
            "repeat_penalty": [1.0, 1.1, 1.0, 1.3, 1.0, 1.0, 1.0, 1.2][i],
            "seed": 100 + i,
        }
        if i == 5 and stop_for_twin:
            payload["stop"] = ["\x00never", stop_for_twin]
        payloads.append(payload)
    return payloads


def run_batch(agent: ModelAgent, payloads: list[dict[str, Any]]) -> list[Run]:
    ids = agent.burst("generate", payloads, settings=BATCHED)
    runs = agent.ended(*ids, timeout=300)
    for run in runs:
        assert run.error is None, run.error
    return runs


def test_settings_reach_llama_cpp(agent: ModelAgent) -> None:
    """The child's context is made with the model's settings: llama.cpp reports them back."""
    loaded = agent.ok(agent.task("load", {"keep_alive_s": -1}, settings=BATCHED))
    assert loaded["loaded"] == str(agent.model) and loaded["already"] is False
    (entry,) = agent.loaded()
    effective = entry["settings"]
    assert (effective["n_ctx"], effective["parallel"], effective["threads"]) == (256, 8, 2)
    assert effective["n_ctx_total"] == 256 * 8
    again = agent.ok(agent.task("load", {}, settings=BATCHED))
    assert again["already"] is True and again["load_s"] == 0


def test_eight_concurrent_requests_keep_their_own(agent: ModelAgent) -> None:
    """Eight at once, each with its own length, sampling and seed; replayed, the same texts;
    a stop string ends only its own sequence."""
    first = run_batch(agent, eight())
    replay = run_batch(agent, eight())
    assert [r.result["text"] for r in replay] == [r.result["text"] for r in first]
    for run, payload in zip(first, eight(), strict=True):
        usage, reason = run.result["usage"], run.result["finish_reason"]
        assert usage["completion_tokens"] <= payload["max_tokens"], (payload, run.result)
        if reason == "length":
            assert usage["completion_tokens"] == payload["max_tokens"]
        assert run.text == run.result["text"]  # streamed as it went
    twin = first[5].result["text"]
    assert twin == first[0].result["text"]  # the same request in the same batch
    assert len(twin) > 6, twin
    stop = twin[len(twin) // 2 : len(twin) // 2 + 3]
    stopped = run_batch(agent, eight(stop_for_twin=stop))
    cut = stopped[5].result
    assert cut["finish_reason"] == "stop" and cut["text"] == twin[: twin.find(stop)]
    assert stopped[5].text == cut["text"]  # the held-back start of the stop never went out
    assert stopped[0].result["text"] == twin  # the same text without the stop: not ended
    others = [r.result["text"] for i, r in enumerate(stopped) if i != 5]
    assert others == [r.result["text"] for i, r in enumerate(first) if i != 5]


def test_a_request_arriving_mid_batch_starts_before_the_others_finish(agent: ModelAgent) -> None:
    long = [agent.task("generate", agent.generate(p, 60), settings=BATCHED) for p in PROMPTS[:3]]
    agent.until(lambda: agent.runs[long[0]].output, 120, "the long runs' first output")
    short = agent.task("generate", agent.generate("Water boils at", 3), settings=BATCHED)
    (done,) = agent.ended(short)
    assert done.error is None, done.error
    assert all(agent.runs[r].ended_at is None for r in long), "the short one waited its turn"
    for run in agent.ended(*long, timeout=300):
        assert run.error is None, run.error


def test_a_cancelled_sequence_frees_its_slot_at_once(agent: ModelAgent) -> None:
    """Two slots, both busy: a third waits; one cancelled, the third starts while the other
    still runs."""
    two = {**BATCHED, "parallel": 2}
    first, second = (
        agent.task("generate", agent.generate(p, 80), settings=two) for p in PROMPTS[:2]
    )
    agent.until(lambda: agent.runs[first].output and agent.runs[second].output, 120, "output")
    third = agent.task("generate", agent.generate("Water boils at", 4), settings=two)
    agent.pump(1.0)
    assert not agent.runs[third].output, "two slots: the third waits"
    agent.send("cancel", first)
    (canceled,) = agent.ended(first, timeout=10)
    assert canceled.error is not None and canceled.error["code"] == "canceled"
    (done,) = agent.ended(third, timeout=60)
    assert done.error is None, done.error
    assert agent.runs[second].ended_at is None, "the third ran beside the second"
    assert agent.ok(second, timeout=300)["usage"]["completion_tokens"] == 80


def test_chats_are_batched_with_their_templates_stop(agent: ModelAgent) -> None:
    """Chat requests share the batch with completions; each ends at its template's end of
    turn (or its length), none runs into the next turn."""
    chats = [
        {"messages": [{"role": "user", "content": c}], "max_tokens": 24, "temperature": 0}
        for c in ("Name a colour.", "Say hello.", "What is 2 + 2?")
    ]
    ids = agent.burst("chat", chats, settings=BATCHED)
    ids += agent.burst("generate", [agent.generate("Water boils at", 6)], settings=BATCHED)
    for run in agent.ended(*ids, timeout=300):
        assert run.error is None, run.error
        assert run.result["text"] == run.text and run.result["usage"]["prompt_tokens"] > 0
        assert "<start_of_turn>" not in run.text and "<end_of_turn>" not in run.text
        assert run.result["finish_reason"] in ("stop", "length")


def test_a_sequence_ends_at_its_own_context(agent: ModelAgent) -> None:
    """Each sequence has n_ctx tokens: a prompt over it fails alone, a long generation ends
    there as `length` while its neighbour goes on."""
    small = {**BATCHED, "n_ctx": 128, "parallel": 2}
    agent.ok(agent.task("load", settings=small))
    n_ctx = agent.loaded()[0]["settings"]["n_ctx"]
    too_long = agent.generate("one two three four " * n_ctx, 4)
    short = agent.generate("Once upon a time", n_ctx * 2, temperature=1.0, seed=3)
    over, capped = (agent.burst("generate", [p], settings=small)[0] for p in (too_long, short))
    (failed,) = agent.ended(over)
    assert failed.error is not None and "exceed context window" in failed.error["message"]
    result = agent.ok(capped, timeout=300)
    usage = result["usage"]
    if result["finish_reason"] == "length":
        assert usage["total_tokens"] == n_ctx + 1  # the last token sampled, never decoded
    assert usage["total_tokens"] <= n_ctx + 1
