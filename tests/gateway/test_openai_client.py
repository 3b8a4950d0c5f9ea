"""The official `openai` client against the live gateway: models, completions, chat (streamed
and not), embeddings; streamed text equals the whole answer at temperature 0 with a seed; each
request is a task at the gateway's priority."""

from __future__ import annotations

import base64
import math
import struct
import time
from typing import Any

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskState
from bitinglip.gateway.server import Served
from tests.gateway.conftest import KEY, MODEL, client, needs_model

pytestmark = needs_model

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 12}
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_models_lists_the_aliases_with_their_copies(keyed: Served) -> None:
    """With the key: each model's copies per host (without one: no hosts, test_hardening)."""
    models = client(keyed, KEY).models.list()
    assert [m.id for m in models.data] == [MODEL]
    model = models.data[0]
    assert model.object == "model" and model.owned_by == "bitinglip"
    assert model.model_extra is not None
    assert model.model_extra["hosts"]["local"]["state"] == "ready"
    assert client(keyed, KEY).models.retrieve(MODEL).id == MODEL


def test_completion_with_usage(served: Served, observer: ControlPlane) -> None:
    raw = client(served).completions.with_raw_response.create(
        model=MODEL, prompt="The sky is", **GREEDY
    )
    done = raw.parse()
    assert done.object == "text_completion" and done.model == MODEL
    [choice] = done.choices
    assert choice.text and choice.finish_reason in ("stop", "length")
    usage = done.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= GREEDY["max_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    task = observer.task(int(raw.headers["x-bitinglip-task"]))
    assert task.kind == "generate" and task.state == TaskState.SUCCEEDED
    assert task.priority == served.bridge.profile.gateway.priority == 100
    assert task.result["text"] == choice.text


def test_chat_streamed_text_equals_the_whole_answer(served: Served) -> None:
    api = client(served)
    whole = api.chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    chunks = list(
        api.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == whole.choices[0].finish_reason and not any(finishing[:-1])
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage


def test_completion_streamed_text_equals_the_whole_answer(served: Served) -> None:
    api = client(served)
    whole = api.completions.create(model=MODEL, prompt="Once upon a time", **GREEDY)
    stream = api.completions.create(model=MODEL, prompt="Once upon a time", stream=True, **GREEDY)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # usage only when asked for


def test_embeddings_float_and_base64(served: Served) -> None:
    api = client(served)
    inputs = ["a red apple", "a green pear"]
    found = api.embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    assert [d.index for d in found.data] == [0, 1]
    vectors = [d.embedding for d in found.data]
    assert len(vectors[0]) == len(vectors[1]) > 0
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert found.usage.prompt_tokens > 0
    assert found.usage.total_tokens == found.usage.prompt_tokens
    # The client asks for base64 unless told otherwise, and decodes it.
    decoded = api.embeddings.create(model=MODEL, input=inputs).data[0].embedding
    assert decoded == pytest.approx(vectors[0], abs=1e-6)
    packed = api.embeddings.with_raw_response.create(
        model=MODEL, input="a red apple", encoding_format="base64"
    )
    raw = packed.http_response.json()["data"][0]["embedding"]
    floats = struct.unpack(f"<{len(vectors[0])}f", base64.b64decode(raw))
    assert list(floats) == pytest.approx(vectors[0], abs=1e-6)


def test_models_say_where_a_model_is_loaded(keyed: Served) -> None:
    """After a request the local agent has the model loaded; its telemetry says so (1 Hz)."""
    api = client(keyed, KEY)
    api.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    deadline = time.monotonic() + 10
    while (extra := api.models.retrieve(MODEL).model_extra) is not None:
        if extra["loaded_on"] == ["local"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert extra is not None and extra["loaded_on"] == ["local"]
    assert extra["hosts"]["local"] == {"state": "ready", "loaded": True}
