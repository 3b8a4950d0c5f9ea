"""`bitinglip bench infer`: the same prompts direct through llama-cpp-python and through
BitingLip (submit → controller → agent → inference child → result), in the same run.

Greedy, fixed seed, fixed max_tokens. Per prompt: time to first token (direct: from the call to
the first streamed token; BitingLip: from submit to the first output chunk readable from the
database) and tokens/s over the whole request (tokens / (end - start)). The two run in turns,
prompt by prompt, never at once, so drift in the machine's speed affects both alike.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bitinglip.config import HostConfig, Profile
from bitinglip.control import ControlPlane, TaskSpec, ensure_local, open_control_plane

PROMPTS = (
    "Why is the sky blue?",
    "Write a haiku about GPUs.",
    "List three uses of a hash table.",
    "Explain what a lease is in a job queue.",
)
N_CTX = 4096  # as the agent's inference child


def run(
    profile: Profile,
    model: str,
    max_tokens: int = 64,
    rounds: int = 2,
    progress: Callable[[str], None] = lambda _s: None,
) -> dict[str, Any]:
    progress(f"preparing {model}")
    path = ensure_local(profile, model).path
    params = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 42}
    prompts = [p for _ in range(rounds) for p in PROMPTS]
    progress(f"{len(prompts)} prompts, each direct through llama-cpp-python then through BitingLip")
    direct, ours = Side(), Side()
    llm = _direct_model(path)
    local = HostConfig(name="local", kind="local", max_concurrency=1)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        bench = replace(profile, data_dir=Path(tmp), hosts=(local,))
        with open_control_plane(bench) as plane, plane.embedded():
            _through_bitinglip(plane, path, "warm up", {"max_tokens": 4}, Side())
            for prompt in prompts:  # interleaved, so drift in the machine's speed hits both
                _direct(llm, prompt, params, direct)
                _through_bitinglip(plane, path, prompt, params, ours)
    return {
        "model": model,
        "max_tokens": max_tokens,
        "prompts": len(prompts),
        "direct_tokens_per_s": round(direct.tokens_per_s, 2),
        "bitinglip_tokens_per_s": round(ours.tokens_per_s, 2),
        "ratio": round(ours.tokens_per_s / direct.tokens_per_s, 4),
        "ttft_direct_ms": round(direct.ttft_ms, 2),
        "ttft_bitinglip_ms": round(ours.ttft_ms, 2),
        "ttft_overhead_ms": round(ours.ttft_ms - direct.ttft_ms, 2),
        "same_text": direct.texts == ours.texts,
    }


@dataclass
class Side:
    tokens: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def add(self, tokens: int, seconds: float, ttft_s: float, text: str) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.ttfts.append(ttft_s * 1000)
        self.texts.append(text)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def ttft_ms(self) -> float:
        return statistics.median(self.ttfts)


def _direct_model(path: Path) -> Any:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_threads=os.cpu_count() or 1,
        n_gpu_layers=-1,
        verbose=False,
    )
    llm.create_completion(prompt="warm up", max_tokens=4, temperature=0.0)
    return llm


def _direct(llm: Any, prompt: str, params: dict[str, Any], side: Side) -> None:
    llm.reset()  # as the agent's child does: no prefix cache from the previous request
    start = time.perf_counter()
    first: float | None = None
    parts = []
    for chunk in llm.create_completion(prompt=prompt, stream=True, **params):
        text = chunk["choices"][0].get("text")
        if text:
            first = first or time.perf_counter()
            parts.append(text)
    end = time.perf_counter()
    side.add(len(parts), end - start, (first or end) - start, "".join(parts))


def _through_bitinglip(
    plane: ControlPlane, path: Path, prompt: str, params: dict[str, Any], side: Side
) -> None:
    start = time.perf_counter()
    task_id = plane.submit(
        TaskSpec(kind="generate", model=str(path), payload={"prompt": prompt, **params})
    )
    first: float | None = None
    for _chunk in plane.follow(task_id, timeout=300):
        first = first or time.perf_counter()
    task = plane.wait(task_id, timeout=300)
    end = time.perf_counter()
    if not isinstance(task.result, dict):
        raise RuntimeError(f"task {task.id} {task.state}: {task.error}")
    side.add(
        task.result["usage"]["completion_tokens"],
        end - start,
        (first or end) - start,
        task.result["text"],
    )
