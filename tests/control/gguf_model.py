"""Llama-shaped GGUF files of known sizes, written with gguf-py, tensor data left sparse.

The header (metadata and tensor infos) is written by `gguf.GGUFWriter`; the tensor data is a
hole made with truncate(), so a file of hundreds of MB costs nothing to write. The byte size of
every tensor is computed here by hand from its ggml type (F32: 4 bytes, F16: 2, Q8_0: 34 bytes
per 32 elements) and passed to the writer, which lays the data out from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Spec:
    layers: int = 4
    embd: int = 256
    ffn: int = 512
    heads: int = 8
    kv_heads: int = 2
    vocab: int = 1024
    ctx_train: int = 2048
    tokens: int = 0  # entries in tokenizer.ggml.tokens, to make the header longer
    file_type: int = 7  # MOSTLY_Q8_0
    key_length: int | None = None
    value_length: int | None = None
    kv_heads_per_layer: tuple[int, ...] | None = None  # metadata only; tensors use kv_heads

    @property
    def head_dim(self) -> int:
        return self.embd // self.heads


def nbytes(ggml_type: Q, elements: int) -> int:
    if ggml_type == Q.F32:
        return elements * 4
    if ggml_type == Q.F16:
        return elements * 2
    assert ggml_type == Q.Q8_0 and elements % 32 == 0
    return elements // 32 * 34


Tensor = tuple[str, tuple[int, ...], Q, int]  # name, numpy shape (rows, cols), type, bytes


def tensors(spec: Spec) -> list[Tensor]:
    e, f, kv = spec.embd, spec.ffn, spec.kv_heads * (spec.key_length or spec.head_dim)
    kv_v = spec.kv_heads * (spec.value_length or spec.head_dim)

    def t(name: str, shape: tuple[int, ...], ggml_type: Q) -> Tensor:
        elements = int(np.prod(shape))
        return name, shape, ggml_type, nbytes(ggml_type, elements)

    out = [t("token_embd.weight", (spec.vocab, e), Q.Q8_0)]
    for i in range(spec.layers):
        out += [
            t(f"blk.{i}.attn_norm.weight", (e,), Q.F32),
            t(f"blk.{i}.attn_q.weight", (e, e), Q.Q8_0),
            t(f"blk.{i}.attn_k.weight", (kv, e), Q.Q8_0),
            t(f"blk.{i}.attn_v.weight", (kv_v, e), Q.Q8_0),
            t(f"blk.{i}.attn_output.weight", (e, e), Q.Q8_0),
            t(f"blk.{i}.ffn_norm.weight", (e,), Q.F32),
            t(f"blk.{i}.ffn_gate.weight", (f, e), Q.F16),
            t(f"blk.{i}.ffn_up.weight", (f, e), Q.F16),
            t(f"blk.{i}.ffn_down.weight", (e, f), Q.F16),
        ]
    out += [
        t("output_norm.weight", (e,), Q.F32),
        t("output.weight", (spec.vocab, e), Q.Q8_0),
    ]
    return out


@dataclass(frozen=True)
class Written:
    paths: tuple[Path, ...]
    sizes: tuple[int, ...]
    data_offsets: tuple[int, ...]

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def size(self) -> int:
        return self.sizes[0]

    @property
    def data_offset(self) -> int:
        return self.data_offsets[0]


def write_model(path: Path, spec: Spec, *, split_max_tensors: int = 0) -> Written:
    """Write `spec` to `path` (or to `path`-0000N-of-0000M.gguf shards when split)."""
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_name("fit-test")
    writer.add_block_count(spec.layers)
    writer.add_context_length(spec.ctx_train)
    writer.add_embedding_length(spec.embd)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(list(spec.kv_heads_per_layer or ()) or spec.kv_heads)
    if spec.key_length is not None:
        writer.add_key_length(spec.key_length)
    if spec.value_length is not None:
        writer.add_value_length(spec.value_length)
    writer.add_file_type(spec.file_type)
    if spec.tokens:
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"token-{i:08d}" for i in range(spec.tokens)])
        writer.add_token_scores([0.0] * spec.tokens)
    for name, shape, ggml_type, size in tensors(spec):
        writer.add_tensor_info(name, shape, np.dtype(np.float32), size, raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    paths, sizes, offsets = [], [], []
    for fout, shard in zip(writer.fout, writer.tensors, strict=True):
        offset = gguf.GGUFWriter.ggml_pad(fout.tell(), writer.data_alignment)
        data = sum(
            gguf.GGUFWriter.ggml_pad(ti.nbytes, writer.data_alignment) for ti in shard.values()
        )
        fout.truncate(offset + data)  # the tensor data: a hole of zeros
        paths.append(Path(fout.name))
        sizes.append(offset + data)
        offsets.append(offset)
    writer.close()
    return Written(tuple(paths), tuple(sizes), tuple(offsets))
