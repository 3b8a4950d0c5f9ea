"""Bad requests get 400 with an OpenAI error object (never a 500), nothing is queued for them,
and the server goes on; unknown paths and methods get the same error shape; a full interactive
queue gets 429 with Retry-After."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.gateway.server import Served
from tests.conftest import NOWHERE
from tests.gateway.conftest import MODEL, assert_error_object, client, needs_model, request

pytestmark = needs_model

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MSGS = [{"role": "user", "content": "hi"}]

# (path, body, the parameter the error names (None: any))
CORPUS: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    (COMPLETIONS, b"{not json", None),
    (COMPLETIONS, b"", None),
    (COMPLETIONS, b"\xff\xfe\x00", None),
    (CHAT, b'["a", "list"]', None),
    (COMPLETIONS, {"prompt": "hi"}, "model"),
    (COMPLETIONS, {"model": 7, "prompt": "hi"}, "model"),
    (COMPLETIONS, {"model": "no-such-model", "prompt": "hi"}, "model"),
    (CHAT, {"model": "gpt-4o", "messages": MSGS}, "model"),
    (COMPLETIONS, {"model": MODEL, "prompt": 5}, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": "8"}, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "temperature": 3}, "temperature"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "stream": "yes"}, "stream"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": 2}, "n"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "stop": [1]}, "stop"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "bogus": 1}, "bogus"),
    (COMPLETIONS, {"model": MODEL, "prompt": "hi", "stream_options": {}}, "stream_options"),
    (CHAT, {"model": MODEL, "messages": []}, "messages"),
    (CHAT, {"model": MODEL, "messages": "hi"}, "messages"),
    (CHAT, {"model": MODEL}, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, None),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, None),
    (CHAT, {"model": MODEL, "messages": MSGS, "max_completion_tokens": 0}, None),
    (CHAT, {"model": MODEL, "messages": MSGS, "tools": []}, "tools"),
    (EMBEDDINGS, {"model": MODEL, "input": []}, "input"),
    (EMBEDDINGS, {"model": MODEL, "input": [1, 2, 3]}, "input"),
    (EMBEDDINGS, {"model": MODEL, "input": ""}, "input"),
    (EMBEDDINGS, {"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
]


@pytest.mark.parametrize(("path", "body", "param"), CORPUS)
def test_bad_input_is_a_400_error_object(
    served: Served,
    observer: ControlPlane,
    path: str,
    body: bytes | dict[str, Any],
    param: str | None,
) -> None:
    before = sum(observer.status()["tasks"].values())
    error = assert_error_object(request(served, "POST", path, body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert sum(observer.status()["tasks"].values()) == before  # nothing queued


def test_unknown_model_says_model_not_found(served: Served) -> None:
    reply = request(served, "POST", COMPLETIONS, {"model": "nope", "prompt": "hi"})
    assert assert_error_object(reply, 400)["code"] == "model_not_found"


def test_a_10_mb_prompt_is_refused_and_the_server_lives(served: Served) -> None:
    body = json.dumps({"model": MODEL, "prompt": "x" * (10 << 20)}).encode()
    error = assert_error_object(request(served, "POST", COMPLETIONS, body), 400)
    assert error["code"] == "request_too_large"
    assert request(served, "GET", "/health").status == 200
    assert [m.id for m in client(served).models.list().data] == [MODEL]


def test_unknown_paths_and_methods_are_error_objects(served: Served) -> None:
    assert_error_object(request(served, "GET", "/v1/nothing"), 404)
    assert_error_object(request(served, "GET", COMPLETIONS), 405)
    assert_error_object(request(served, "GET", "/v1/models/no-such-model"), 404)


def test_a_full_interactive_queue_is_429_with_retry_after(
    served: Served, observer: ControlPlane
) -> None:
    limit = served.bridge.profile.gateway.max_queued
    priority = served.bridge.profile.gateway.priority
    # Interactive tasks that no host may run (labels nobody has) fill the queue; batch ones
    # (priority 0) do not count.
    observer.submit_many([TaskSpec(kind="echo", labels=NOWHERE, priority=0)] * limit)
    held = observer.submit_many([TaskSpec(kind="echo", labels=NOWHERE, priority=priority)] * limit)
    try:
        reply = request(served, "POST", COMPLETIONS, {"model": MODEL, "prompt": "hi"})
        error = assert_error_object(reply, 429)
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        assert int(reply.headers["retry-after"]) >= 1
        observer.cancel(held[:1])
        ok = request(served, "POST", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 1})
        assert ok.status == 200, ok.body
    finally:
        observer.cancel([t.id for t in observer.tasks(state=TaskState.QUEUED, limit=1000)])


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_a_400(served: Served, stream: bool) -> None:
    """Refused by the model, not the gateway: the task fails, and the failure (before any
    output) is the request's 400, streamed or not."""
    body = {"model": MODEL, "prompt": "word " * 20000, "max_tokens": 2, "stream": stream}
    error = assert_error_object(request(served, "POST", COMPLETIONS, body), 400)
    assert "the prompt is longer than the model's context window" in error["message"]
    assert error["code"] == "inference_failed"
