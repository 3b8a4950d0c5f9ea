"""Validate a GGUF file's header before llama.cpp touches it.

llama.cpp aborts the whole process on some malformed files (a wrong-typed `general.alignment`
trips an assert), so the agent checks first and fails the task as `invalid_gguf` at once.
The header goes through the one reader (`gguf_reader`, shared with the control plane) over
chunked reads of the local file, in this host's byte order as llama.cpp reads it; array contents
are seeked over, so a 262k-token vocabulary costs one tight loop, never the whole file. Then the
tensor data must lie, aligned, inside the file. Standard library only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

from bitinglip_agent.gguf_reader import (
    GGML_TYPES,
    INT_TYPES,
    STRING,
    Header,
    InvalidGGUF,
    Metadata,
    file_reads,
    int_value,
    parse_header,
    typed,
)

__all__ = ["GGML_BLOCK_SIZES", "GGUFSummary", "InvalidGGUF", "check_gguf"]

_CHUNK = 1 << 20
# ggml type id -> (elements per block, bytes per block): a view of the reader's one table.
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    ggml_type: (elements, nbytes) for ggml_type, (_, elements, nbytes) in GGML_TYPES.items()
}


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
    # K and V cache elements one token of context takes over all layers (None: unknown).
    kv_elements_per_token: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            header = parse_header(file_reads(f, _CHUNK), st.st_size, name=path, byte_order="=")
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidGGUF(f"{path}: missing file (no such file)") from None
    except PermissionError:
        raise InvalidGGUF(f"{path}: permission denied") from None
    except OSError as exc:
        raise InvalidGGUF(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_tensor_data(header, st.st_size)
    return _summary(header, st.st_size)


def _summary(h: Header, file_size: int) -> GGUFSummary:
    meta = h.metadata
    arch = typed(meta, "general.architecture", STRING, h.name)
    return GGUFSummary(
        path=h.name,
        version=h.version,
        tensor_count=len(h.tensors),
        kv_count=h.kv_count,
        alignment=h.alignment,
        data_offset=h.data_offset,
        file_size=file_size,
        architecture=arch,
        name=typed(meta, "general.name", STRING, h.name),
        context_length=int_value(meta, f"{arch}.context_length"),
        block_count=int_value(meta, f"{arch}.block_count"),
        file_type=int_value(meta, "general.file_type"),
        has_chat_template=meta.get("tokenizer.chat_template", (-1, None))[0] == STRING,
        # Not among the reader's kept values (gguf_reader._ARCH_KEYS), so None for every file.
        pooling_type=int_value(meta, f"{arch}.pooling_type"),
        kv_elements_per_token=_kv_elements(meta, arch),
    )


def _kv_elements(meta: Metadata, arch: str | None) -> int | None:
    """K and V elements per token of context, over all layers: the KV cache's size (times the
    cache type's bytes per element) for one token, from the attention shape."""
    layers = int_value(meta, f"{arch}.block_count")
    embd = int_value(meta, f"{arch}.embedding_length")
    heads = int_value(meta, f"{arch}.attention.head_count")
    if not (layers and embd and heads):
        return None
    kv_type, kv_value = meta.get(f"{arch}.attention.head_count_kv", (-1, None))
    if isinstance(kv_value, list) and kv_value:  # per layer
        kv_heads = [int(v) for v in kv_value[:layers]]
    else:
        kv_heads = [int(kv_value) if kv_type in INT_TYPES and kv_value else heads] * layers
    k_len = int_value(meta, f"{arch}.attention.key_length") or embd // heads
    v_len = int_value(meta, f"{arch}.attention.value_length") or embd // heads
    return sum(n * (k_len + v_len) for n in kv_heads)


def _check_tensor_data(h: Header, file_size: int) -> None:
    """Each tensor's data starts on the alignment and ends inside the file."""
    for t in h.tensors:
        if t.offset % h.alignment:
            raise InvalidGGUF(
                f"{h.name}: tensor {t.name!r} offset {t.offset} is not a multiple of {h.alignment}"
            )
        end = h.data_offset + t.offset + t.nbytes
        if end > file_size:
            raise InvalidGGUF(
                f"{h.name}: truncated: tensor {t.name!r} data ends at byte {end} of {file_size}"
            )
