"""Response bodies in OpenAI's shapes, whole and as server-sent-event chunks.

A finished task's `result` (`text`, `finish_reason`, `usage`; `embeddings` for embed) becomes a
`text_completion`, a `chat.completion` or an embedding `list`. A stream is `data: {chunk}` events
(a chat stream starts with the assistant role, then content deltas, then an empty delta with the
finish reason; with `stream_options.include_usage` a last chunk with no choices carries the
usage) and ends with `data: [DONE]`.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from bitinglip.gateway.bodies import ApiRequest

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"
FINISH_REASONS = ("stop", "length")


def response_id(req: ApiRequest, task_id: int) -> str:
    prefix = {"chat": "chatcmpl", "completions": "cmpl"}.get(req.endpoint, "embd")
    return f"{prefix}-bitinglip-{task_id}"


def finish_reason(result: dict[str, Any]) -> str:
    reason = result.get("finish_reason")
    return reason if reason in FINISH_REASONS else "stop"


def usage(result: dict[str, Any]) -> dict[str, int]:
    found = result.get("usage") or {}
    prompt = int(found.get("prompt_tokens") or 0)
    completion = int(found.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(
    req: ApiRequest, task_id: int, created: int, result: dict[str, Any]
) -> dict[str, Any]:
    """The whole answer of /v1/completions or /v1/chat/completions."""
    text = str(result.get("text") or "")
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason(result)}
    if req.endpoint == "chat":
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        obj = "chat.completion"
    else:
        choice["text"] = text
        obj = "text_completion"
    return {
        "id": response_id(req, task_id),
        "object": obj,
        "created": created,
        "model": req.model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": usage(result),
    }


def embeddings_body(req: ApiRequest, result: dict[str, Any]) -> dict[str, Any]:
    vectors = result.get("embeddings") or []
    found = result.get("usage") or {}
    tokens = int(found.get("prompt_tokens") or 0)
    return {
        "object": "list",
        "model": req.model,
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class StreamShape:
    """The SSE events of one streamed answer."""

    def __init__(self, req: ApiRequest, task_id: int, created: int) -> None:
        self.req = req
        self.chat = req.endpoint == "chat"
        self.head: dict[str, Any] = {
            "id": response_id(req, task_id),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": created,
            "model": req.model,
            "system_fingerprint": None,
        }

    def start(self) -> bytes:
        """A chat stream's first event (the role); nothing for completions."""
        if not self.chat:
            return b""
        return self._event(self._choice({"role": "assistant", "content": ""}, None))

    def text(self, text: str) -> bytes:
        if self.chat:
            return self._event(self._choice({"content": text}, None))
        return self._event(self._choice(text, None))

    def end(self, result: dict[str, Any]) -> bytes:
        """The finishing event, the usage event when asked for, and [DONE]."""
        reason = finish_reason(result)
        events = [self._event(self._choice({} if self.chat else "", reason))]
        if self.req.include_usage:
            events.append(self._event([], usage(result)))
        events.append(DONE)
        return b"".join(events)

    def _choice(self, delta: dict[str, Any] | str, reason: str | None) -> list[dict[str, Any]]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        choice["logprobs"] = None
        choice["finish_reason"] = reason
        return [choice]

    def _event(self, choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> bytes:
        chunk = {**self.head, "choices": choices}
        if self.req.include_usage:
            chunk["usage"] = use
        return b"data: " + _ENCODE(chunk).encode() + b"\n\n"


def error_event(body: dict[str, Any]) -> bytes:
    """An error after the stream started (the status line is gone): one event, no [DONE]."""
    return b"data: " + _ENCODE(body).encode() + b"\n\n"
