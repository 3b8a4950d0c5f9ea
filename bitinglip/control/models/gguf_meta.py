"""A GGUF file's metadata for `models inspect`: architecture, parameters, context, layers, quant.

Local files and files on the hub go through the same header parser (`gguf_header.read_header`),
which reads the header and never the tensor data: from a local file with seek and read, from the
hub with HTTP range requests (`hub.read_range`), so inspecting a 40 GB file moves kilobytes to
megabytes. gguf-py's `GGUFReader` gives the same values (the tests compare the two) but builds a
Python object per vocabulary entry: 27 s for Gemma 3's 262k tokens, against 0.2 s here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitinglip.control.models import hub
from bitinglip.control.models.gguf_header import GGUFHeader, RangeRead, file_reads, read_header
from bitinglip.errors import InputError


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


def _meta(source: str, size: int, read: RangeRead, name: str) -> GGUFMeta:
    header: GGUFHeader = read_header(read, size, name=name)
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
    )
