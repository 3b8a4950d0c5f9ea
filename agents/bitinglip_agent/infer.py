"""The inference child: one model, loaded with llama-cpp-python, one request at a time.

Run by the agent as `python -m bitinglip_agent.infer --model PATH ...`; it is the only module
that imports llama_cpp. It speaks JSON lines with the agent: requests on stdin (`generate`,
`chat`, `embed`, `cancel`, `exit`), answers on stdout (`ready`, `chunk`, `done`, `error`).
Chunks are coalesced: at most one line per CHUNK_EVERY_S, whatever the token rate. A crash here
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
from collections.abc import Callable
from typing import Any

from bitinglip_agent.gguf_check import GGUFSummary, check_gguf

CHUNK_EVERY_S = 0.05
PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repeat_penalty")

_out_lock = threading.Lock()


def emit(ev: str, **fields: Any) -> None:
    line = json.dumps({"ev": ev, **fields}, ensure_ascii=False) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Child:
    def __init__(self, llm: Any, mode: str) -> None:
        self.llm = llm
        self.mode = mode
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.canceled: set[str] = set()

    def read_stdin(self) -> None:
        """Requests go to the queue; cancels take effect at once."""
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") == "cancel":
                self.canceled.add(str(msg.get("id")))
            elif msg.get("op") == "exit":
                break
            else:
                self.requests.put(msg)
        self.requests.put(None)

    def serve(self) -> None:
        threading.Thread(target=self.read_stdin, daemon=True).start()
        while True:
            msg = self.requests.get()
            if msg is None:
                return
            run_id = str(msg.get("id"))
            try:
                result = self.run(msg["op"], run_id, msg.get("payload") or {})
            except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as exc:
                emit(
                    "error",
                    id=run_id,
                    code="inference_failed",
                    message=f"{type(exc).__name__}: {exc}",
                )
            else:
                emit("done", id=run_id, result=result)
            self.canceled.discard(run_id)

    def run(self, op: str, run_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if op == "embed":
            return self.embed(payload)
        # No prefix cache across requests: the same request must give the same output whatever
        # ran before it (a reused prefix changes the floating-point path).
        self.llm.reset()
        params = {k: payload[k] for k in PARAMS if payload.get(k) is not None}
        params.setdefault("max_tokens", 256)
        start = time.perf_counter()
        if op == "generate":
            stream = self.llm.create_completion(prompt=payload["prompt"], stream=True, **params)
            return self.stream(run_id, stream, lambda choice: choice.get("text"), start)
        if op == "chat":
            stream = self.llm.create_chat_completion(
                messages=payload["messages"], stream=True, **params
            )
            return self.stream(run_id, stream, lambda c: c["delta"].get("content"), start)
        raise ValueError(f"unknown op {op!r}")

    def stream(
        self,
        run_id: str,
        stream: Any,
        text_of: Callable[[dict[str, Any]], str | None],
        start: float,
    ) -> dict[str, Any]:
        """Relay a llama-cpp-python stream in coalesced chunks; stop at once on cancel."""
        parts: list[str] = []
        pending: list[str] = []
        tokens = 0
        first_at: float | None = None
        flushed_at = time.perf_counter()
        finish: str | None = None
        for chunk in stream:
            if run_id in self.canceled:
                finish = "canceled"
                stream.close()
                break
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            text = text_of(choice)
            if not text:
                continue
            tokens += 1
            now = time.perf_counter()
            first_at = first_at or now
            parts.append(text)
            pending.append(text)
            if tokens == 1 or now - flushed_at >= CHUNK_EVERY_S:  # the first token at once
                emit("chunk", id=run_id, text="".join(pending))
                pending.clear()
                flushed_at = now
        if pending:
            emit("chunk", id=run_id, text="".join(pending))
        end = time.perf_counter()
        prompt_tokens = max(int(getattr(self.llm, "n_tokens", 0)) - tokens, 0)
        rate = tokens / (end - first_at) if first_at is not None and end > first_at else None
        return {
            "text": "".join(parts),
            "finish_reason": finish or "stop",
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
            "timings": {
                "ttft_s": None if first_at is None else first_at - start,
                "total_s": end - start,
                "tokens_per_s": rate,
            },
        }

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


# Chat formats for model families whose GGUF carries no chat template.
FALLBACK_CHAT_FORMATS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "qwen2": "chatml"}


def _chat_format(summary: GGUFSummary) -> str | None:
    """None (use the GGUF's own template) unless the file has none and its family is known."""
    if summary.has_chat_template:
        return None
    return FALLBACK_CHAT_FORMATS.get(summary.architecture or "")


def _pooling(llama_cpp: Any, summary: GGUFSummary, mode: str) -> int:
    """How an embedding context pools: the model's own way (CLS, last token, ...) when it names
    one, else the mean over the input's tokens. llama.cpp then returns one vector per sequence,
    so many inputs share a batch (per-token vectors of several inputs cannot be told apart)."""
    if mode == "embed" and summary.pooling_type in (None, llama_cpp.LLAMA_POOLING_TYPE_NONE):
        return int(llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    return int(llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitinglip_agent.infer")
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("generate", "embed"), default="generate")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpu-layers", type=int, default=-1)
    args = parser.parse_args(argv)
    try:
        import llama_cpp
    except ImportError as exc:
        emit("error", code="missing_capability", message=f"llama_cpp is not installed: {exc}")
        return 3
    start = time.perf_counter()
    summary = check_gguf(args.model)
    try:
        llm = llama_cpp.Llama(
            model_path=args.model,
            n_ctx=args.n_ctx,
            n_threads=args.threads or (os.cpu_count() or 1),
            n_gpu_layers=args.gpu_layers,
            embedding=args.mode == "embed",
            chat_format=_chat_format(summary),
            pooling_type=_pooling(llama_cpp, summary, args.mode),
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        emit("error", code="inference_failed", message=f"cannot load {args.model}: {exc}")
        return 4
    emit("ready", load_s=time.perf_counter() - start, n_ctx=args.n_ctx)
    Child(llm, args.mode).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
