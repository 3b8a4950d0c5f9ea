"""A GGUF file's metadata for `models inspect`: architecture, parameters, context, layers, quant,
and what `ollama show` shows and fit needs: embedding length, heads and KV heads, vocabulary size,
whether it carries a chat template, its license.

Local files and files on the hub go through the same header parser (`gguf_header.read_header`),
which reads the header and never the tensor data: from a local file with seek and read, from the
hub with HTTP range requests (`hub.read_range`), so inspecting a 40 GB file moves kilobytes to
megabytes. gguf-py's `GGUFReader` gives the same values (the tests compare the two) but builds a
Python object per vocabulary entry: 27 s for Gemma 3's 262k tokens, against 0.2 s here.

`header_facts(header)` is what the memory estimate (`fit.estimate`, through
`settings.model_need`) reads from a header, as JSON the registry keeps with a model
(`models.facts`): tensor bytes by layer and outside them, layer and head counts, key and value
lengths, the trained context. `header_from_facts` makes a `GGUFHeader` of them again, one
tensor per layer, whose estimate is the full header's, byte for byte: so a model whose copies
are all on other hosts is sized like one read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitinglip_agent.gguf_reader import parse_header

from bitinglip.control.models import fit, hub
from bitinglip.control.models.gguf_header import (
    GGUFHeader,
    RangeRead,
    TensorInfo,
    file_reads,
    read_header,
)
from bitinglip.errors import InputError

CHAT_TEMPLATE = "tokenizer.chat_template"
FACTS_VERSION = 1  # `header_facts`' shape; facts of another version are not read
# The header's numbers the estimate reads, kept as they are (int or None).
_COUNTS = (
    "block_count",
    "context_length",
    "embedding_length",
    "head_count",
    "head_count_kv",
    "key_length",
    "value_length",
    "file_type",
)


@dataclass(frozen=True)
class GGUFMeta:
    """`parameters` is the sum of the tensors' element counts; `tensor_bytes` their data size;
    `bytes_read` what was read to learn all this (the header and a little more)."""

    source: str
    architecture: str | None
    name: str | None
    parameters: int
    context_length: int | None
    layers: int | None
    quant: str | None
    file_type: int | None
    tensor_count: int
    tensor_bytes: int
    file_size: int
    bytes_read: int
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    vocab_size: int | None = None  # rows of the token embedding (`token_embd.weight`)
    chat_template: bool = False  # whether `tokenizer.chat_template` is in the header
    license: str | None = None  # `general.license`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_local(path: Path) -> GGUFMeta:
    """The metadata of the GGUF file at `path`."""
    try:
        with path.open("rb") as f:
            return _meta(str(path), path.stat().st_size, file_reads(f), str(path))
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a GGUF file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_remote(file: hub.HubFile) -> GGUFMeta:
    """The metadata of a GGUF file on the hub, from range reads of its header only."""

    def read(start: int, length: int) -> bytes:
        return hub.read_range(file.url, start, length)

    return _meta(file.url, file.size, read, f"{file.repo}:{file.name}")


def read_remote_header(file: hub.HubFile) -> GGUFHeader:
    """The header of a GGUF file on the hub (what `fit.needs_for_files` reads for one file),
    from range reads of its header only."""
    return read_header(lambda s, n: hub.read_range(file.url, s, n), file.size, name=file.name)


# -- the memory facts the registry keeps -------------------------------------------------------


def header_facts(header: GGUFHeader) -> dict[str, Any]:
    """What the memory estimate reads from `header`, JSON-ready (see the module docstring)."""
    split = fit.estimate(header, 0, 0)  # the tensors by layer, input and output; no KV cache
    per_layer = header.head_count_kv_per_layer
    return {
        "v": FACTS_VERSION,
        "architecture": header.architecture,
        **{key: getattr(header, key) for key in _COUNTS},
        "head_count_kv_per_layer": None if per_layer is None else list(per_layer),
        "data_offset": header.data_offset,
        "layer_bytes": list(split.layer_bytes),
        "input_bytes": split.input_bytes,
        "output_bytes": split.output_bytes,
    }


def header_from_facts(facts: Mapping[str, Any], name: str) -> GGUFHeader | None:
    """A header whose estimate is that of the header `facts` were taken from (one tensor per
    layer, one for the input embedding, one for the rest); None when `facts` are not facts of
    this version."""
    try:
        if facts.get("v") != FACTS_VERSION:
            return None
        counts = {key: _count(facts[key]) for key in _COUNTS}
        per_layer = facts["head_count_kv_per_layer"]
        sizes = [
            ("token_embd.weight", _whole(facts["input_bytes"])),
            *((f"blk.{i}.weights", _whole(n)) for i, n in enumerate(facts["layer_bytes"])),
            ("output.weight", _whole(facts["output_bytes"])),
        ]
        architecture = facts["architecture"]
        return GGUFHeader(
            name=name,
            version=3,
            architecture=architecture if isinstance(architecture, str) else None,
            model_name=None,
            head_count_kv_per_layer=None if per_layer is None else tuple(map(_whole, per_layer)),
            alignment=32,
            data_offset=_whole(facts["data_offset"]),
            split_count=None,
            split_no=None,
            tensors=_tensors(sizes),
            bytes_read=0,
            **counts,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _tensors(sizes: list[tuple[str, int]]) -> tuple[TensorInfo, ...]:
    tensors, offset = [], 0
    for name, nbytes in sizes:
        tensors.append(TensorInfo(name, (), 0, offset, nbytes))
        offset += nbytes
    return tuple(tensors)


def _count(value: Any) -> int | None:
    return None if value is None else _whole(value)


def _whole(value: Any) -> int:
    """A non-negative int of the facts; ValueError for anything else (a bool, a float, text)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _meta(source: str, size: int, read: RangeRead, name: str) -> GGUFMeta:
    kept = _Recorded(read)
    header: GGUFHeader = read_header(kept.read, size, name=name)
    # The same header again, from the bytes just read, for the keys the fit view leaves out.
    metadata = parse_header(kept.read_kept, size, name=name).metadata
    license_ = metadata.get("general.license", (None, None))[1]
    return GGUFMeta(
        source=source,
        architecture=header.architecture,
        name=header.model_name,
        parameters=sum(math.prod(t.shape) for t in header.tensors),
        context_length=header.context_length,
        layers=header.block_count,
        quant=header.quant,
        file_type=header.file_type,
        tensor_count=len(header.tensors),
        tensor_bytes=header.tensor_bytes,
        file_size=size,
        bytes_read=header.bytes_read,
        embedding_length=header.embedding_length,
        head_count=header.head_count,
        head_count_kv=header.head_count_kv,
        vocab_size=_vocab_size(header),
        chat_template=CHAT_TEMPLATE in metadata,
        license=license_ if isinstance(license_, str) else None,
    )


def _vocab_size(header: GGUFHeader) -> int | None:
    """The token embedding's rows: ggml's shape is (embedding length, vocabulary size)."""
    for tensor in header.tensors:
        if tensor.name == "token_embd.weight" and len(tensor.shape) == 2:
            return int(tensor.shape[1])
    return None


class _Recorded:
    """A range reader that keeps what it returned (the header reader reads a contiguous prefix
    from offset 0), so the header can be parsed a second time without reading again."""

    def __init__(self, read: RangeRead) -> None:
        self._read = read
        self.buf = bytearray()

    def read(self, start: int, length: int) -> bytes:
        chunk = self._read(start, length)
        if start <= len(self.buf):
            self.buf[start:] = chunk
        return chunk

    def read_kept(self, start: int, length: int) -> bytes:
        del length  # the first reading read as far as the parser goes
        return bytes(self.buf[start:])
