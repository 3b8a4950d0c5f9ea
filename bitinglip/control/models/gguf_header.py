"""Read a GGUF file's header — metadata and tensor infos, never tensor data — through range reads.

`read_header(read, size, name=...)` asks `read(start, length)` for the first 256 KiB, parses, and
when the header runs past what it has, fetches the next stretch (doubling what it holds, or up to
the offset the parser needs if that is further) and parses again. Bytes are fetched once each:
`bytes_read` is the length of the prefix it holds when the header parses. Standard library only;
the format knowledge mirrors the agent's `gguf_check` (which checks local files before llama.cpp).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from bitinglip.errors import InputError

RangeRead = Callable[[int, int], bytes]  # (start, length) -> the bytes, possibly fewer at the end

FIRST_READ = 256 << 10
MAX_HEADER = 256 << 20  # a GGUF header this large is corrupt, and reading on would fetch weights
GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1 for the NUL
# Bounds on what a header may declare, checked before anything is fetched or walked (as the
# agent's gguf_check does): a hostile length must cost neither downloads, memory nor time.
MAX_STRING_BYTES = 1 << 30  # llama.cpp's GGUF_MAX_STRING_LENGTH (MAX_HEADER is lower still)
MAX_KEY_BYTES = 1 << 16  # keys are dotted names of a few dozen bytes
MAX_KEPT_STRING_BYTES = 1 << 20  # general.name, general.architecture, ...: held in memory
MAX_ARRAY_LENGTH = 1 << 24  # 64 times the largest vocabulary (262k tokens)
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 16

# ggml type id -> (name, elements per block, bytes per block), as gguf-py 0.19's
# gguf.constants.GGML_QUANT_SIZES (tests compare the two) and agents' gguf_check.
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
# general.file_type (llama_ftype) -> the quant name files are published under.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
# fmt: on

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALARS = {
    t: struct.Struct("<" + f)
    for t, f in zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True)
}
_INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_STRING, _ARRAY = 8, 9
# Metadata kept (the rest is walked over): general.*, split.*, and these `{arch}.` keys.
_ARCH_KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
)
_KEEP_SUFFIXES = tuple("." + key for key in _ARCH_KEYS)
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


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
class GGUFHeader:
    """What fit planning needs from a GGUF header. A per-layer `head_count_kv` array (hybrid
    models) is kept in `head_count_kv_per_layer`; `head_count_kv` is then its largest value."""

    name: str  # the file, for messages
    version: int
    architecture: str | None
    model_name: str | None
    block_count: int | None
    context_length: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    head_count_kv_per_layer: tuple[int, ...] | None
    key_length: int | None
    value_length: int | None
    file_type: int | None
    alignment: int
    data_offset: int
    split_count: int | None
    split_no: int | None
    tensors: tuple[TensorInfo, ...]
    bytes_read: int

    @property
    def quant(self) -> str | None:
        """The file type's quant name (Q4_K_M, ...), None when the header does not say."""
        if self.file_type is None:
            return None
        return FILE_TYPES.get(self.file_type, f"ftype{self.file_type}")

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def file_reads(f: BinaryIO) -> RangeRead:
    """`read(start, length)` over an open local file, for `read_header`."""

    def read(start: int, length: int) -> bytes:
        f.seek(start)
        return f.read(length)

    return read


def read_header(read: RangeRead, size: int, *, name: str = "GGUF file") -> GGUFHeader:
    """Parse the header of a `size`-byte GGUF reached through `read(start, length)`.

    Errors (not a GGUF, truncated, absurd counts, a header past MAX_HEADER) are one-line
    InputErrors naming `name`. Errors raised by `read` pass through.
    """
    buf = bytearray()
    memo: dict[int, tuple[int, int]] = {}  # string arrays: how far the last round walked them
    want = min(size, FIRST_READ)
    while True:
        _fetch(read, buf, want, name)
        try:
            return _parse(bytes(buf), size, name, memo)
        except _NeedMore as more:
            if len(buf) >= MAX_HEADER:
                raise InputError(
                    f"{name}: the GGUF header runs past {MAX_HEADER >> 20} MiB; not a GGUF "
                    "this tool can plan for"
                ) from None
            want = min(size, MAX_HEADER, max(2 * len(buf), more.end))


def _fetch(read: RangeRead, buf: bytearray, want: int, name: str) -> None:
    while len(buf) < want:
        chunk = read(len(buf), want - len(buf))
        if not chunk:
            raise InputError(f"{name}: the server sent no bytes at offset {len(buf)}")
        buf += chunk[: want - len(buf)]


class _NeedMore(Exception):
    """The header continues past the bytes fetched so far; `end` is the offset needed."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class _Cursor:
    """Forward reads over the fetched prefix of a `size`-byte file."""

    def __init__(self, buf: bytes, size: int, name: str, memo: dict[int, tuple[int, int]]) -> None:
        self.buf, self.size, self.name, self.pos = buf, size, name, 0
        self.memo = memo

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.name}: {what}")

    def _need(self, n: int, what: str) -> int:
        end = self.pos + n
        if end > self.size:
            raise self.fail(
                f"truncated: {what} needs {n} bytes at offset {self.pos} of {self.size}"
            )
        if end > len(self.buf):
            raise _NeedMore(end)
        return end

    def take(self, n: int, what: str) -> bytes:
        end = self._need(n, what)
        out, self.pos = self.buf[self.pos : end], end
        return out

    def skip(self, n: int, what: str) -> None:
        self.pos = self._need(n, what)

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self._need(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def length(self, what: str, limit: int) -> int:
        """A string's declared length, refused above `limit` before any of it is fetched."""
        n = self.u64(what)
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long (at most {limit}): corrupt or hostile")
        return n

    def string(self, what: str, limit: int) -> str:
        return self.take(self.length(what, limit), what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` GGUF strings; how far an earlier, shorter prefix got is in `memo` (array
        start -> (strings done, offset)), so each string is walked once however many rounds."""
        start, unpack, buf = self.pos, _U64.unpack_from, self.buf
        done, pos = self.memo.get(start, (0, start))
        last = min(len(buf), self.size) - 8
        while done < count:
            if pos > last:
                self.memo[start] = (done, pos)
                self.pos = pos
                self.skip(8, what)  # raises: truncated, or needs more bytes
            pos, done = pos + 8 + unpack(buf, pos)[0], done + 1
        self.pos = pos
        if pos > self.size:
            raise self.fail(f"truncated: {what} runs past the end of the file")
        if pos > len(buf):
            raise _NeedMore(pos)


def _parse(buf: bytes, size: int, name: str, memo: dict[int, tuple[int, int]]) -> GGUFHeader:
    c = _Cursor(buf, size, name, memo)
    version, tensor_count, kv_count = _preamble(c)
    meta = _metadata(c, kv_count)
    alignment = _alignment(c, meta)
    infos = _tensor_infos(c, tensor_count)
    data_offset = -(-c.pos // alignment) * alignment
    arch = meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    model_name = meta.get("general.name")

    def number(key: str) -> int | None:
        return _as_int(meta.get(f"{arch}.{key}"))

    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    per_layer = tuple(kv_heads) if isinstance(kv_heads, list) else None
    return GGUFHeader(
        name=name,
        version=version,
        architecture=arch,
        model_name=model_name if isinstance(model_name, str) else None,
        block_count=number("block_count"),
        context_length=number("context_length"),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        head_count_kv_per_layer=per_layer,
        key_length=number("attention.key_length"),
        value_length=number("attention.value_length"),
        file_type=_as_int(meta.get("general.file_type")),
        alignment=alignment,
        data_offset=data_offset,
        split_count=_as_int(meta.get("split.count")),
        split_no=_as_int(meta.get("split.no")),
        tensors=_sized(c, infos, size - data_offset),
        bytes_read=len(buf),
    )


def _preamble(c: _Cursor) -> tuple[int, int, int]:
    magic = c.take(min(4, c.size), "magic")
    if magic != GGUF_MAGIC:
        raise c.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    version = c.u32("version")
    if version & 0xFFFF == 0 and version:
        raise c.fail("big-endian GGUF; only little-endian files are supported")
    if version not in (2, 3):
        raise c.fail(f"unsupported GGUF version {version} (need 2 or 3)")
    tensor_count, kv_count = c.u64("tensor count"), c.u64("metadata kv count")
    if tensor_count > MAX_TENSOR_COUNT:
        raise c.fail(f"absurd tensor count {tensor_count} (at most {MAX_TENSOR_COUNT})")
    if kv_count > MAX_KV_COUNT:
        raise c.fail(f"absurd metadata kv count {kv_count} (at most {MAX_KV_COUNT})")
    need = c.pos + kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES
    if need > c.size:
        raise c.fail(
            f"truncated or corrupt: {kv_count} metadata kvs and {tensor_count} tensor infos "
            f"need at least {need} bytes, the file has {c.size}"
        )
    return version, tensor_count, kv_count


def _metadata(c: _Cursor, kv_count: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for i in range(kv_count):
        key = c.string(f"metadata key #{i}", MAX_KEY_BYTES)
        vtype = c.u32(f"type of metadata {key!r}")
        keep = key.startswith(("general.", "split.")) or key.endswith(_KEEP_SUFFIXES)
        value = _value(c, vtype, f"metadata {key!r}", keep)
        if keep:
            meta[key] = value
    return meta


def _value(c: _Cursor, vtype: int, what: str, keep: bool) -> Any:
    st = _SCALARS.get(vtype)
    if st is not None:
        if keep:
            return c.unpack(st, what)
        c.skip(st.size, what)
    elif vtype == _STRING:
        n = c.length(what, MAX_KEPT_STRING_BYTES if keep else MAX_STRING_BYTES)
        if keep:
            return c.take(n, what).decode("utf-8", errors="replace")
        c.skip(n, what)
    elif vtype == _ARRAY:
        return _array(c, what, keep)
    else:
        raise c.fail(f"{what} has unknown value type {vtype}")
    return None


def _array(c: _Cursor, what: str, keep: bool) -> list[int] | None:
    """Skip an array; keep it (as ints) only when wanted and of an integer type."""
    etype, count = c.u32(f"{what} array type"), c.u64(f"{what} array length")
    if count > MAX_ARRAY_LENGTH:
        raise c.fail(f"{what} is an array of {count} elements (at most {MAX_ARRAY_LENGTH})")
    st = _SCALARS.get(etype)
    if st is not None:
        if keep and etype in _INT_TYPES and count <= 4096:
            return [int(c.unpack(st, what)) for _ in range(count)]
        c.skip(count * st.size, f"{what} ({count} elements)")
    elif etype == _STRING:
        if count * 8 > c.size - c.pos:
            raise c.fail(f"truncated: {what} ({count} strings) runs past the end of the file")
        c.skip_strings(count, f"{what} ({count} strings)")
    else:
        raise c.fail(f"{what} is an array of value type {etype}, which fit planning cannot read")
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, list):
        return max(value) if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _alignment(c: _Cursor, meta: dict[str, Any]) -> int:
    alignment = meta.get("general.alignment")
    if alignment is None:
        return DEFAULT_ALIGNMENT
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise c.fail(f"general.alignment {alignment!r} is not a power of two")
    return alignment


_Info = tuple[str, tuple[int, ...], int, int]  # name, shape, ggml type, offset


def _tensor_infos(c: _Cursor, count: int) -> list[_Info]:
    infos: list[_Info] = []
    for i in range(count):
        name = c.string(f"tensor #{i} name", MAX_NAME_BYTES)
        n_dims = c.u32(f"tensor {name!r} n_dims")
        if n_dims > MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(c.u64(f"tensor {name!r} dims") for _ in range(n_dims))
        ggml_type = c.u32(f"tensor {name!r} type")
        infos.append((name, shape, ggml_type, c.u64(f"tensor {name!r} offset")))
    return infos


def _sized(c: _Cursor, infos: list[_Info], data_bytes: int) -> tuple[TensorInfo, ...]:
    """Each tensor with its byte size: elements / block elements × block bytes for a known
    type; otherwise up to the next tensor's offset (or the end of the file)."""
    ends = sorted({offset for *_, offset in infos} | {data_bytes})
    sized = []
    for name, shape, ggml_type, offset in infos:
        known = GGML_TYPES.get(ggml_type)
        if known is None:
            nbytes = next((e for e in ends if e > offset), offset) - offset
        else:
            elements = 1
            for dim in shape:
                elements *= dim
            _, block, block_bytes = known
            if shape and shape[0] % block:
                raise c.fail(
                    f"tensor {name!r} row of {shape[0]} is not a multiple of its block size {block}"
                )
            nbytes = elements // block * block_bytes
        sized.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
    return tuple(sized)
