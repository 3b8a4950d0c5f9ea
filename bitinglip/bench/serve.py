"""`bitinglip bench serve`: model-aware serving, measured in one run on one machine.

1. **Placement.** Three hosts (three agents on this machine, each with its own inference
   children, as three GPU hosts would have) and three models (the demo model as three files
   under three names). `requests` streaming requests, drawn Zipf over the models with a fixed
   seed, from `clients` concurrent clients through the gateway: once with `[serving] placement =
   "model"`, once with `"rotation"` (hosts in turn, model-blind). Each side starts cold on a
   fresh data dir. `model_loads` is what the agents report (`model_loads` in their telemetry).
2. **Against llama_cpp.server** (llama-cpp-python's own OpenAI server, the `[server]` extra,
   with `--interrupt_requests False` so that a new request does not cut a running stream short)
   and BitingLip's gateway on the same model file, context and threads: `clients` concurrent
   streaming clients, `peer_tokens` tokens each, after one warm-up request each.
3. **Batching.** The same load through the gateway with `parallel = 1`.

Tokens are counted from each stream's usage event where the server sends one, else one per
streamed text chunk (llama_cpp.server streams one token per chunk).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

from bitinglip.bench.infer import PROMPTS
from bitinglip.config import HostConfig, ModelAlias, Profile
from bitinglip.control import ensure_local, open_control_plane
from bitinglip.errors import InputError
from bitinglip.gateway.server import running

NAMES = ("serve-a", "serve-b", "serve-c")
HOSTS = ("host-a", "host-b", "host-c")
ZIPF_S = 1.2
TARGETS = {
    "loads_ratio": ("<=", 1 / 3),
    "p95_ratio": ("<=", 0.5),
    "placement_tokens_per_s_ratio": (">=", 1.0),
    "peer_tokens_per_s_ratio": (">=", 2.0),
    "peer_ttft_p50_ratio": ("<=", 0.5),
    "batching_ratio": (">=", 1.8),
}
Progress = Callable[[str], None]


@dataclass
class Load:
    """What one batch of concurrent streaming requests saw."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [0.0]
        return {
            "requests": len(self.latencies),
            "failed": self.failed,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p95_ms": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000, 1),
            "ttft_p50_ms": round(statistics.median(self.ttfts or [0.0]) * 1000, 1),
        }


def run(
    profile: Profile,
    model: str = "gemma-3-270m",
    requests: int = 300,
    clients: int = 8,
    max_tokens: int = 16,
    peer_tokens: int = 64,
    parallel: int = 8,
    threads: int = 2,
    progress: Progress = lambda _s: None,
) -> dict[str, Any]:
    alias = profile.models.get(model)
    if alias is None:
        raise InputError(
            f"bench serve takes a model alias of profile {profile.name} "
            f"({', '.join(profile.models) or 'none'}), not {model!r}"
        )
    progress(f"preparing {model}")
    path = ensure_local(profile, model).path
    base = replace(alias, n_ctx=1024, threads=threads, gpu_layers=-1)
    out: dict[str, Any] = {"model": model, "requests": requests, "clients": clients}
    draws = _zipf(requests, len(NAMES))
    placement = {}
    for mode in ("model", "rotation"):
        progress(f"placement: {requests} requests over 3 models and 3 hosts, {mode}")
        placement[mode] = _placement(profile, path, base, mode, draws, clients, max_tokens)
    out["placement"] = placement
    peer_body = {"max_tokens": peer_tokens, "temperature": 0.0, "seed": 42}
    progress(f"llama_cpp.server: {clients} streams of {peer_tokens} tokens")
    peer = _peer(path, base.n_ctx * parallel, threads, clients, peer_body)
    out["peer"] = peer
    sides = {}
    for n in (parallel, 1):
        progress(f"the gateway, parallel = {n}: {clients} streams of {peer_tokens} tokens")
        sides[n] = _single(profile, path, replace(base, parallel=n), clients, peer_body)
    out["bitinglip"], out["bitinglip_parallel_1"] = sides[parallel], sides[1]
    model_side, rotation = placement["model"], placement["rotation"]
    ours = sides[parallel]
    out |= {
        "loads_ratio": _ratio(model_side["model_loads"], rotation["model_loads"]),
        "p95_ratio": _ratio(model_side["p95_ms"], rotation["p95_ms"]),
        "placement_tokens_per_s_ratio": _ratio(
            model_side["tokens_per_s"], rotation["tokens_per_s"]
        ),
        "peer_tokens_per_s_ratio": _ratio(ours["tokens_per_s"], peer.get("tokens_per_s")),
        "peer_ttft_p50_ratio": _ratio(ours["ttft_p50_ms"], peer.get("ttft_p50_ms")),
        "batching_ratio": _ratio(ours["tokens_per_s"], sides[1]["tokens_per_s"]),
    }
    out["targets"] = {k: f"{op} {v:.3g}" for k, (op, v) in TARGETS.items()}
    out["pass"] = {k: _meets(out[k], op, v) for k, (op, v) in TARGETS.items()}
    return out


def _zipf(count: int, models: int) -> list[int]:
    """Which model each request asks for: Zipf over the models, the same draw for each side."""
    weights = [1 / (rank**ZIPF_S) for rank in range(1, models + 1)]
    return random.Random(42).choices(range(models), weights, k=count)


def _placement(
    profile: Profile,
    path: Path,
    base: ModelAlias,
    mode: str,
    draws: list[int],
    clients: int,
    max_tokens: int,
) -> dict[str, Any]:
    hosts = tuple(HostConfig(name=h, kind="local") for h in HOSTS)
    # The three agents share this machine's cores (llama.cpp's threads spin: more threads than
    # cores would measure the oversubscription, not the placement).
    threads = max(1, (os.cpu_count() or 1) // len(HOSTS))
    aliases = {n: replace(base, name=n, threads=threads) for n in NAMES}
    serving = replace(profile.serving, placement=mode)
    bodies = [
        {"model": NAMES[m], "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens}
        for i, m in enumerate(draws)
    ]
    with _fleet(profile, path, hosts, aliases, serving) as (plane, port):
        load = _drive(port, bodies, clients)
        loads = _model_loads(plane, since=time.time())
    return load.summary() | {"model_loads": loads, "threads_per_host": threads}


def _single(
    profile: Profile, path: Path, alias: ModelAlias, clients: int, body: dict[str, Any]
) -> dict[str, Any]:
    host = (HostConfig(name="local", kind="local", max_concurrency=max(clients, 1)),)
    name = alias.name
    with _fleet(profile, path, host, {name: alias}, profile.serving) as (_plane, port):
        _drive(port, [{"model": name, "prompt": "warm up", "max_tokens": 4}], 1)
        bodies = [
            {"model": name, "prompt": PROMPTS[i % len(PROMPTS)], **body} for i in range(clients)
        ]
        return _drive(port, bodies, clients).summary()


@contextmanager
def _fleet(
    profile: Profile,
    path: Path,
    hosts: tuple[HostConfig, ...],
    aliases: dict[str, ModelAlias],
    serving: Any,
) -> Iterator[tuple[Any, int]]:
    """A fresh data dir with each alias a file of its own (so each is a model of its own to the
    agents), these hosts, no API keys; the plane, its control loop and a gateway on it."""
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        for name in aliases:
            (models / f"{name}.gguf").symlink_to(path)
        gateway = replace(profile.gateway, api_keys=(), api_key_env=None, max_queued=100_000)
        bench = replace(
            profile,
            data_dir=Path(tmp),
            hosts=hosts,
            models=aliases,
            serving=serving,
            gateway=gateway,
        )
        with (
            open_control_plane(bench) as plane,
            plane.embedded() as loop,
            running(bench, shared_loop=loop) as served,
        ):
            yield plane, served.port


def _model_loads(plane: Any, since: float, timeout: float = 10.0) -> int:
    """Loads the agents report, from telemetry sent after `since` (it comes every second)."""
    deadline = time.monotonic() + timeout
    while True:
        latest = plane.fleet.latest()
        fresh = [s for s in latest.values() if float(s.get("at") or 0) > since]
        if (len(fresh) >= len(latest) and latest) or time.monotonic() > deadline:
            return sum(int(s.get("model_loads") or 0) for s in latest.values())
        time.sleep(0.25)


# -- clients ---------------------------------------------------------------------------------


def _drive(port: int, bodies: list[dict[str, Any]], clients: int) -> Load:
    """Send every body as a streaming completion from `clients` threads; wait for all."""
    todo: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    for body in bodies:
        todo.put(body)
    load, lock = Load(), threading.Lock()

    def client() -> None:
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                return
            got = _stream(port, body)
            with lock:
                if got is None:
                    load.failed += 1
                    continue
                latency, ttft, tokens = got
                load.latencies.append(latency)
                load.ttfts.append(ttft)
                load.tokens += tokens

    start = time.perf_counter()
    workers = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    load.wall_s = time.perf_counter() - start
    return load


def _stream(port: int, body: dict[str, Any]) -> tuple[float, float, int] | None:
    """One streaming /v1/completions request: (latency, time to first text, tokens)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return None
        first, chunks, usage = None, 0, None
        for line in response:
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                break
            event = json.loads(line[6:])
            usage = (event.get("usage") or {}).get("completion_tokens") or usage
            if any(choice.get("text") for choice in event.get("choices") or []):
                first = first or time.perf_counter()
                chunks += 1
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    end = time.perf_counter()
    return end - start, (first or end) - start, int(usage or chunks)


# -- the peer: llama_cpp.server ----------------------------------------------------------------


def _peer(
    path: Path, n_ctx: int, threads: int, clients: int, body: dict[str, Any]
) -> dict[str, Any]:
    missing = [m for m in ("fastapi", "sse_starlette", "pydantic_settings") if not find_spec(m)]
    if missing:  # the [server] extra of llama-cpp-python
        why = f"llama_cpp.server needs {', '.join(missing)}"
        return {"skipped": f"{why}: pip install 'llama-cpp-python[server]'"}
    port = _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--n_ctx", str(n_ctx)]
    argv += ["--n_threads", str(threads), "--interrupt_requests", "False"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", "peer"]
    # Its log to a file: llama.cpp is verbose, and a pipe nobody reads would fill and block it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            _wait_listening(port, proc, log)
            _drive(port, [{"model": "peer", "prompt": "warm up", "max_tokens": 4}], 1)
            bodies = [
                {"model": "peer", "prompt": PROMPTS[i % len(PROMPTS)], **body}
                for i in range(clients)
            ]
            return _drive(port, bodies, clients).summary()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(
    port: int, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-400:]
            raise RuntimeError(f"llama_cpp.server exited {proc.returncode}: {tail}")
        if _answers(port):
            return
        time.sleep(0.25)
    raise RuntimeError(f"llama_cpp.server did not answer on port {port} within {timeout:g} s")


def _answers(port: int) -> bool:
    """GET /v1/models answers 200 (False while nothing listens there yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v1/models")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if (not ours and ours != 0) or not theirs:
        return None
    return round(float(ours) / float(theirs), 3)


def _meets(value: float | None, op: str, target: float) -> bool | None:
    if value is None:
        return None
    return value <= target if op == "<=" else value >= target
