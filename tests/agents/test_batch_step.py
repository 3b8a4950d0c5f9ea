"""The batch's decode step in the inference child's own code, on the demo model in this process:
a step is one llama_decode whatever arrives, and a greedy sequence's token (read from the logits)
is the one llama.cpp's greedy sampler chain picks."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bitinglip_agent.batch import Batcher
from bitinglip_agent.engine import Engine
from bitinglip_agent.prompts import Prompter
from bitinglip_agent.settings import DEFAULTS

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Once upon a time,", "def fibonacci(n):", "Water boils at"]


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[Engine]:
    settings = {**DEFAULTS, "n_ctx": 256, "parallel": 4, "threads": 2, "gpu_layers": 0}
    made = Engine(str(demo_model), settings, 2)
    try:
        yield made
    finally:
        made.close()


class Counted(Engine):
    """The engine, counting its llama_decode calls (a view of the real one, not a stand-in)."""

    def __init__(self, engine: Engine) -> None:
        self.__dict__.update(engine.__dict__)
        self.decodes = 0

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> int:
        self.decodes += 1
        return super().decode(entries)


def serve(engine: Engine, bursts: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    requests: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
    for burst in bursts:
        requests.put(burst)
    requests.put(None)
    done: dict[str, dict[str, Any]] = {}

    def emit(ev: str, **fields: Any) -> None:
        assert ev != "error", fields
        if ev == "done":
            done[fields["id"]] = fields["result"]

    Batcher(engine, Prompter(engine, None, "gemma3"), requests, set(), emit).serve()
    return done


def request(i: int, max_tokens: int, **params: Any) -> dict[str, Any]:
    payload = {"prompt": PROMPTS[i], "max_tokens": max_tokens, "temperature": 0.0, **params}
    return {"id": f"r{i}", "op": "generate", "payload": payload}


def test_new_prompts_share_the_step_of_the_generating_sequences(engine: Engine) -> None:
    """Four requests with different lengths and sampling, arriving together: one decode per
    generated token of the longest, none of their own for the prompts; the texts are those
    each gets alone."""
    lengths = [9, 4, 12, 6]
    burst = [
        request(i, n, temperature=[0.0, 0.8, 0.0, 1.1][i], seed=7 + i)
        for i, n in enumerate(lengths)
    ]
    counted = Counted(engine)
    together = serve(counted, [burst])
    assert counted.decodes == max(lengths)
    for i, n in enumerate(lengths):
        assert together[f"r{i}"]["usage"]["completion_tokens"] == n
        alone = serve(engine, [[burst[i]]])
        assert alone[f"r{i}"]["text"] == together[f"r{i}"]["text"]


def test_greedy_token_is_the_greedy_chains(engine: Engine) -> None:
    """At temperature 0 with neutral penalties the token is the logits' first largest, as
    llama.cpp's greedy chain picks it, at every position of a generation."""
    ll = engine.ll
    fast = engine.sampler(_defaults())
    assert fast.greedy
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
    tokens = engine.tokenize(PROMPTS[2].encode(), True, True)
    entries = [(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)]
    try:
        for step in range(24):
            assert engine.decode(entries) == 0
            index = len(entries) - 1
            token = engine.sample(fast, index)
            assert token == int(ll.llama_sampler_sample(chain, engine.ctx, index)), step
            entries = [(token, len(tokens) + step, 0, True)]
    finally:
        engine.forget(0)
        engine.free_sampler(fast)
        ll.llama_sampler_free(chain)
    penalised = engine.sampler({**_defaults(), "temperature": 0.0, "repeat_penalty": 1.2})
    assert not penalised.greedy
    engine.free_sampler(penalised)


def _defaults() -> dict[str, Any]:
    from bitinglip_agent.prompts import COMPLETION_DEFAULTS

    return {**COMPLETION_DEFAULTS, "temperature": 0.0}
