"""Profile keys for model-aware serving: `[serving]`, a model's runtime settings, durations.

`[serving]` says how the dispatcher places model work (`placement`, `scale_out_queue_depth`) and
how long an idle model stays loaded (`keep_alive`). A `[models.NAME]` table's runtime keys
(`n_ctx`, `gpu_layers`, `parallel`, ...) say how llama.cpp loads that model; `parse_model_runtime`
reads them into the keyword arguments of `ModelAlias` (`config_control.py`), and
`bitinglip.control.models.settings` turns them into the settings a run carries.

Durations (`keep_alive`) mean what they mean to Ollama: a number of seconds, or a string like
`"90s"`, `"5m"`, `"1h30m"`, `"250ms"`; `-1` (any negative value) keeps the model loaded for ever,
`0` unloads it as soon as it has no work. `duration_seconds` is the one parser; the CLI's
`--keep-alive` goes through it too. Standard library only, like the rest of the loader.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Literal

from bitinglip.config_tables import Table, describe

__all__ = [
    "CACHE_TYPES",
    "DEFAULT_KEEP_ALIVE_S",
    "DURATION_FIX",
    "MODEL_RUNTIME_KEYS",
    "PLACEMENTS",
    "QUANTIZED_CACHE_TYPES",
    "SERVING_KEYS",
    "SPLIT_MODES",
    "GpuLayers",
    "ServingConfig",
    "duration_seconds",
    "parse_model_runtime",
    "parse_serving",
]

GpuLayers = int | Literal["auto"]

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default, "5m"
DURATION_FIX = (
    'a number of seconds, or a string like "90s", "5m", "1h30m"; -1 keeps the model loaded '
    "for ever, 0 unloads it after each request"
)

# The KV cache types llama.cpp accepts (`--cache-type-k/-v`), by ggml type name.
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
QUANTIZED_CACHE_TYPES = ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
SPLIT_MODES = ("none", "layer", "row")
PLACEMENTS = ("model", "rotation")
MAX_DEVICES = 16  # llama.cpp's LLAMA_MAX_DEVICES
MAX_PARALLEL = 64
MIN_CTX = 128
MAX_CTX = 1 << 24

# The runtime keys of a `[models.NAME]` table, in the order the README lists them.
MODEL_RUNTIME_KEYS = (
    "n_ctx",
    "gpu_layers",
    "threads",
    "flash_attn",
    "cache_type_k",
    "cache_type_v",
    "split_mode",
    "tensor_split",
    "main_gpu",
    "chat_format",
    "parallel",
    "keep_alive",
    "min_replicas",
)

# -- durations -------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: object) -> float | None:
    """Seconds for a duration (a number of seconds, or `"90s"`, `"5m"`, `"1h30m"`, `"-1"`):
    -1.0 for any negative one (for ever), None when `value` is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        parsed = _parse_text(value.strip())
        if parsed is None:
            return None
        seconds = parsed
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return -1.0 if seconds < 0 else seconds


def _parse_text(text: str) -> float | None:
    if _NUMBER.fullmatch(text):
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    parts = list(_PART.finditer(body))
    if not body or "".join(p.group(0) for p in parts) != body:
        return None
    return sign * sum(float(p.group(1)) * _UNIT_S[p.group(2)] for p in parts)


def read_duration(table: Table, key: str, default: float | None) -> float | None:
    """A duration key of `table` in seconds, or `default` when the key is absent."""
    if key not in table:
        return default
    seconds = duration_seconds(table.data[key])
    if seconds is None:
        table.fail(key, f"{describe(table.data[key])} is not a duration", f"use {DURATION_FIX}")
    return seconds


# -- [serving] -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingConfig:
    """How model work is placed on hosts, and how long an idle model stays loaded."""

    placement: str = "model"  # "model": where the model is; "rotation": hosts in turn
    scale_out_queue_depth: int = 4  # queued tasks per serving host before another loads it
    keep_alive: float = DEFAULT_KEEP_ALIVE_S  # seconds idle before unloading; -1 never, 0 at once


SERVING_KEYS = tuple(f.name for f in fields(ServingConfig))


def parse_serving(table: Table) -> ServingConfig:
    fix = "use a number of queued tasks, at least 1"
    keep_alive = read_duration(table, "keep_alive", None)
    return ServingConfig(
        placement=table.choice("placement", PLACEMENTS) or "model",
        scale_out_queue_depth=table.integer("scale_out_queue_depth", 4, 1, None, fix),
        keep_alive=DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive,
    )


# -- [models.NAME] runtime keys --------------------------------------------------------------

_CHAT_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_model_runtime(item: Table) -> dict[str, Any]:
    """The runtime keys of one `[models.NAME]` table, as `ModelAlias` keyword arguments."""
    flash_attn = item.opt_bool("flash_attn")
    cache_v = item.choice("cache_type_v", CACHE_TYPES)
    if cache_v in QUANTIZED_CACHE_TYPES and flash_attn is not True:
        problem = f'"{cache_v}" needs flash_attn = true (llama.cpp quantizes V only with it)'
        item.fail("cache_type_v", problem, 'add flash_attn = true or use cache_type_v = "f16"')
    return {
        "n_ctx": item.integer(
            "n_ctx", 4096, MIN_CTX, MAX_CTX, f"use a context of {MIN_CTX} to {MAX_CTX} tokens"
        ),
        "gpu_layers": _gpu_layers(item),
        "threads": _opt_int(item, "threads", 1, 1024, "use 1 to 1024 threads, or remove it"),
        "flash_attn": flash_attn,
        "cache_type_k": item.choice("cache_type_k", CACHE_TYPES),
        "cache_type_v": cache_v,
        "split_mode": item.choice("split_mode", SPLIT_MODES),
        "tensor_split": _tensor_split(item),
        "main_gpu": _opt_int(
            item, "main_gpu", 0, MAX_DEVICES - 1, f"use a GPU index from 0 to {MAX_DEVICES - 1}"
        ),
        "chat_format": _chat_format(item),
        "parallel": item.integer(
            "parallel", 1, 1, MAX_PARALLEL, f"use 1 to {MAX_PARALLEL} sequences"
        ),
        "keep_alive": read_duration(item, "keep_alive", None),
        "min_replicas": item.integer(
            "min_replicas", 0, 0, 1024, "use a number of hosts, 0 (load on demand) or more"
        ),
    }


def _opt_int(item: Table, key: str, low: int, high: int, fix: str) -> int | None:
    return item.integer(key, low, low, high, fix) if key in item else None


def _gpu_layers(item: Table) -> GpuLayers:
    value = item.data.get("gpu_layers", "auto")
    fix = 'use "auto" (from the fit estimate), -1 (all layers), 0 (CPU only) or a layer count'
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        item.fail("gpu_layers", f"{describe(value)} is not allowed", fix)
    if isinstance(value, bool) or not isinstance(value, int):
        item.wrong_type("gpu_layers", '"auto" or an integer', 'gpu_layers = "auto"')
    if value < -1:
        item.fail("gpu_layers", f"{value} is out of range", fix)
    return value


def _tensor_split(item: Table) -> tuple[float, ...] | None:
    if "tensor_split" not in item:
        return None
    value = item.data["tensor_split"]
    example = "tensor_split = [3, 1] (a share per GPU: here 3/4 and 1/4)"
    if not isinstance(value, list) or not value:
        item.wrong_type("tensor_split", "a non-empty array of numbers", example)
    if len(value) > MAX_DEVICES:
        problem = f"{len(value)} shares for at most {MAX_DEVICES} GPUs"
        item.fail("tensor_split", problem, f"give at most {MAX_DEVICES}, one per GPU")
    for share in value:
        ok = isinstance(share, int | float) and not isinstance(share, bool)
        if not ok or not math.isfinite(share) or share < 0:
            problem = f"{describe(share)} is not a share (a number, 0 or more)"
            item.fail("tensor_split", problem, f"write it like {example}")
    if not any(value):
        item.fail("tensor_split", "every share is 0", "give at least one GPU a share above 0")
    return tuple(float(share) for share in value)


def _chat_format(item: Table) -> str | None:
    name = item.opt_str("chat_format")
    if name is not None and not _CHAT_FORMAT.fullmatch(name):
        fix = 'use a llama-cpp-python chat format name, like "chatml" or "llama-3"'
        item.fail("chat_format", f"{describe(name)} is not a chat format name", fix)
    return name
