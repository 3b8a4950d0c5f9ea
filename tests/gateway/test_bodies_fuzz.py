"""Any body at all, through the body readers: a checked request or an `ApiError`, never another
exception (which the app would answer 500). Bytes, JSON of any shape, and objects whose keys are
the ones each endpoint reads, with values of any JSON type."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bitinglip.gateway import bodies
from bitinglip.gateway.bodies import ApiRequest
from bitinglip.gateway.errors import ApiError

MODELS = frozenset({"m"})
Parse = Callable[[dict[str, Any], frozenset[str]], ApiRequest]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.recursive(
    scalars | st.sampled_from(["m", "user", "text", "float", "base64", ""]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
message = st.dictionaries(
    st.sampled_from(["role", "content", "name", "type", "text"]),
    values | st.sampled_from(["system", "developer", "user", "assistant"]),
    max_size=3,
)
COMMON = [
    "model", "user", "metadata", "stream", "stream_options", "n", "tools", "bogus", "keep_alive",
]  # fmt: skip
SAMPLING = ["max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed", "stop"]
PENALTIES = ["frequency_penalty", "presence_penalty", "logit_bias"]
# each reader with the keys it reads (so that a body gets past the unknown-key check)
PARSERS: list[tuple[Parse, list[str]]] = [
    (bodies.completion, [*COMMON, *SAMPLING, *PENALTIES, "prompt", "echo", "suffix", "best_of"]),
    (
        bodies.chat,
        [*COMMON, *SAMPLING, *PENALTIES, "messages", "max_completion_tokens", "logprobs",
         "top_logprobs", "response_format"],
    ),
    (bodies.embeddings, [*COMMON, "input", "encoding_format", "dimensions"]),
]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[Parse, dict[str, Any]]:
    """A reader and a body of its keys; `model` mostly right, `messages` mostly a list of
    message-like objects, so that most bodies get as far as their values."""
    parse, keys = draw(st.sampled_from(PARSERS))
    found = draw(st.dictionaries(st.sampled_from(keys), values, max_size=6))
    if draw(st.integers(0, 3)):
        found["model"] = "m"
    if parse is bodies.chat and draw(st.integers(0, 3)):
        found["messages"] = draw(st.lists(message, min_size=1, max_size=3))
    return parse, found


def never_500(parse: Parse, found: dict[str, Any]) -> None:
    try:
        req = parse(found, MODELS)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message and "\n" not in exc.message
    else:
        json.dumps(req.payload)  # what is queued is JSON
        assert req.model == found["model"]  # any name: resolved against the registry at submit


@settings(max_examples=300, deadline=None)
@given(requests())
def test_any_body_is_a_request_or_a_400(drawn: tuple[Parse, dict[str, Any]]) -> None:
    never_500(*drawn)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64) | values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_are_an_object_or_a_400(raw: bytes) -> None:
    try:
        found = bodies.parse_json(raw)
    except ApiError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"
    else:
        assert isinstance(found, dict)
        for parse, _keys in PARSERS:
            never_500(parse, found)


def test_deep_and_long_json_are_400s() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"7" * 5000 + b"}"):
        try:
            bodies.parse_json(raw)
        except ApiError as exc:
            assert exc.status == 400 and exc.code == "invalid_json"
        else:
            raise AssertionError("parsed")
