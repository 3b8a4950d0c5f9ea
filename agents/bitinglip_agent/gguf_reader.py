"""The one GGUF header reader: metadata and tensor infos, never tensor data, over `read(offset, n)`.

The agent checks a local file with it before llama.cpp touches it (`gguf_check`); the control
plane reads files on the hub with it through HTTP range reads (`control.models.gguf_header`).
Every length and count a header declares is bounded before anything is read or walked, so a
hostile header costs neither memory, downloads nor time; a string array (a 262k-token vocabulary)
is skipped in one tight loop over the read window. Standard library only.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.gguf_cursor import ByteOrder, Cursor, InvalidGGUF, ReadAt, file_reads

__all__ = [
    "GGML_TYPES",
    "Header",
    "InvalidGGUF",
    "ReadAt",
    "TensorInfo",
    "file_reads",
    "int_value",
    "parse_header",
    "typed",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1 for the NUL
# Bounds on what a header may declare, checked before anything is read or walked: a hostile
# length must cost neither memory, downloads nor time. llama.cpp's gguf.cpp allows any string and
# any array up to 1 Gi (GGUF_MAX_STRING_LENGTH, GGUF_MAX_ARRAY_ELEMENTS); keys, the values kept
# and the counts get tighter bounds, far above what any published model uses.
MAX_STRING_BYTES = 1 << 30  # GGUF_MAX_STRING_LENGTH
MAX_KEY_BYTES = 1 << 16  # keys are dotted names of a few dozen bytes
MAX_KEPT_STRING_BYTES = 1 << 20  # general.name, general.architecture, ...: held in memory
MAX_ARRAY_LENGTH = 1 << 24  # 64 times the largest vocabulary (262k tokens)
MAX_KEPT_ARRAY_LENGTH = 4096  # a per-layer integer array (head_count_kv) is kept up to this
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 16
_INT64_MAX = (1 << 63) - 1
# Smallest possible encodings, for the plausibility check of the counts.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, ggml type, offset

# ggml type id -> (name, elements per block, bytes per block), as gguf-py 0.19's
# gguf.constants.GGML_QUANT_SIZES (tests compare the two). The one copy of ggml's type table.
# fmt: off
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 28: ("F64", 1, 8),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 22: ("IQ2_S", 256, 82),
    18: ("IQ3_XXS", 256, 98), 21: ("IQ3_S", 256, 110),
    19: ("IQ1_S", 256, 50), 29: ("IQ1_M", 256, 56),
    20: ("IQ4_NL", 32, 18), 23: ("IQ4_XS", 256, 136),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
# fmt: on

# GGUF metadata value types.
UINT32, STRING, ARRAY = 4, 8, 9
TYPE_NAMES = "UINT8 INT8 UINT16 INT16 UINT32 INT32 FLOAT32 BOOL STRING ARRAY UINT64 INT64 FLOAT64"
INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_WRONG_ORDER = {
    "<": "GGUF byte order is big-endian; only little-endian files are supported",
    "=": "GGUF byte order is the opposite of this host's",
}
# Values kept (every key's type is kept): general.*, split.*, and these `{arch}.` keys.
_ARCH_KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "pooling_type",
)
_KEEP_SUFFIXES = tuple("." + key for key in _ARCH_KEYS)

Metadata = dict[str, tuple[int, Any]]  # key -> (value type, value; None where not kept)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; `nbytes` from its ggml type's block size, or from
    the distance to the next tensor's offset for a type newer than the table."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the tensor data
    nbytes: int

    @property
    def type_name(self) -> str:
        known = GGML_TYPES.get(self.ggml_type)
        return known[0] if known else f"type{self.ggml_type}"


@dataclass(frozen=True)
class Header:
    """A parsed header: every metadata key's type, the kept values, the tensor infos."""

    name: str  # the file, for messages
    version: int
    kv_count: int
    metadata: Metadata
    alignment: int
    data_offset: int
    tensors: tuple[TensorInfo, ...]


def parse_header(read: ReadAt, size: int, *, name: str, byte_order: ByteOrder = "<") -> Header:
    """Parse the header of a `size`-byte GGUF; InvalidGGUF (one line naming `name`) if it is not
    one llama.cpp can load. Errors raised by `read` pass through."""
    c = Cursor(read, size, name, byte_order)
    version, tensor_count, kv_count = _preamble(c)
    meta = _metadata(c, kv_count)
    alignment = _alignment(c, meta)
    infos = _tensor_infos(c, tensor_count)
    data_offset = -(-c.tell() // alignment) * alignment
    tensors = _sized(infos, size - data_offset)
    return Header(name, version, kv_count, meta, alignment, data_offset, tensors)


def typed(meta: Metadata, key: str, vtype: int, name: str) -> Any:
    """The value of `key` (None when absent); InvalidGGUF when it has another type."""
    if key not in meta:
        return None
    if meta[key][0] != vtype:
        got, want = TYPE_NAMES.split()[meta[key][0]], TYPE_NAMES.split()[vtype]
        raise InvalidGGUF(f"{name}: metadata {key!r} is a {got}, expected a {want}")
    return meta[key][1]


def int_value(meta: Metadata, key: str) -> int | None:
    """The kept value of `key` when it is an integer scalar, else None."""
    vtype, value = meta.get(key, (-1, None))
    return int(value) if vtype in INT_TYPES and value is not None else None


def _preamble(c: Cursor) -> tuple[int, int, int]:
    magic = c.take(min(4, c.size), "magic")
    if magic != GGUF_MAGIC:
        raise c.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    version = c.u32("version")
    if version & 0xFFFF == 0 and version:  # as gguf-py detects it; llama.cpp refuses such files
        raise c.fail(_WRONG_ORDER[c.order])
    if version == 1:
        raise c.fail("GGUF version 1 is unsupported (need 2 or 3)")
    if version not in SUPPORTED_VERSIONS:
        raise c.fail(f"unsupported GGUF version {version} (need 2 or 3)")
    tensor_count, kv_count = c.u64("tensor count"), c.u64("metadata kv count")
    _check_counts(c, tensor_count, kv_count)
    return version, tensor_count, kv_count


def _check_counts(c: Cursor, tensor_count: int, kv_count: int) -> None:
    if tensor_count > MAX_TENSOR_COUNT:
        raise c.fail(f"absurd tensor count {tensor_count} (at most {MAX_TENSOR_COUNT})")
    if kv_count > MAX_KV_COUNT:
        raise c.fail(f"absurd metadata kv count {kv_count} (at most {MAX_KV_COUNT})")
    if tensor_count > c.size:  # more tensors than bytes: no file this short could hold them
        raise c.fail(f"absurd tensor count {tensor_count} for a {c.size}-byte file")
    if kv_count > c.size:
        raise c.fail(f"absurd metadata kv count {kv_count} for a {c.size}-byte file")
    need = c.tell() + kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES
    if need > c.size:
        raise c.fail(
            f"truncated or corrupt: {kv_count} metadata kvs and {tensor_count} tensor infos "
            f"need at least {need} bytes, the file has {c.size}"
        )


def _metadata(c: Cursor, kv_count: int) -> Metadata:
    """Walk every key/value: keep each key's type, and the value of the few that are wanted."""
    meta: Metadata = {}
    for i in range(kv_count):
        key = c.string(f"metadata key #{i}", MAX_KEY_BYTES)
        if key in meta:
            raise c.fail(f"duplicate metadata key {key!r}")
        vtype = c.u32(f"type of metadata {key!r}")
        keep = key.startswith(("general.", "split.")) or key.endswith(_KEEP_SUFFIXES)
        meta[key] = (vtype, _value(c, vtype, f"metadata {key!r}", keep))
    return meta


def _value(c: Cursor, vtype: int, what: str, keep: bool) -> Any:
    st = c.scalars.get(vtype)
    if st is not None:
        if keep:
            return c.unpack(st, what)
        c.skip(st.size, what)
    elif vtype == STRING:
        n = c.length(what, MAX_KEPT_STRING_BYTES if keep else MAX_STRING_BYTES)
        if keep:
            return c.take(n, what).decode("utf-8", errors="replace")
        c.skip(n, what)
    elif vtype == ARRAY:
        return _array(c, what, keep)
    else:
        raise c.fail(f"{what} has unknown value type {vtype}")
    return None


def _array(c: Cursor, what: str, keep: bool) -> list[int] | None:
    """Skip an array; keep it (as ints) only when wanted, short and of an integer type."""
    etype, count = c.u32(f"{what} array type"), c.u64(f"{what} array length")
    if count > MAX_ARRAY_LENGTH:
        raise c.fail(f"{what} is an array of {count} elements (at most {MAX_ARRAY_LENGTH})")
    st = c.scalars.get(etype)
    if st is not None:
        if keep and etype in INT_TYPES and count <= MAX_KEPT_ARRAY_LENGTH:
            return [int(c.unpack(st, what)) for _ in range(count)]
        c.skip(count * st.size, f"{what} ({count} elements)")
    elif etype == STRING:
        if count * 8 > c.size - c.tell():
            raise c.truncated(f"{what} ({count} strings)", count * 8)
        c.skip_strings(count, f"{what} ({count} strings)")
    elif etype == ARRAY:  # the spec allows it, llama.cpp fails the load on it
        raise c.fail(f"{what} is an array of arrays, which llama.cpp cannot load")
    else:
        raise c.fail(f"{what} is an array of unknown value type {etype}")
    return None


def _alignment(c: Cursor, meta: Metadata) -> int:
    # llama.cpp reads it with gguf_get_val_u32, which asserts (aborts) on any other type.
    alignment = typed(meta, "general.alignment", UINT32, c.name)
    if alignment is None:
        return DEFAULT_ALIGNMENT
    if alignment == 0 or alignment & (alignment - 1):
        raise c.fail(f"general.alignment {alignment} is not a power of two")
    return int(alignment)


_Info = tuple[str, tuple[int, ...], int, int]  # name, shape, ggml type, offset


def _tensor_infos(c: Cursor, count: int) -> list[_Info]:
    infos: list[_Info] = []
    names: set[str] = set()
    for i in range(count):
        name = c.string(f"tensor #{i} name", MAX_NAME_BYTES)
        what = f"tensor {name!r}"
        if name in names:
            raise c.fail(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = c.u32(f"{what} n_dims")
        if n_dims > MAX_DIMS:
            raise c.fail(f"{what} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(c.u64(f"{what} dims") for _ in range(n_dims))
        ggml_type = c.u32(f"{what} type")
        infos.append((name, shape, ggml_type, c.u64(f"{what} offset")))
        _check_shape(c, what, shape, ggml_type)
    return infos


def _check_shape(c: Cursor, what: str, shape: tuple[int, ...], ggml_type: int) -> None:
    if any(d > _INT64_MAX for d in shape) or _elements(shape) > _INT64_MAX:
        raise c.fail(f"{what} has absurd dimensions {list(shape)}")
    known = GGML_TYPES.get(ggml_type)
    if known is not None and shape and shape[0] % known[1]:
        raise c.fail(f"{what} row of {shape[0]} is not a multiple of its block size {known[1]}")


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _sized(infos: list[_Info], data_bytes: int) -> tuple[TensorInfo, ...]:
    """Each tensor with its byte size: elements / block elements * block bytes for a known
    type; otherwise up to the next tensor's offset (or the end of the file)."""
    ends = sorted({offset for *_, offset in infos} | {data_bytes})
    sized = []
    for name, shape, ggml_type, offset in infos:
        known = GGML_TYPES.get(ggml_type)
        if known is None:
            at = bisect_right(ends, offset)
            nbytes = ends[at] - offset if at < len(ends) else 0
        else:
            nbytes = _elements(shape) // known[1] * known[2]
        sized.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
    return tuple(sized)
