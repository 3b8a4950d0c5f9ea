"""Fit planning: will a GGUF fit on a GPU, fully, in part, or not at all — before any weight moves.

From a file's header (`gguf_header.read_header`, range reads only) `estimate` derives what the
model needs at a context length; `plan` judges that against each GPU's free memory (or a GPU-less
host's free RAM) from telemetry; `gpus_from_telemetry` turns each host's latest snapshot into the
free-memory list. `needs_for_files` reads many files' headers concurrently through an injected
`read_range(url, start, length)`, so nothing here imports an HTTP or hub client.

The arithmetic, all in bytes:

    weights      = Σ tensor bytes (elements / block elements × block bytes of its ggml type)
    layer[i]     = Σ bytes of the tensors named `blk.i.*`
    non-layer    = weights − Σ layer[i]   (token_embd, output, output_norm, rope tables, ...)
    kv_layer[i]  = ctx × head_count_kv[i] × (head_dim_k × bytes_k + head_dim_v × bytes_v)
    head_dim_k   = key_length   or embedding_length / head_count
    head_dim_v   = value_length or embedding_length / head_count
    bytes_k/v    = bytes per element of the K and V cache types (KV_TYPE_BYTES; f16: 2)
    kv           = Σ kv_layer[i]  = 2 × layers × ctx × head_count_kv × head_dim × 2 when uniform
    need         = weights + kv + margin

A served model's ctx is its `n_ctx × parallel` (one cache holds every sequence) and its cache
types are its profile's: `settings.model_need` is that estimate, the one placement
(`runtime/model_sizes.py`), `gpu_layers = "auto"` and `models fit --margin-gib 0` share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from bitinglip.control.models.gguf_header import GGUFHeader, RangeRead, TensorInfo, read_header

__all__ = [
    "KV_TYPE_BYTES",
    "Device",
    "Fit",
    "GGUFHeader",
    "Need",
    "RangeRead",
    "TensorInfo",
    "Verdict",
    "estimate",
    "gpus_from_telemetry",
    "merge_parts",
    "needs_for_files",
    "plan",
    "read_header",
]

GIB = 1 << 30
# Bytes per element of each KV cache type llama.cpp takes: a ggml block's bytes over its
# elements. f16 is llama.cpp's default.
KV_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
_LAYER = re.compile(r"blk\.(\d+)\.")
_INPUT_PREFIX = "token_embd"  # llama.cpp keeps the input embedding in host memory
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class Fit(StrEnum):
    FITS = "fits"
    PARTIAL = "partial"
    NO = "does not fit"


@dataclass(frozen=True)
class Need:
    """What one model file needs at context `ctx` (bytes; formulas in the module docstring)."""

    file: str
    quant: str
    file_size: int
    ctx: int
    weights_bytes: int
    layer_bytes: tuple[int, ...]  # by layer index
    kv_layer_bytes: tuple[int, ...]  # by layer index
    input_bytes: int  # token_embd.*: stays in host memory on a partial offload
    output_bytes: int  # every other non-layer tensor: counted on the GPU on a partial offload
    bytes_read: int
    notes: tuple[str, ...] = ()

    @property
    def layers(self) -> int:
        return len(self.layer_bytes)

    @property
    def kv_bytes(self) -> int:
        return sum(self.kv_layer_bytes)

    @property
    def nonlayer_bytes(self) -> int:
        return self.input_bytes + self.output_bytes

    def total(self, margin: int) -> int:
        return self.weights_bytes + self.kv_bytes + margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "quant": self.quant,
            "file_size": self.file_size,
            "ctx": self.ctx,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "layers": self.layers,
            "layer_bytes_max": max(self.layer_bytes, default=0),
            "nonlayer_bytes": self.nonlayer_bytes,
            "bytes_read": self.bytes_read,
            "notes": list(self.notes),
        }


class Device(NamedTuple):
    """Memory a model could use: a GPU (`gpu` its index), or a GPU-less host's RAM (`gpu` None).
    `ram_free` is the host's free RAM, for the CPU share of a partial offload (None: unknown)."""

    host: str
    gpu: int | None
    name: str
    free: int
    ram_free: int | None = None


@dataclass(frozen=True)
class Verdict:
    quant: str
    host: str
    gpu: int | None  # None: the host's CPU and RAM
    device: str
    free: int
    need: int  # weights + KV + margin
    layers_on_gpu: int
    layers_total: int
    verdict: Fit
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant": self.quant,
            "host": self.host,
            "gpu": "cpu" if self.gpu is None else self.gpu,
            "device": self.device,
            "free_bytes": self.free,
            "need_bytes": self.need,
            "layers_on_gpu": self.layers_on_gpu,
            "layers_total": self.layers_total,
            "verdict": str(self.verdict),
            "why": self.why,
        }


def estimate(
    header: GGUFHeader, file_size: int, ctx: int, *, cache_k: str = "f16", cache_v: str = "f16"
) -> Need:
    """Weights, per-layer bytes and the KV cache for `ctx` tokens in the cache types `cache_k`
    and `cache_v` (KV_TYPE_BYTES): kv = Σ_layers ctx × head_count_kv × (head_dim_k × bytes_k +
    head_dim_v × bytes_v), which is 2 × layers × ctx × head_count_kv × head_dim × 2 for an f16
    cache when K and V share head_dim (= key_length, or embedding_length / head_count)."""
    notes: list[str] = []
    per_layer: dict[int, int] = {}
    input_bytes = output_bytes = 0
    for tensor in header.tensors:
        match = _LAYER.match(tensor.name)
        if match:
            index = int(match[1])
            per_layer[index] = per_layer.get(index, 0) + tensor.nbytes
        elif tensor.name.startswith(_INPUT_PREFIX):
            input_bytes += tensor.nbytes
        else:
            output_bytes += tensor.nbytes
    count = max(header.block_count or 0, max(per_layer, default=-1) + 1)
    layer_bytes = tuple(per_layer.get(i, 0) for i in range(count))
    kv_layer = _kv_layers(header, count, ctx, (cache_k, cache_v), notes)
    if header.context_length and ctx > header.context_length:
        notes.append(f"ctx {ctx} is past the model's trained context {header.context_length}")
    return Need(
        file=header.name,
        quant=header.quant or "?",
        file_size=file_size,
        ctx=ctx,
        weights_bytes=header.tensor_bytes,
        layer_bytes=layer_bytes,
        kv_layer_bytes=kv_layer,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        bytes_read=header.bytes_read,
        notes=tuple(notes),
    )


def _kv_layers(
    header: GGUFHeader, count: int, ctx: int, types: tuple[str, str], notes: list[str]
) -> tuple[int, ...]:
    heads = header.head_count
    if not heads:
        notes.append("no attention.head_count; KV cache counted as 0")
        return (0,) * count
    fallback = (header.embedding_length or 0) // heads
    dim_k = header.key_length or fallback
    dim_v = header.value_length or fallback
    if not dim_k or not dim_v:
        notes.append("no head dimension; KV cache counted as 0")
        return (0,) * count
    kv_heads: Sequence[int] = header.head_count_kv_per_layer or (
        (header.head_count_kv or heads,) * count
    )
    kv_heads = [kv_heads[i] if i < len(kv_heads) else kv_heads[-1] for i in range(count)]
    per_head = dim_k * KV_TYPE_BYTES[types[0]] + dim_v * KV_TYPE_BYTES[types[1]]
    return tuple(int(ctx * h * per_head) for h in kv_heads)


def plan(need: Need, devices: Iterable[Device], margin: int = GIB) -> list[Verdict]:
    """Judge `need` against each device, in order.

    GPU: "fits" when weights + KV + margin ≤ free. Otherwise layers are offloaded from the last
    one down (as llama.cpp's n_gpu_layers does) while
        output + Σ (layer[i] + kv_layer[i]) + margin ≤ free,
    with `output` = the non-layer tensors other than token_embd (output head, norms), which are
    counted on the GPU; token_embd stays in host memory. For uniform layers that is
        N = floor((free − margin − output) / (layer + kv_layer)), clamped to 0..M.
    N = 0 is "does not fit"; so is an N whose CPU share (the remaining weights and KV) plus the
    margin exceeds the host's known free RAM. A CPU device: fits / does not fit in free RAM.
    """
    return [_judge(need, device, margin) for device in devices]


def _judge(need: Need, d: Device, margin: int) -> Verdict:
    total, m = need.total(margin), need.layers

    def verdict(fit: Fit, layers: int, why: str) -> Verdict:
        return Verdict(need.quant, d.host, d.gpu, d.name, d.free, total, layers, m, fit, why)

    sums = (
        f"{_gib(total)} GiB ({_gib(need.weights_bytes)} weights + {_gib(need.kv_bytes)} KV"
        f" at ctx {need.ctx} + {_gib(margin)} margin)"
    )
    if d.gpu is None:
        if total <= d.free:
            return verdict(Fit.FITS, 0, f"needs {sums} of {_gib(d.free)} GiB free RAM")
        return verdict(Fit.NO, 0, f"needs {sums}; {_gib(d.free)} GiB RAM free")
    if total <= d.free:
        return verdict(Fit.FITS, m, f"needs {sums} of {_gib(d.free)} GiB free")
    budget = d.free - margin - need.output_bytes
    n, used = _layers_from_the_end(need, budget)
    pairs = zip(need.layer_bytes, need.kv_layer_bytes, strict=True)
    layer = _gib(max((w + k for w, k in pairs), default=0))
    left = (
        f"{_gib(d.free)} GiB free − {_gib(margin)} margin − {_gib(need.output_bytes)} output"
        f" and norms leaves {_gib(budget)} GiB"
    )
    if n == 0:
        why = f"needs {sums}; {left}, not one layer of {layer} GiB (weights + KV)"
        return verdict(Fit.NO, 0, why)
    cpu = need.total(0) - used - need.output_bytes
    why = (
        f"{n} of {m} layers: {left} for layers of {layer} GiB (weights + KV);"
        f" {_gib(cpu)} GiB stays in host RAM"
    )
    if d.ram_free is not None and cpu + margin > d.ram_free:
        return verdict(Fit.NO, 0, f"{why}, which has {_gib(d.ram_free)} GiB free (− margin)")
    return verdict(Fit.PARTIAL, n, why)


def _layers_from_the_end(need: Need, budget: int) -> tuple[int, int]:
    """How many layers, taken from the last, fit in `budget`, and the bytes they take."""
    n = used = 0
    layers = zip(need.layer_bytes, need.kv_layer_bytes, strict=True)
    for weights, kv in reversed(list(layers)):
        if used + weights + kv > budget:
            break
        n, used = n + 1, used + weights + kv
    return n, used


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


# -- telemetry --------------------------------------------------------------------------------


def gpus_from_telemetry(
    latest: Mapping[str, Mapping[str, Any]], hosts: Collection[str] | None = None
) -> tuple[list[Device], list[str]]:
    """Devices from each host's latest snapshot (`telemetry_ring.latest`), hosts by name, GPUs by
    index: free = memory_total_bytes − memory_used_bytes; a host without GPUs is one CPU device,
    free = ram_total_bytes − ram_used_bytes. A device whose numbers are missing is skipped with a
    note; so is a host of `hosts` (when given) with no snapshot."""
    devices: list[Device] = []
    notes = [f"{h}: no telemetry yet" for h in sorted(hosts or ()) if h not in latest]
    for host in sorted(latest):
        if hosts is not None and host not in hosts:
            continue
        snapshot = latest[host]
        ram = _free(snapshot.get("ram_total_bytes"), snapshot.get("ram_used_bytes"))
        gpus = snapshot.get("gpus")
        gpus = [g for g in gpus if isinstance(g, Mapping)] if isinstance(gpus, list) else []
        for position, gpu in enumerate(gpus):
            index = gpu.get("index")
            index = index if isinstance(index, int) and not isinstance(index, bool) else position
            free = _free(gpu.get("memory_total_bytes"), gpu.get("memory_used_bytes"))
            if free is None:
                notes.append(f"{host} GPU {index}: memory unknown; skipped")
                continue
            devices.append(Device(host, index, str(gpu.get("name") or "GPU"), free, ram))
        if gpus:
            continue
        if ram is None:
            notes.append(f"{host}: no GPUs and RAM unknown; skipped")
        else:
            devices.append(Device(host, None, "CPU", ram, ram))
    devices.sort(key=lambda d: (d.host, -1 if d.gpu is None else d.gpu))
    return devices, notes


def _free(total: Any, used: Any) -> int | None:
    t, u = _bytes(total), _bytes(used)
    return None if t is None or u is None else max(t - u, 0)


def _bytes(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


# -- many files -------------------------------------------------------------------------------


class RemoteFile(Protocol):
    """A GGUF reachable by URL (the hub's `HubFile` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def quant(self) -> str | None: ...


def needs_for_files(
    files: Sequence[RemoteFile],
    read_range: Callable[[str, int, int], bytes],
    ctx: int,
    workers: int = 8,
    *,
    cache_k: str = "f16",
    cache_v: str = "f16",
) -> list[Need]:
    """Read every file's header concurrently, then one Need per model (its KV cache in the
    given types): the parts of a split GGUF (`name-00001-of-00003.gguf`, ...) are merged into
    one, sized by all their tensors."""

    def header(f: RemoteFile) -> GGUFHeader:
        return read_header(lambda s, n: read_range(f.url, s, n), f.size, name=f.name)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        headers = list(pool.map(header, files))
    groups: dict[str, list[tuple[RemoteFile, GGUFHeader]]] = {}
    for f, h in zip(files, headers, strict=True):
        groups.setdefault(_SPLIT.sub(".gguf", f.name), []).append((f, h))
    needs = []
    for parts in groups.values():
        first = parts[0][0]
        merged = merge_parts([h for _, h in parts])
        size = sum(f.size for f, _ in parts)
        need = estimate(merged, size, ctx, cache_k=cache_k, cache_v=cache_v)
        file = first.name if len(parts) == 1 else _SPLIT.sub(".gguf", first.name)
        needs.append(replace(need, file=file, quant=first.quant or need.quant))
    return needs


def merge_parts(headers: Sequence[GGUFHeader]) -> GGUFHeader:
    """One header for a split model: the metadata of the part that has it (split.no 0, else the
    first) and every part's tensors; `bytes_read` summed."""
    if len(headers) == 1:
        return headers[0]
    ordered = sorted(headers, key=lambda h: h.split_no or 0)
    return replace(
        ordered[0],
        tensors=tuple(t for h in ordered for t in h.tensors),
        bytes_read=sum(h.bytes_read for h in ordered),
    )
