"""A model's run settings as the agent applies them: the task's `model.settings` (contract 2 of
issue 14) over the agent's defaults, checked; its keep-alive; and the memory a load takes.

Standard library only: the inference child (`infer.py`) turns these names into llama.cpp's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitinglip_agent.gguf_check import GGUFSummary
    from bitinglip_agent.server import AgentOptions

N_CTX = 4096  # tokens of context per sequence, when the model does not say
MAX_PARALLEL = 64
SPLIT_MODES = ("none", "layer", "row")
# KV cache types llama.cpp takes (ggml type names) and their bytes per element.
CACHE_TYPES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
# Weights, buffers and the compute graph take about this much more than the file.
WEIGHTS_OVERHEAD = 1.2

DEFAULTS: dict[str, Any] = {
    "n_ctx": N_CTX,
    "parallel": 1,
    "flash_attn": False,
    "cache_type_k": "f16",
    "cache_type_v": "f16",
    "split_mode": "layer",
    "tensor_split": None,
    "main_gpu": 0,
    "chat_format": None,
}


class SettingsError(ValueError):
    """A setting the agent cannot apply; the run fails as bad_request with this line."""


def effective(settings: Any, options: AgentOptions) -> dict[str, Any]:
    """Every setting a child is started with: the given ones over the agent's defaults."""
    given = settings if isinstance(settings, dict) else {}
    out = dict(DEFAULTS)
    out["gpu_layers"] = options.gpu_layers
    out["threads"] = options.threads
    for key, value in given.items():
        if key in out and value is not None:
            out[key] = value
    _check(out)
    if out["threads"] == 0:
        out["threads"] = options.threads
    return out


def _check(s: dict[str, Any]) -> None:
    def integer(key: str, low: int, high: int | None = None) -> None:
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingsError(f"setting {key} = {value!r}: expected an integer >= {low}")
        if high is not None and value > high:
            raise SettingsError(f"setting {key} = {value!r}: at most {high}")

    integer("n_ctx", 0)
    integer("parallel", 1, MAX_PARALLEL)
    integer("gpu_layers", -1)
    integer("threads", 0)
    integer("main_gpu", 0)
    if not isinstance(s["flash_attn"], bool):
        raise SettingsError(f"setting flash_attn = {s['flash_attn']!r}: expected true or false")
    for key in ("cache_type_k", "cache_type_v"):
        if s[key] not in CACHE_TYPES:
            names = ", ".join(CACHE_TYPES)
            raise SettingsError(f"setting {key} = {s[key]!r}: expected one of {names}")
    if s["split_mode"] not in SPLIT_MODES:
        raise SettingsError(f"setting split_mode = {s['split_mode']!r}: expected none|layer|row")
    split = s["tensor_split"]
    if split is not None and not (
        isinstance(split, list)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in split)
    ):
        raise SettingsError(f"setting tensor_split = {split!r}: expected a list of numbers")
    if s["chat_format"] is not None and not isinstance(s["chat_format"], str):
        raise SettingsError(f"setting chat_format = {s['chat_format']!r}: expected a name")


def keep_alive_s(task: dict[str, Any], default: float) -> float:
    """How long the model stays loaded once idle after this task: the request's keep-alive, then
    the model's, then the agent's default. -1 (any negative): forever; 0: unload at once."""
    payload, model = task.get("payload"), task.get("model")
    given = (
        payload.get("keep_alive_s") if isinstance(payload, dict) else None,
        model.get("keep_alive_s") if isinstance(model, dict) else None,
    )
    for value in given:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return -1.0 if value < 0 else float(value)
    return default


def estimate_bytes(summary: GGUFSummary, settings: dict[str, Any]) -> int:
    """What loading takes: the file x WEIGHTS_OVERHEAD, plus the KV cache of n_ctx x parallel
    tokens (n_ctx 0: the model's training context)."""
    n_ctx = settings["n_ctx"] or summary.context_length or N_CTX
    per_token = summary.kv_elements_per_token or 0
    element = (CACHE_TYPES[settings["cache_type_k"]] + CACHE_TYPES[settings["cache_type_v"]]) / 2
    kv = per_token * n_ctx * settings["parallel"] * element
    return int(summary.file_size * WEIGHTS_OVERHEAD + kv)
