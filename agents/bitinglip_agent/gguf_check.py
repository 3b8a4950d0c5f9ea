"""Validate a GGUF file's header before llama.cpp touches it.

llama.cpp aborts the whole process on some malformed files (a wrong-typed `general.alignment`
trips an assert), so the agent checks first and fails the task as `invalid_gguf` at once.
Standard library only; reads the header through a chunked buffer and seeks over array contents,
so a 262k-token vocabulary costs one tight loop, never the whole file.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1 for the NUL
# Bounds on what a header may declare, checked before anything is read or walked: a hostile
# length must cost neither memory nor time. llama.cpp's gguf.cpp allows any string and any array
# up to 1 Gi (GGUF_MAX_STRING_LENGTH, GGUF_MAX_ARRAY_ELEMENTS); keys, the values this check holds
# and the counts get tighter bounds, far above what any published model uses.
MAX_STRING_BYTES = 1 << 30  # GGUF_MAX_STRING_LENGTH
MAX_KEY_BYTES = 1 << 16  # keys are dotted names of a few dozen bytes
MAX_KEPT_STRING_BYTES = 1 << 20  # general.name, general.architecture, ...: read into memory
MAX_ARRAY_LENGTH = 1 << 24  # 64 times the largest vocabulary (262k tokens)
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 16
_INT64_MAX = (1 << 63) - 1
_CHUNK = 1 << 20
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")  # the host's byte order, as llama.cpp
# Smallest possible encodings, for the plausibility check of the counts.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, ggml type, offset

# ggml type id -> (elements per block, bytes per block), copied from gguf-py 0.19's
# gguf.constants.GGML_QUANT_SIZES (tests compare the two).
# fmt: off
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 30: (1, 2), 28: (1, 8),  # F32 F16 BF16 F64
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),  # I8 I16 I32 I64
    2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),  # Q4_0 Q4_1 Q5_0 Q5_1
    8: (32, 34), 9: (32, 40),  # Q8_0 Q8_1
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),  # Q2_K Q3_K Q4_K Q5_K
    14: (256, 210), 15: (256, 292),  # Q6_K Q8_K
    16: (256, 66), 17: (256, 74), 22: (256, 82),  # IQ2_XXS IQ2_XS IQ2_S
    18: (256, 98), 21: (256, 110),  # IQ3_XXS IQ3_S
    19: (256, 50), 29: (256, 56),  # IQ1_S IQ1_M
    20: (32, 18), 23: (256, 136),  # IQ4_NL IQ4_XS
    34: (256, 54), 35: (256, 66),  # TQ1_0 TQ2_0
    39: (32, 17), 40: (64, 36), 41: (128, 18),  # MXFP4 NVFP4 Q1_0
}
# fmt: on

# GGUF metadata value types.
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_SCALARS = {
    t: struct.Struct("=" + f) for t, f in zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd")
}
_TYPE_NAMES = "UINT8 INT8 UINT16 INT16 UINT32 INT32 FLOAT32 BOOL STRING ARRAY UINT64 INT64 FLOAT64"
_INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_WANTED_SUFFIXES = (".context_length", ".block_count", ".chat_template")


class InvalidGGUF(Exception):
    """The file is not a GGUF llama.cpp can load; `reason` is one line naming the path."""

    code = "invalid_gguf"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GGUFSummary:
    path: str
    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int
    file_size: int
    architecture: str | None
    name: str | None
    context_length: int | None
    block_count: int | None
    file_type: int | None
    has_chat_template: bool  # `tokenizer.chat_template` is present (a string)
    pooling_type: int | None = None  # `<arch>.pooling_type`: how it pools embeddings, if it says

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Reader:
    """Forward reads over a chunk buffer; every read past the end raises InvalidGGUF."""

    def __init__(self, f: BinaryIO, path: str, size: int) -> None:
        self.f, self.path, self.size = f, path, size
        self.buf, self.pos, self.base = b"", 0, 0

    def fail(self, what: str) -> InvalidGGUF:
        return InvalidGGUF(f"{self.path}: {what}")

    def truncated(self, what: str, need: int) -> InvalidGGUF:
        at, size = self.tell(), self.size
        return self.fail(f"truncated: {what} needs {need} bytes at offset {at} of {size}")

    def tell(self) -> int:
        return self.base + self.pos

    def _ensure(self, n: int, what: str) -> None:
        if len(self.buf) - self.pos >= n:
            return
        start = self.base + self.pos
        if start + n > self.size:
            raise self.truncated(what, n)
        self.f.seek(start)
        self.buf, self.pos, self.base = self.f.read(max(n, _CHUNK)), 0, start
        if len(self.buf) < n:  # the file shrank under us
            raise self.truncated(what, n)

    def read(self, n: int, what: str) -> bytes:
        self._ensure(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self._ensure(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def skip(self, n: int, what: str) -> None:
        if self.tell() + n > self.size:
            raise self.truncated(what, n)
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.buf, self.pos, self.base = b"", 0, self.tell() + n

    def length(self, what: str, limit: int) -> int:
        """A string's declared length, refused above `limit` before any of it is read."""
        n = self.u64(what)
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long (at most {limit}): corrupt or hostile")
        return n

    def string(self, what: str, limit: int) -> str:
        return self.read(self.length(what, limit), what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` GGUF strings: a tight loop inside the buffer, one refill per chunk."""
        unpack, left = _U64.unpack_from, count
        while left:
            buf, pos = self.buf, self.pos
            end = len(buf) - 8
            while left and pos <= end:
                nxt = pos + 8 + unpack(buf, pos)[0]
                if nxt > end + 8:
                    break
                pos, left = nxt, left - 1
            self.pos = pos
            if left:  # a string across the chunk edge, or past the end of the file
                self.skip(self.u64(what), what)
                left -= 1


def check_gguf(path: str) -> GGUFSummary:
    """Check the header, metadata, tensor infos and data extent of the GGUF at `path`."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidGGUF(f"{path}: is a directory, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidGGUF(f"{path}: not a regular file")
        if st.st_size == 0:
            raise InvalidGGUF(f"{path}: empty file (0 bytes)")
        with open(path, "rb") as f:
            return _parse(_Reader(f, path, st.st_size))
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidGGUF(f"{path}: missing file (no such file)") from None
    except PermissionError:
        raise InvalidGGUF(f"{path}: permission denied") from None
    except OSError as exc:
        raise InvalidGGUF(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse(r: _Reader) -> GGUFSummary:
    version, tensor_count, kv_count = _parse_preamble(r)
    meta = _parse_metadata(r, kv_count)
    alignment = _alignment(r, meta)
    tensors = _parse_tensor_infos(r, tensor_count)
    data_offset = -(-r.tell() // alignment) * alignment
    _check_tensor_data(r, tensors, data_offset, alignment)
    arch = _typed(r, meta, "general.architecture", _STRING)
    return GGUFSummary(
        path=r.path,
        version=version,
        tensor_count=tensor_count,
        kv_count=kv_count,
        alignment=alignment,
        data_offset=data_offset,
        file_size=r.size,
        architecture=arch,
        name=_typed(r, meta, "general.name", _STRING),
        context_length=_int_value(meta, f"{arch}.context_length"),
        block_count=_int_value(meta, f"{arch}.block_count"),
        file_type=_int_value(meta, "general.file_type"),
        has_chat_template=meta.get("tokenizer.chat_template", (-1, None))[0] == _STRING,
        pooling_type=_int_value(meta, f"{arch}.pooling_type"),
    )


def _parse_preamble(r: _Reader) -> tuple[int, int, int]:
    magic = r.read(min(4, r.size), "magic")
    if magic != GGUF_MAGIC:
        raise r.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    raw = r.u32("version")
    if raw & 0xFFFF == 0 and raw:  # as gguf-py detects it; llama.cpp refuses such files
        raise r.fail("GGUF byte order is the opposite of this host's")
    if raw == 1:
        raise r.fail("GGUF version 1 is unsupported (need 2 or 3)")
    if raw not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {raw} (need 2 or 3)")
    tensor_count, kv_count = r.u64("tensor count"), r.u64("metadata kv count")
    if tensor_count > MAX_TENSOR_COUNT:
        raise r.fail(f"absurd tensor count {tensor_count} (at most {MAX_TENSOR_COUNT})")
    if kv_count > MAX_KV_COUNT:
        raise r.fail(f"absurd metadata kv count {kv_count} (at most {MAX_KV_COUNT})")
    if tensor_count > r.size:  # more tensors than bytes: no file this short could hold them
        raise r.fail(f"absurd tensor count {tensor_count} for a {r.size}-byte file")
    if kv_count > r.size:
        raise r.fail(f"absurd metadata kv count {kv_count} for a {r.size}-byte file")
    need = r.tell() + kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES
    if need > r.size:
        raise r.truncated(f"{kv_count} metadata kvs and {tensor_count} tensor infos", need)
    return raw, tensor_count, kv_count


def _parse_metadata(r: _Reader, kv_count: int) -> dict[str, tuple[int, Any]]:
    """Walk every key/value; keep (type, value) of the few keys the summary needs."""
    meta: dict[str, tuple[int, Any]] = {}
    seen: set[str] = set()
    for i in range(kv_count):
        key = r.string(f"metadata key #{i}", MAX_KEY_BYTES)
        if key in seen:
            raise r.fail(f"duplicate metadata key {key!r}")
        seen.add(key)
        vtype = r.u32(f"type of metadata {key!r}")
        wanted = key.startswith("general.") or key.endswith(_WANTED_SUFFIXES)
        keep = wanted and not key.endswith(".chat_template")  # its type is all the summary says
        value = _read_value(r, vtype, f"metadata {key!r}", keep)
        if wanted:
            meta[key] = (vtype, value)
    return meta


def _read_value(r: _Reader, vtype: int, what: str, keep: bool) -> Any:
    st = _SCALARS.get(vtype)
    if st is not None:
        if keep:
            return r.unpack(st, what)
        r.skip(st.size, what)
    elif vtype == _STRING:
        n = r.length(what, MAX_KEPT_STRING_BYTES if keep else MAX_STRING_BYTES)
        if keep:
            return r.read(n, what).decode("utf-8", errors="replace")
        r.skip(n, what)
    elif vtype == _ARRAY:
        _skip_array(r, what)
    else:
        raise r.fail(f"{what} has unknown value type {vtype}")
    return None


def _skip_array(r: _Reader, what: str) -> None:
    etype, count = r.u32(f"{what} array type"), r.u64(f"{what} array length")
    if count > MAX_ARRAY_LENGTH:
        raise r.fail(f"{what} is an array of {count} elements (at most {MAX_ARRAY_LENGTH})")
    st = _SCALARS.get(etype)
    if st is not None:
        r.skip(count * st.size, f"{what} ({count} elements)")
    elif etype == _STRING:
        if count * 8 > r.size - r.tell():
            raise r.truncated(f"{what} ({count} strings)", count * 8)
        r.skip_strings(count, f"{what} ({count} strings)")
    elif etype == _ARRAY:  # the spec allows it, llama.cpp fails the load on it
        raise r.fail(f"{what} is an array of arrays, which llama.cpp cannot load")
    else:
        raise r.fail(f"{what} is an array of unknown value type {etype}")


def _typed(r: _Reader, meta: dict[str, tuple[int, Any]], key: str, vtype: int) -> Any:
    if key not in meta:
        return None
    if meta[key][0] != vtype:
        got, want = _TYPE_NAMES.split()[meta[key][0]], _TYPE_NAMES.split()[vtype]
        raise r.fail(f"metadata {key!r} is a {got}, expected a {want}")
    return meta[key][1]


def _int_value(meta: dict[str, tuple[int, Any]], key: str) -> int | None:
    vtype, value = meta.get(key, (-1, None))
    return int(value) if vtype in _INT_TYPES else None


def _alignment(r: _Reader, meta: dict[str, tuple[int, Any]]) -> int:
    # llama.cpp reads it with gguf_get_val_u32, which asserts (aborts) on any other type.
    alignment = _typed(r, meta, "general.alignment", _UINT32)
    if alignment is None:
        return DEFAULT_ALIGNMENT
    if alignment == 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment} is not a power of two")
    return int(alignment)


_TensorInfo = tuple[str, int, int]  # name, offset, data bytes (0 for a ggml type not in the table)


def _parse_tensor_infos(r: _Reader, tensor_count: int) -> list[_TensorInfo]:
    infos: list[_TensorInfo] = []
    names: set[str] = set()
    for i in range(tensor_count):
        name = r.string(f"tensor #{i} name", MAX_NAME_BYTES)
        what = f"tensor {name!r}"
        if name in names:
            raise r.fail(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = r.u32(f"{what} n_dims")
        if n_dims > MAX_DIMS:
            raise r.fail(f"{what} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [r.u64(f"{what} dims") for _ in range(n_dims)]
        ggml_type = r.u32(f"{what} type")
        offset = r.u64(f"{what} offset")
        infos.append((name, offset, _tensor_bytes(r, what, dims, ggml_type)))
    return infos


def _tensor_bytes(r: _Reader, what: str, dims: list[int], ggml_type: int) -> int:
    n_elements = 1
    for d in dims:
        n_elements *= d
    if any(d > _INT64_MAX for d in dims) or n_elements > _INT64_MAX:
        raise r.fail(f"{what} has absurd dimensions {dims}")
    block = GGML_BLOCK_SIZES.get(ggml_type)
    if block is None:  # a ggml type newer than the table: only its offset can be checked
        return 0
    if dims and dims[0] % block[0]:
        raise r.fail(f"{what} row of {dims[0]} is not a multiple of its block size {block[0]}")
    return n_elements // block[0] * block[1]


def _check_tensor_data(r: _Reader, infos: list[_TensorInfo], data_offset: int, align: int) -> None:
    for name, offset, nbytes in infos:
        if offset % align:
            raise r.fail(f"tensor {name!r} offset {offset} is not a multiple of {align}")
        end = data_offset + offset + nbytes
        if end > r.size:
            raise r.fail(f"truncated: tensor {name!r} data ends at byte {end} of {r.size}")
