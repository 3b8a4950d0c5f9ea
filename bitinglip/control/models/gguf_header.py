"""A GGUF file's header — metadata and tensor infos, never tensor data — through range reads.

The parsing is the agent's one reader (`bitinglip_agent.gguf_reader`, which also checks local
files before llama.cpp loads them): the same type table, the same caps on what a hostile header
may declare, the same one-line reasons. This module decides what to fetch: `read_header(read,
size, name=...)` asks `read(start, length)` for the first 256 KiB and, when the reader needs bytes
past that prefix, extends it contiguously (doubling it, or up to the offset needed if further).
Bytes are fetched once each: `bytes_read` is the length of the prefix when the header parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitinglip_agent.gguf_reader import (
    ARRAY,
    GGML_TYPES,
    INT_TYPES,
    STRING,
    Header,
    InvalidGGUF,
    Metadata,
    ReadAt,
    TensorInfo,
    file_reads,
    parse_header,
)

from bitinglip.errors import InputError

__all__ = [
    "FILE_TYPES",
    "FIRST_READ",
    "GGML_TYPES",
    "MAX_HEADER",
    "GGUFHeader",
    "RangeRead",
    "TensorInfo",
    "file_reads",
    "read_header",
]

RangeRead = ReadAt  # (start, length) -> the bytes, possibly fewer at the end

FIRST_READ = 256 << 10
MAX_HEADER = 256 << 20  # a GGUF header this large is corrupt, and reading on would fetch weights

# general.file_type (llama_ftype) -> the quant name files are published under.
# fmt: off
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
# fmt: on


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


def read_header(read: RangeRead, size: int, *, name: str = "GGUF file") -> GGUFHeader:
    """Parse the header of a `size`-byte GGUF reached through `read(start, length)`.

    Errors (not a GGUF, truncated, absurd counts, a header past MAX_HEADER) are one-line
    InputErrors naming `name`. Errors raised by `read` pass through.
    """
    prefix = _Prefix(read, size, name)
    try:
        header = parse_header(prefix.read_at, size, name=name)
    except InvalidGGUF as exc:
        raise InputError(exc.reason) from None
    return _fit_view(header, len(prefix.buf))


class _Prefix:
    """The file's first bytes, fetched contiguously: FIRST_READ at once, then more on demand."""

    def __init__(self, read: RangeRead, size: int, name: str) -> None:
        self.read, self.size, self.name = read, size, name
        self.buf = bytearray()
        self._fetch(min(size, FIRST_READ))

    def read_at(self, start: int, n: int) -> bytes:
        """The reader's `read(offset, n)`: the prefix from `start`, extended to hold `n` bytes."""
        end = start + n
        if end > len(self.buf):
            if end > MAX_HEADER:
                raise InputError(
                    f"{self.name}: the GGUF header runs past {MAX_HEADER >> 20} MiB; not a GGUF "
                    "this tool can plan for"
                )
            self._fetch(min(self.size, MAX_HEADER, max(2 * len(self.buf), end)))
        return bytes(self.buf[start:])

    def _fetch(self, want: int) -> None:
        while len(self.buf) < want:
            chunk = self.read(len(self.buf), want - len(self.buf))
            if not chunk:
                raise InputError(f"{self.name}: the server sent no bytes at offset {len(self.buf)}")
            self.buf += chunk[: want - len(self.buf)]


def _fit_view(h: Header, bytes_read: int) -> GGUFHeader:
    meta = h.metadata
    arch = _string(meta, "general.architecture")

    def number(key: str) -> int | None:
        return _as_int(meta, f"{arch}.{key}")

    kv_heads = meta.get(f"{arch}.attention.head_count_kv", (-1, None))[1]
    return GGUFHeader(
        name=h.name,
        version=h.version,
        architecture=arch,
        model_name=_string(meta, "general.name"),
        block_count=number("block_count"),
        context_length=number("context_length"),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        head_count_kv_per_layer=tuple(kv_heads) if isinstance(kv_heads, list) else None,
        key_length=number("attention.key_length"),
        value_length=number("attention.value_length"),
        file_type=_as_int(meta, "general.file_type"),
        alignment=h.alignment,
        data_offset=h.data_offset,
        split_count=_as_int(meta, "split.count"),
        split_no=_as_int(meta, "split.no"),
        tensors=h.tensors,
        bytes_read=bytes_read,
    )


def _string(meta: Metadata, key: str) -> str | None:
    vtype, value = meta.get(key, (-1, None))
    return value if vtype == STRING and isinstance(value, str) else None


def _as_int(meta: Metadata, key: str) -> int | None:
    """An integer value, or the largest of a kept integer array (a per-layer count)."""
    vtype, value = meta.get(key, (-1, None))
    if vtype == ARRAY and isinstance(value, list):
        return max(value) if value else None
    return int(value) if vtype in INT_TYPES and value is not None else None
