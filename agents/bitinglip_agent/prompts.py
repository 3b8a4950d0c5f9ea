"""A request's prompt tokens, stop strings and sampling parameters, the way llama-cpp-python
makes them: completions tokenized as `create_completion` does, chat messages through the
model's chat handler (a named `chat_format`, else the GGUF's template through its
Jinja2ChatFormatter, else the family's known format), whose stop strings and defaults apply.

The chat handler is llama-cpp-python's own: it is called with a stand-in for its `Llama` that
tokenizes with the engine and catches the `create_completion` call it ends with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitinglip_agent.engine import Engine

# llama-cpp-python's create_completion defaults.
COMPLETION_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "seed": None,
}
# What a request may set (the rest keep the defaults).
PARAMS = (
    *("max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed"),
    *("repeat_penalty", "frequency_penalty", "presence_penalty", "typical_p"),
)
MAX_TOKENS = 256
# Chat formats for model families whose GGUF carries no chat template.
FALLBACK_CHAT_FORMATS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "qwen2": "chatml"}


@dataclass
class Prompt:
    tokens: list[int]
    stops: list[str]
    params: dict[str, Any]  # sampling: COMPLETION_DEFAULTS' keys
    max_tokens: int | None  # None: up to the end of the sequence's context


class _Caught(Exception):
    def __init__(self, call: dict[str, Any]) -> None:
        super().__init__("create_completion")
        self.call = call


class _StandIn:
    """What a chat handler uses of its `llama`: tokenize, then create_completion (caught)."""

    verbose = False

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._engine.tokenize(text, add_bos, special)

    def create_completion(self, **call: Any) -> Any:
        raise _Caught(call)


class Prompter:
    """Turns `generate` and `chat` payloads into Prompts for one engine."""

    def __init__(self, engine: Engine, chat_format: str | None, architecture: str | None) -> None:
        self.engine = engine
        self.handler, self.chat_format = _chat_handler(engine, chat_format, architecture)

    def completion(self, payload: dict[str, Any]) -> Prompt:
        text = payload["prompt"]
        if not isinstance(text, str):
            raise ValueError("prompt must be a string")
        tokens = self.engine.tokenize(text.encode(), True, True) if text else []
        return self._prompt(tokens or [self.engine.bos()], payload, dict(COMPLETION_DEFAULTS))

    def chat(self, payload: dict[str, Any]) -> Prompt:
        given = {k: payload[k] for k in PARAMS if payload.get(k) is not None}
        given.pop("max_tokens", None)
        try:
            self.handler(llama=_StandIn(self.engine), messages=payload["messages"], **given)
        except _Caught as caught:
            call = caught.call
        else:
            raise ValueError(f"chat format {self.chat_format!r} does not make a plain completion")
        defaults = {k: call.get(k, v) for k, v in COMPLETION_DEFAULTS.items()}
        stops = call.get("stop") or []
        return self._prompt(list(call["prompt"]), {**payload, "stop": stops}, defaults)

    def _prompt(self, tokens: list[int], payload: dict[str, Any], params: dict[str, Any]) -> Prompt:
        for key in params:
            if payload.get(key) is not None:
                params[key] = payload[key]
        stop = payload.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
        max_tokens = payload.get("max_tokens", MAX_TOKENS)
        if max_tokens is not None and not isinstance(max_tokens, int):
            raise ValueError(f"max_tokens must be an integer, not {max_tokens!r}")
        return Prompt(
            tokens=tokens,
            stops=[s for s in stops if s],
            params=params,
            max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
        )


def _chat_handler(
    engine: Engine, chat_format: str | None, architecture: str | None
) -> tuple[Any, str]:
    """The chat handler llama-cpp-python's Llama would pick, and its name."""
    from llama_cpp import llama_chat_format as formats

    if chat_format:
        return formats.get_chat_completion_handler(chat_format), chat_format
    template = engine.chat_template()
    if template:
        guessed = formats.guess_chat_format_from_gguf_metadata(
            {"tokenizer.chat_template": template}
        )
        if guessed is not None:
            return formats.get_chat_completion_handler(guessed), guessed
        formatter = formats.Jinja2ChatFormatter(
            template=template,
            eos_token=engine.token_text(engine.eos()),
            bos_token=engine.token_text(engine.bos()),
            stop_token_ids=[engine.eos()],
        )
        return formatter.to_chat_handler(), "chat_template.default"
    name = FALLBACK_CHAT_FORMATS.get(architecture or "", "llama-2")
    return formats.get_chat_completion_handler(name), name
