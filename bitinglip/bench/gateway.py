"""`bitinglip bench gateway`: the same prompts three ways in one run, then /health under load.

On a temporary data dir with this machine's agent as the only host (one request at a time):
each prompt direct through llama-cpp-python in this process, then as `bitinglip run` does it
(submit, follow the stored output), then through the gateway (an HTTP streaming request, read
until `data: [DONE]`), in turns so drift in the machine's speed hits all three alike. Greedy,
seed 42. `ratio` is gateway / run tokens/s over all prompts; `ratio_median` the median of the
per-prompt ratios (robust to a busy moment on a shared machine). The gateway and the `run`
side share one embedded control loop, so they differ only by HTTP and the gateway's bridge.
Then 16 clients (keep-alive connections from a second process, so they do not share this
one's interpreter lock) ask GET /health as fast as answers come.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import multiprocessing
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bitinglip.bench.infer import PROMPTS, Side, _direct, _direct_model
from bitinglip.config import HostConfig, Profile
from bitinglip.control import ControlPlane, TaskSpec, ensure_local, open_control_plane
from bitinglip.errors import InputError
from bitinglip.gateway.server import Served, running


def run(
    profile: Profile,
    model: str,
    max_tokens: int = 64,
    rounds: int = 2,
    health_s: float = 5.0,
    clients: int = 16,
    progress: Callable[[str], None] = lambda _s: None,
) -> dict[str, Any]:
    if model not in profile.models:
        raise InputError(
            f"bench gateway takes a model alias of profile {profile.name} "
            f"({', '.join(profile.models) or 'none'}), not {model!r}"
        )
    progress(f"preparing {model}")
    path = ensure_local(profile, model).path
    params = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 42}
    prompts = [p for _ in range(rounds) for p in PROMPTS]
    direct, ours, gateway = Side(), Rated(), Rated()
    llm = _direct_model(path)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        bench = _bench_profile(profile, Path(tmp), model, path)
        with (
            open_control_plane(bench) as plane,
            plane.embedded() as loop,
            running(bench, shared_loop=loop) as served,
        ):
            progress("warming up the inference child")
            _through_run(plane, model, "warm up", {"max_tokens": 4}, Side())
            _through_gateway(served, model, "warm up", {"max_tokens": 4}, Side())
            progress(f"{len(prompts)} prompts, each direct, as `bitinglip run`, and over HTTP")
            for prompt in prompts:
                _direct(llm, prompt, params, direct)
                _through_run(plane, model, prompt, params, ours)
                _through_gateway(served, model, prompt, params, gateway)
            progress(f"GET /health from {clients} clients for {health_s:g} s")
            health_per_s = _health_load(served.port, clients, health_s)
    return {
        "model": model,
        "max_tokens": max_tokens,
        "prompts": len(prompts),
        "direct_tokens_per_s": round(direct.tokens_per_s, 2),
        "run_tokens_per_s": round(ours.tokens_per_s, 2),
        "gateway_tokens_per_s": round(gateway.tokens_per_s, 2),
        "ratio": round(gateway.tokens_per_s / ours.tokens_per_s, 4),
        "ratio_median": round(
            statistics.median(g / r for g, r in zip(gateway.rates, ours.rates, strict=True)), 4
        ),
        "ttft_direct_ms": round(direct.ttft_ms, 2),
        "ttft_run_ms": round(ours.ttft_ms, 2),
        "ttft_gateway_ms": round(gateway.ttft_ms, 2),
        "ttft_overhead_ms": round(gateway.ttft_ms - direct.ttft_ms, 2),
        "same_text": direct.texts == ours.texts == gateway.texts,
        "health_clients": clients,
        "health_per_s": round(health_per_s, 1),
    }


@dataclass
class Rated(Side):
    """A side that also keeps each prompt's tokens/s: the median of the per-prompt ratios
    (each pair measured back to back) shrugs off a busy moment that the totals absorb."""

    rates: list[float] = field(default_factory=list)

    def add(self, tokens: int, seconds: float, ttft_s: float, text: str) -> None:
        super().add(tokens, seconds, ttft_s, text)
        self.rates.append(tokens / seconds)


def _bench_profile(profile: Profile, data_dir: Path, model: str, path: Path) -> Profile:
    """A temporary data dir with the model linked in, this machine as the only host, no keys."""
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / f"{model}.gguf").symlink_to(path)
    local = HostConfig(name="local", kind="local", max_concurrency=1)
    gateway = replace(profile.gateway, api_keys=(), api_key_env=None)
    return replace(profile, data_dir=data_dir, hosts=(local,), gateway=gateway)


def _through_run(
    plane: ControlPlane, model: str, prompt: str, params: dict[str, Any], side: Side
) -> None:
    """As `bitinglip run` does: submit, follow the stored output, read the result."""
    start = time.perf_counter()
    spec = TaskSpec(kind="generate", model=model, payload={"prompt": prompt, **params})
    task_id = plane.submit(spec)
    first: float | None = None
    for _chunk in plane.follow(task_id, timeout=300):
        first = first or time.perf_counter()
    task = plane.wait(task_id, timeout=300)
    end = time.perf_counter()
    if not isinstance(task.result, dict):
        raise RuntimeError(f"task {task.id} {task.state}: {task.error}")
    tokens = task.result["usage"]["completion_tokens"]
    side.add(tokens, end - start, (first or end) - start, task.result["text"])


def _through_gateway(
    served: Served, model: str, prompt: str, params: dict[str, Any], side: Side
) -> None:
    """A streaming /v1/completions request, read until [DONE]; tokens from its usage event."""
    body = {
        "model": model,
        "prompt": prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        **params,
    }
    conn = http.client.HTTPConnection(served.host, served.port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"gateway answered {response.status}: {response.read()[:300]!r}")
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    for line in response:
        if not line.startswith(b"data: "):
            continue
        if line.startswith(b"data: [DONE]"):
            break
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk["choices"]:
            if choice["text"]:
                first = first or time.perf_counter()
                parts.append(choice["text"])
    end = time.perf_counter()
    conn.close()
    side.add(tokens, end - start, (first or end) - start, "".join(parts))


# -- /health under load --------------------------------------------------------------------


def _health_load(port: int, clients: int, seconds: float) -> float:
    """Answers per second to `clients` keep-alive connections, from a second process."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_load_main, args=(port, clients, seconds, theirs), daemon=True)
    child.start()
    if not mine.poll(seconds + 60):
        child.kill()
        raise RuntimeError("the /health load process gave no answer")
    done, elapsed, error = mine.recv()
    child.join()
    if error:
        raise RuntimeError(f"/health load: {error}")
    return float(done) / float(elapsed)


def _load_main(port: int, clients: int, seconds: float, conn: Connection) -> None:
    try:
        done, elapsed = asyncio.run(_load(port, clients, seconds))
        conn.send((done, elapsed, None))
    except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as exc:
        conn.send((0, 1.0, f"{type(exc).__name__}: {exc}"))


async def _load(port: int, clients: int, seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    counts = await asyncio.gather(*(_one_client(port, start + seconds) for _ in range(clients)))
    return sum(counts), time.perf_counter() - start


_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


async def _one_client(port: int, deadline: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    done = 0
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"/health answered {head.splitlines()[0]!r}")
            found = _LENGTH.search(head)
            await reader.readexactly(int(found.group(1)) if found else 0)
            done += 1
    finally:
        writer.close()
    return done
