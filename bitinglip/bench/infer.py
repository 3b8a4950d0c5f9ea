"""`bitinglip bench infer`: the same prompts direct through llama-cpp-python and through
BitingLip (submit → controller → agent → inference child → result), in the same run.

Greedy, fixed seed, fixed max_tokens. Per prompt: time to first token (direct: from the call to
the first streamed token; BitingLip: from submit to the first output chunk readable from the
database) and tokens/s over the whole request (tokens / (end - start)). The direct model is
freed before BitingLip runs, so the two never compete for the cores.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import ensure_local
from bitinglip.control.plane import open_control_plane
from bitinglip.control.tasks import TaskSpec

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
    progress(f"direct: {len(prompts)} prompts through llama-cpp-python")
    direct = _direct(path, prompts, params)
    progress(f"bitinglip: {len(prompts)} prompts through the queue and the local agent")
    ours = _through_bitinglip(profile, path, prompts, params)
    return {
        "model": model,
        "max_tokens": max_tokens,
        "prompts": len(prompts),
        "direct_tokens_per_s": round(direct["tokens_per_s"], 2),
        "bitinglip_tokens_per_s": round(ours["tokens_per_s"], 2),
        "ratio": round(ours["tokens_per_s"] / direct["tokens_per_s"], 4),
        "ttft_direct_ms": round(direct["ttft_ms"], 2),
        "ttft_bitinglip_ms": round(ours["ttft_ms"], 2),
        "ttft_overhead_ms": round(ours["ttft_ms"] - direct["ttft_ms"], 2),
        "same_text": direct["texts"] == ours["texts"],
    }


def _direct(path: Path, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_threads=os.cpu_count() or 1,
        n_gpu_layers=-1,
        verbose=False,
    )
    llm.create_completion(prompt="warm up", max_tokens=4, temperature=0.0)
    tokens, seconds, ttfts, texts = 0, 0.0, [], []
    for prompt in prompts:
        start = time.perf_counter()
        first: float | None = None
        parts = []
        stream: Any = llm.create_completion(prompt=prompt, stream=True, **params)
        for chunk in stream:
            text = chunk["choices"][0].get("text")
            if text:
                first = first or time.perf_counter()
                parts.append(text)
        seconds += time.perf_counter() - start
        tokens += len(parts)
        ttfts.append(((first or time.perf_counter()) - start) * 1000)
        texts.append("".join(parts))
    del llm
    gc.collect()
    return {"tokens_per_s": tokens / seconds, "ttft_ms": statistics.median(ttfts), "texts": texts}


def _through_bitinglip(
    profile: Profile, path: Path, prompts: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    local = HostConfig(name="local", kind="local", max_concurrency=1)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        bench = replace(profile, data_dir=Path(tmp), hosts=(local,))
        with open_control_plane(bench) as plane, plane.embedded():
            warm = plane.submit(
                TaskSpec(
                    kind="generate", model=str(path), payload={"prompt": "warm up", "max_tokens": 4}
                )
            )
            plane.wait(warm, timeout=120)
            tokens, seconds, ttfts, texts = 0, 0.0, [], []
            for prompt in prompts:
                start = time.perf_counter()
                task_id = plane.submit(
                    TaskSpec(kind="generate", model=str(path), payload={"prompt": prompt, **params})
                )
                first: float | None = None
                for _chunk in plane.follow(task_id, timeout=300):
                    first = first or time.perf_counter()
                task = plane.wait(task_id, timeout=300)
                seconds += time.perf_counter() - start
                if not isinstance(task.result, dict):
                    raise RuntimeError(f"task {task.id} {task.state}: {task.error}")
                tokens += task.result["usage"]["completion_tokens"]
                ttfts.append(((first or time.perf_counter()) - start) * 1000)
                texts.append(task.result["text"])
    return {"tokens_per_s": tokens / seconds, "ttft_ms": statistics.median(ttfts), "texts": texts}
