"""What a run of a model carries from the profile: its llama.cpp settings and its keep-alive.

`run_settings(profile, model, free_bytes=..., meta=...)` is the `settings` of a run's `model`
(the agent's `task["model"]["settings"]`): the model's `[models.NAME]` runtime keys, or the
defaults for a name without a table. `n_ctx`, `gpu_layers` and `parallel` are always there; the
other keys only when the profile sets them (a missing key is the agent's default).

`gpu_layers = "auto"` becomes a number here, from the fit estimate (`fit.estimate` and
`fit.plan`, the arithmetic of `bitinglip models fit`) against `free_bytes`, the free GPU memory
the model may use: -1 (all layers) when the model fits, or when there is no GPU figure (a host
without a GPU, where llama.cpp ignores the count) or nothing to estimate from; else as many
layers as fit, 0 when none does. `meta` is the model file's `GGUFMeta` (its header is re-read
when its `source` is a local file, for the per-layer sizes) or the `GGUFHeader` itself.

`model_need(alias, meta)` is that estimate, the one memory estimate of a served model: its
weights and the KV cache of `n_ctx × parallel` tokens in its cache types (`fit.estimate`).
Placement sums `need.total(0)` per model (`runtime/model_sizes.py`, the header of a local file
read once per path, size and mtime by `local_header`); `auto` and `models fit` add one margin
per device.

`keep_alive_s(profile, model)` is the model's `keep_alive`, else `[serving] keep_alive`, in
seconds (-1 for ever, 0 unload after the request). `parse_duration` reads a request's keep-alive
(`--keep-alive`, the gateway's `keep_alive`) the same way the profile's are read.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from bitinglip.config import DURATION_FIX, ModelAlias, Profile, duration_seconds
from bitinglip.config_serving import MODEL_RUNTIME_KEYS
from bitinglip.control.models.fit import KV_TYPE_BYTES, Device, Fit, Need, estimate, plan
from bitinglip.control.models.gguf_header import GGUFHeader, file_reads, read_header
from bitinglip.control.models.gguf_meta import GGUFMeta
from bitinglip.errors import InputError

__all__ = [
    "KV_TYPE_BYTES",
    "auto_gpu_layers",
    "keep_alive_s",
    "local_header",
    "model_need",
    "parse_duration",
    "run_settings",
]

# The keys a run carries only when the profile sets them: the runtime keys less those it always
# carries (n_ctx, gpu_layers, parallel) and those that are not llama.cpp's (keep_alive, replicas).
_OPTIONAL = tuple(
    k
    for k in MODEL_RUNTIME_KEYS
    if k not in ("n_ctx", "gpu_layers", "parallel", "keep_alive", "min_replicas")
)


def run_settings(
    profile: Profile,
    model: str,
    *,
    free_bytes: int | None = None,
    meta: GGUFMeta | GGUFHeader | None = None,
) -> dict[str, Any]:
    """The llama.cpp settings of a run of `model` (an alias; any other name gets the defaults)."""
    alias = _alias(profile, model)
    layers = alias.gpu_layers
    if not isinstance(layers, int):  # "auto"
        layers = auto_gpu_layers(alias, free_bytes, meta)
    settings: dict[str, Any] = {"n_ctx": alias.n_ctx, "gpu_layers": layers}
    for key in _OPTIONAL:
        value = getattr(alias, key)
        if value is not None:
            settings[key] = list(value) if isinstance(value, tuple) else value
    settings["parallel"] = alias.parallel
    return settings


def keep_alive_s(profile: Profile, model: str) -> float | None:
    """Seconds `model` stays loaded with no work: its own `keep_alive`, else `[serving]`'s."""
    alias = profile.models.get(model)
    if alias is not None and alias.keep_alive is not None:
        return alias.keep_alive
    return profile.serving.keep_alive


def parse_duration(text: str | float) -> float:
    """Seconds for a keep-alive: `"5m"`, `"90s"`, `"1h30m"`, `"300"`, `-1` (for ever, -1.0 for
    any negative value), `0`. An InputError naming the value when it is not one."""
    seconds = duration_seconds(text)
    if seconds is None:
        shown = json.dumps(text) if isinstance(text, str) else repr(text)
        raise InputError(f"{shown} is not a keep-alive duration; use {DURATION_FIX}")
    return seconds


def auto_gpu_layers(
    alias: ModelAlias, free_bytes: int | None, meta: GGUFMeta | GGUFHeader | None
) -> int:
    """`gpu_layers = "auto"`: -1 (all) when the model fits in `free_bytes` or nothing says
    otherwise, else the layers that fit (counted from the last, as llama.cpp offloads), or 0."""
    if free_bytes is None or meta is None:
        return -1
    verdict = plan(model_need(alias, meta), [Device("", 0, "GPU", max(free_bytes, 0))])[0]
    return -1 if verdict.verdict is Fit.FITS else verdict.layers_on_gpu


# -- the estimate ----------------------------------------------------------------------------


def model_need(alias: ModelAlias, meta: GGUFMeta | GGUFHeader) -> Need:
    """What `alias` takes loaded from the file `meta` describes: its weights and the KV cache
    of `n_ctx × parallel` tokens in its cache types (f16 when unset, the agent's default), by
    layer. From the header (a `GGUFHeader`, or a `GGUFMeta` of a readable local file), else
    from the metadata alone (`_uniform_need`)."""
    ctx = alias.n_ctx * alias.parallel
    k, v = alias.cache_type_k or "f16", alias.cache_type_v or "f16"
    if isinstance(meta, GGUFHeader):
        return estimate(meta, meta.data_offset + meta.tensor_bytes, ctx, cache_k=k, cache_v=v)
    header = _local_file_header(meta.source, meta.file_size)
    if header is not None:
        return estimate(header, meta.file_size, ctx, cache_k=k, cache_v=v)
    return _uniform_need(meta, ctx, k, v)


def _alias(profile: Profile, model: str) -> ModelAlias:
    return profile.models.get(model) or ModelAlias(model, "")


def _local_file_header(source: str, size: int) -> GGUFHeader | None:
    """The header of a local GGUF file of `size` bytes; None when `source` is not a readable
    local file of that size (a hub URL, a file on another host)."""
    path = Path(source)
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if not path.is_file() or stat.st_size != size:
        return None
    return local_header(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def local_header(path: str, size: int, mtime_ns: int) -> GGUFHeader | None:
    """The header of the local GGUF file at `path`, read once per (path, size, mtime); None
    when it cannot be read or is not a GGUF."""
    try:
        with open(path, "rb") as f:
            return read_header(file_reads(f), size, name=path)
    except (OSError, InputError):
        return None


def _uniform_need(meta: GGUFMeta, ctx: int, cache_k: str, cache_v: str) -> Need:
    """An estimate from the metadata alone: the weights spread evenly over the layers, and a
    KV cache of ctx × KV heads × head_dim (embedding / heads) × (bytes_k + bytes_v) a layer when
    the metadata has the head counts (none otherwise), so a partial offload is a little
    optimistic."""
    layers = meta.layers or 0
    each = meta.tensor_bytes // layers if layers else 0
    heads, width = meta.head_count, meta.embedding_length
    kv = 0
    if heads and width:
        per_element = KV_TYPE_BYTES[cache_k] + KV_TYPE_BYTES[cache_v]
        kv = int(ctx * (meta.head_count_kv or heads) * (width // heads) * per_element)
    return Need(
        file=meta.source,
        quant=meta.quant or "?",
        file_size=meta.file_size,
        ctx=ctx,
        weights_bytes=meta.tensor_bytes,
        layer_bytes=(each,) * layers,
        kv_layer_bytes=(kv,) * layers,
        input_bytes=0,
        output_bytes=meta.tensor_bytes - each * layers,
        bytes_read=meta.bytes_read,
        notes=("estimated from the metadata: no per-layer sizes",),
    )
