"""Request bodies of the OpenAI API, checked and turned into task payloads.

Each endpoint's body is read strictly: a wrong type, a value out of range, an option this
gateway cannot honour or a key OpenAI does not define is a 400 that names the parameter, before
anything is queued. What passes becomes an `ApiRequest`: the task kind, the model and the
payload the agent's inference child takes (`prompt` / `messages` / `input` plus the sampling
parameters it knows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from bitinglip.control import parse_duration
from bitinglip.errors import InputError
from bitinglip.gateway.errors import bad_request

COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat uses the model's 256
MAX_STOP = 4
MAX_EMBED_INPUTS = 2048
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Keys accepted and ignored (they change nothing a single model on a host could honour).
_IGNORED = frozenset({"user", "metadata", "store", "service_tier"})
_SERVING = frozenset({"keep_alive", "immediate"})  # BitingLip's own: how a model is served
MAX_MODEL_NAME = 512  # a model id: an alias, a registered ref or short name

INT32_MAX = 2**31 - 1  # llama.cpp's token counts are C ints
UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class ApiRequest:
    """One checked request: what to queue and how to answer."""

    endpoint: str  # "completions", "chat" or "embeddings"
    kind: str  # the task kind: generate, chat, embed
    model: str
    payload: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    encoding_format: str = "float"

    @property
    def inputs(self) -> int:
        """How many texts an embeddings request embeds (0 for the others)."""
        value = self.payload.get("input")
        return 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad_request(
            "the request body nests arrays or objects too deeply to read; send a flatter "
            "JSON object",
            code="invalid_json",
        ) from None
    except ValueError as exc:  # not JSON, not UTF-8, an integer of thousands of digits
        raise bad_request(
            f"the request body is not valid JSON ({_first_line(exc)}); send a JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise bad_request(
            f"the request body must be a JSON object, not {_name(body)}", code="invalid_json"
        )
    return body


def completion(body: dict[str, Any], models: Collection[str]) -> ApiRequest:
    """POST /v1/completions."""
    known = {"model", "prompt", "echo", "suffix", "best_of", "logprobs", *_SERVING}
    known |= {*_SAMPLING, *_IGNORED}
    _check_keys(body, known)
    model = _model(body, models)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt must be a string (or a list of exactly one string)", param="prompt"
        )
    _only(body, "echo", (None, False), "echo is not supported")
    _only(body, "suffix", (None,), "suffix is not supported")
    _only(body, "best_of", (None, 1), "best_of must be 1")
    _only(body, "logprobs", (None, 0), "logprobs are not supported")
    payload = {"prompt": prompt, **_sampling(body, "max_tokens"), **_serving(body)}
    payload.setdefault("max_tokens", COMPLETIONS_MAX_TOKENS)
    return _request("completions", "generate", model, payload, body)


def chat(body: dict[str, Any], models: Collection[str]) -> ApiRequest:
    """POST /v1/chat/completions."""
    known = {
        "model",
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "response_format",
        *_SERVING,
        *_SAMPLING,
        *_IGNORED,
    }
    _check_keys(body, known)
    model = _model(body, models)
    messages = _messages(body.get("messages"))
    _only(body, "logprobs", (None, False), "logprobs are not supported")
    _only(body, "top_logprobs", (None, 0), "logprobs are not supported")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad_request('response_format must be {"type": "text"}', param="response_format")
    params = _sampling(body, "max_tokens") | _serving(body)
    limit = _int(body, "max_completion_tokens", low=1, high=INT32_MAX)
    if limit is not None:
        params["max_tokens"] = limit
    return _request("chat", "chat", model, {"messages": messages, **params}, body)


def embeddings(body: dict[str, Any], models: Collection[str]) -> ApiRequest:
    """POST /v1/embeddings."""
    _check_keys(body, {"model", "input", "encoding_format", "dimensions", *_SERVING, *_IGNORED})
    model = _model(body, models)
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
        raise bad_request(
            "input must be a non-empty string or a non-empty list of strings (token arrays "
            "are not supported)",
            param="input",
        )
    if len(inputs) > MAX_EMBED_INPUTS or any(not t for t in inputs):
        raise bad_request(
            f"input must hold 1 to {MAX_EMBED_INPUTS} non-empty strings", param="input"
        )
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request('encoding_format must be "float" or "base64"', param="encoding_format")
    _only(body, "dimensions", (None,), "dimensions is not supported")
    payload = {"input": value, **_serving(body)}
    return ApiRequest("embeddings", "embed", model, payload, encoding_format=fmt)


# -- parts --------------------------------------------------------------------------------

_SAMPLING = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repeat_penalty",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
    }
)


def _request(
    endpoint: str, kind: str, model: str, payload: dict[str, Any], body: dict[str, Any]
) -> ApiRequest:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"stream must be a boolean, not {_name(stream)}", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("stream_options is only allowed with stream", param="stream_options")
        if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
            raise bad_request(
                'stream_options must be an object like {"include_usage": true}',
                param="stream_options",
            )
        usage = options.get("include_usage", False)
        if not isinstance(usage, bool):
            raise bad_request("include_usage must be a boolean", param="stream_options")
        include_usage = usage
    return ApiRequest(endpoint, kind, model, payload, bool(stream), include_usage)


def _sampling(body: dict[str, Any], max_key: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    checks: dict[str, Callable[[], Any]] = {
        "max_tokens": lambda: _int(body, max_key, low=1, high=INT32_MAX),
        "temperature": lambda: _number(body, "temperature", 0.0, 2.0),
        "top_p": lambda: _number(body, "top_p", 0.0, 1.0),
        "top_k": lambda: _int(body, "top_k", low=0, high=INT32_MAX),
        "repeat_penalty": lambda: _number(body, "repeat_penalty", 0.0, math.inf),
        "seed": lambda: _int(body, "seed", low=0, high=UINT32_MAX),  # llama.cpp's seed type
        "stop": lambda: _stop(body.get("stop")),
    }
    for key, check in checks.items():
        value = check()
        if value is not None:
            params[key] = value
    _only(body, "n", (None, 1), "n must be 1: one choice per request")
    for key in ("frequency_penalty", "presence_penalty"):
        _only(body, key, (None, 0, 0.0), f"{key} is not supported (leave it 0)")
    _only(body, "logit_bias", (None, {}), "logit_bias is not supported")
    return params


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request(
            'messages must be a non-empty list of {"role", "content"} objects', param="messages"
        )
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object, not {_name(msg)}", param=where)
        given = msg.get("role")
        role = CHAT_ROLES.get(given) if isinstance(given, str) else None
        if role is None:
            raise bad_request(
                f"{where}.role must be one of {', '.join(CHAT_ROLES)}, not {_shown(given)}",
                param=f"{where}.role",
            )
        unknown = sorted(set(msg) - {"role", "content", "name"})
        if unknown:
            raise bad_request(f"{where}: {unknown[0]!r} is not supported", param=where)
        out.append({"role": role, "content": _content(msg.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise bad_request(
        f'{where}.content must be a string or a list of {{"type": "text", "text"}} parts',
        param=f"{where}.content",
    )


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not (
        isinstance(stops, list)
        and len(stops) <= MAX_STOP
        and all(isinstance(s, str) and s for s in stops)
    ):
        raise bad_request(
            f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", param="stop"
        )
    return stops or None


def _model(body: dict[str, Any], models: Collection[str]) -> str:
    """The model's name: an alias of `models` or, to be resolved against the registry when the
    request is queued (`catalog.resolve`), a registered model's ref or short name."""
    del models  # every name is resolved at submit, where the registry is
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: a model id from GET /v1/models", param="model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise bad_request(
            f"model must be a model id from GET /v1/models (at most {MAX_MODEL_NAME} "
            "printable characters)",
            param="model",
        )
    return model


def _serving(body: dict[str, Any]) -> dict[str, Any]:
    """BitingLip's own serving fields: `keep_alive` (below) and `immediate` (true: fail at once,
    503, when the model fits on no host, instead of waiting for room)."""
    immediate = body.get("immediate")
    if immediate is not None and not isinstance(immediate, bool):
        raise bad_request(f"immediate must be true or false, not {_name(immediate)}", "immediate")
    return _keep_alive(body) | ({"immediate": True} if immediate else {})


def _keep_alive(body: dict[str, Any]) -> dict[str, float]:
    """`keep_alive` (Ollama's: a duration like "5m" or a number of seconds; negative keeps the
    model loaded for ever, 0 unloads it after this request) as the payload's `keep_alive_s`."""
    value = body.get("keep_alive")
    if value is None:
        return {}
    fix = 'keep_alive must be a duration like "5m", "90s", "1h" or a number of seconds'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad_request(f"{fix}, not {_name(value)}", param="keep_alive")
    if isinstance(value, int | float):
        if abs(value) > 1e12 or not math.isfinite(value):
            raise bad_request(f"{fix}, not {value}", param="keep_alive")
        return {"keep_alive_s": -1.0 if value < 0 else float(value)}
    try:
        return {"keep_alive_s": parse_duration(value)}
    except InputError:
        raise bad_request(f"{fix}, not {_shown(value)}", param="keep_alive") from None


def _check_keys(body: dict[str, Any], known: Collection[str]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        key = unknown[0] if unknown[0].isprintable() else json.dumps(unknown[0])  # one line
        raise bad_request(f"unrecognized or unsupported argument: {key}", param=unknown[0])


def _only(body: dict[str, Any], key: str, allowed: tuple[Any, ...], message: str) -> None:
    value = body.get(key)
    if any(value == a and type(value) is type(a) for a in allowed):
        return
    raise bad_request(message, param=key)


def _int(
    body: dict[str, Any], key: str, low: int | None = None, high: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{key} must be an integer, not {_name(value)}", param=key)
    if low is not None and value < low:
        raise bad_request(f"{key} must be at least {low}, not {value}", param=key)
    if high is not None and value > high:
        raise bad_request(f"{key} must be at most {high}, not {value}", param=key)
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise bad_request(f"{key} must be a number, not {_name(value)}", param=key)
    if not low <= value <= high:
        bounds = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
        raise bad_request(f"{key} must be {bounds}, not {value}", param=key)
    return float(value)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _shown(value: Any) -> str:
    """A value for a message: a short string as it is, anything else by its JSON type."""
    return repr(value[:40]) if isinstance(value, str) else _name(value)


def _name(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), "null")
