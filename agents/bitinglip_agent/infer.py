"""The inference child: one model, loaded with llama-cpp-python, with the run settings the
agent passes (`--settings`, settings.py's names).

Run by the agent as `python -m bitinglip_agent.infer --model PATH ...`; it and the modules it
starts (`engine`, `prompts`, `batch`) are the only ones that import llama_cpp. It speaks JSON
lines with the agent: requests on stdin (`generate`, `chat`, `embed`, `cancel`, `exit`), answers
on stdout (`ready` with the effective settings read back from llama.cpp, `chunk`, `done`,
`error`). A generate model decodes up to `parallel` requests together (batch.py: continuous
batching; the agent sends that many at once); an embedding model runs one request at a time.
Chunks are coalesced: at most one line per batch.CHUNK_EVERY_S per request. A crash here
(llama.cpp aborts on OOM and asserts) costs this process only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import threading
import time
from typing import Any

from bitinglip_agent.gguf_check import GGUFSummary, check_gguf

_out_lock = threading.Lock()


def emit(ev: str, **fields: Any) -> None:
    line = json.dumps({"ev": ev, **fields}, ensure_ascii=False) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Requests:
    """Requests from stdin to a queue (None at the end); cancels take effect at once. The
    requests of one read go to the queue together: a burst the agent sent at once starts in
    the same decode step."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self.canceled: set[str] = set()

    def read_stdin(self) -> None:
        fd, rest = sys.stdin.fileno(), b""
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            *lines, rest = (rest + data).split(b"\n")
            burst, exiting = self._parse(lines)
            if burst:
                self.queue.put(burst)
            if exiting:
                break
        self.queue.put(None)

    def _parse(self, lines: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
        burst: list[dict[str, Any]] = []
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("op") == "cancel":
                self.canceled.add(str(msg.get("id")))
            elif msg.get("op") == "exit":
                return burst, True
            else:
                burst.append(msg)
        return burst, False

    def start(self) -> Requests:
        threading.Thread(target=self.read_stdin, daemon=True).start()
        return self


class Embedder:
    """An embedding model (llama-cpp-python's Llama): one request at a time."""

    def __init__(self, llm: Any, requests: Requests) -> None:
        self.llm = llm
        self.requests = requests

    def serve(self) -> None:
        while True:
            burst = self.requests.queue.get()
            if burst is None:
                return
            for msg in burst:
                self.one(msg)

    def one(self, msg: dict[str, Any]) -> None:
        run_id = str(msg.get("id"))
        try:
            if msg.get("op") != "embed":
                raise ValueError(f"an embedding model does not run {msg.get('op')!r}")
            result = self.embed(msg.get("payload") or {})
        except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            emit("error", id=run_id, code="inference_failed", message=message)
        else:
            emit("done", id=run_id, result=result)
        self.requests.canceled.discard(run_id)

    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One vector per input, L2-normalised (like OpenAI's embeddings). The inputs go to
        llama.cpp together, many sequences per batch, each pooled there (see `_pooling`)."""
        inputs = payload["input"]
        batch = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors, tokens = self.llm.embed(batch, normalize=False, return_count=True)
        return {
            "embeddings": [_unit(v) for v in vectors],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _pooling(llama_cpp: Any, summary: GGUFSummary) -> int:
    """How an embedding context pools: the model's own way (CLS, last token, ...) when it names
    one, else the mean over the input's tokens. llama.cpp then returns one vector per sequence,
    so many inputs share a batch (per-token vectors of several inputs cannot be told apart)."""
    if summary.pooling_type in (None, llama_cpp.LLAMA_POOLING_TYPE_NONE):
        return int(llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    return int(llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)


def _embedder(path: str, settings: dict[str, Any], threads: int, summary: GGUFSummary) -> Any:
    import llama_cpp

    gpu_layers = int(settings["gpu_layers"])
    split = {"none": 0, "layer": 1, "row": 2}[settings["split_mode"]]
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=int(settings["n_ctx"]),
        n_threads=threads,
        n_gpu_layers=gpu_layers,
        split_mode=split,
        main_gpu=int(settings["main_gpu"]),
        tensor_split=settings["tensor_split"],
        flash_attn=bool(settings["flash_attn"]),
        type_k=getattr(llama_cpp, f"GGML_TYPE_{settings['cache_type_k'].upper()}"),
        type_v=getattr(llama_cpp, f"GGML_TYPE_{settings['cache_type_v'].upper()}"),
        embedding=True,
        pooling_type=_pooling(llama_cpp, summary),
        verbose=False,
    )
    facts = {
        "n_ctx": int(llm.n_ctx()),
        "n_ctx_total": int(llm.n_ctx()),
        "parallel": 1,
        "threads": int(llama_cpp.llama_n_threads(llm.ctx)),
        "n_batch": int(llm.n_batch),
    }
    return llm, facts


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The agent's --settings (JSON, settings.effective's keys) over the single flags."""
    from bitinglip_agent.settings import DEFAULTS

    settings: dict[str, Any] = {
        **DEFAULTS,
        "n_ctx": args.n_ctx,
        "threads": args.threads,
        "gpu_layers": args.gpu_layers,
    }
    settings.update(json.loads(args.settings) if args.settings else {})
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitinglip_agent.infer")
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("generate", "embed"), default="generate")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpu-layers", type=int, default=-1)
    parser.add_argument("--settings", default=None, help="JSON: the model's run settings")
    args = parser.parse_args(argv)
    settings = _settings(args)
    threads = int(settings["threads"]) or (os.cpu_count() or 1)
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        emit("error", code="missing_capability", message=f"llama_cpp is not installed: {exc}")
        return 3
    start = time.perf_counter()
    summary = check_gguf(args.model)
    requests = Requests()
    try:
        if args.mode == "embed":
            llm, facts = _embedder(args.model, settings, threads, summary)
            server: Any = Embedder(llm, requests)
        else:
            from bitinglip_agent.batch import Batcher
            from bitinglip_agent.engine import Engine
            from bitinglip_agent.prompts import Prompter

            engine = Engine(args.model, settings, threads)
            prompter = Prompter(engine, settings["chat_format"], summary.architecture)
            facts = {**engine.facts(), "chat_format": prompter.chat_format}
            server = Batcher(engine, prompter, requests.queue, requests.canceled, emit)
    except (ValueError, RuntimeError, KeyError) as exc:
        emit("error", code="inference_failed", message=f"cannot load {args.model}: {exc}")
        return 4
    effective = {
        **settings,
        **facts,
        "threads": facts["threads"],
        "gpu_layers": settings["gpu_layers"],
    }
    emit("ready", load_s=time.perf_counter() - start, pid=os.getpid(), settings=effective, **facts)
    requests.start()
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
