"""Small valid GGUF files for hub repos, written with gguf-py (llama architecture metadata)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

FILE_TYPE_Q8_0 = 7  # gguf.LlamaFileType.MOSTLY_Q8_0


@dataclass(frozen=True)
class TinyGGUF:
    n_layers: int = 2
    context_length: int = 256
    embedding_length: int = 16
    head_count: int = 2
    head_count_kv: int = 1
    file_type: int = FILE_TYPE_Q8_0
    name: str = "bitinglip-tiny"
    seed: int = 0

    def write(self, path: Path) -> None:
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_name(self.name)
        writer.add_file_type(self.file_type)
        writer.add_block_count(self.n_layers)
        writer.add_context_length(self.context_length)
        writer.add_embedding_length(self.embedding_length)
        writer.add_head_count(self.head_count)
        writer.add_head_count_kv(self.head_count_kv)
        width = self.embedding_length
        embeddings = np.random.default_rng(self.seed).standard_normal((8, width))
        writer.add_tensor("token_embd.weight", embeddings.astype(np.float32))
        for layer in range(self.n_layers):
            writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(width, np.float32))
        writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def tiny_gguf(
    path: Path | None = None,
    *,
    n_layers: int = 2,
    context_length: int = 256,
    embedding_length: int = 16,
    head_count: int = 2,
    head_count_kv: int = 1,
    file_type: int = FILE_TYPE_Q8_0,
    name: str = "bitinglip-tiny",
    seed: int = 0,
) -> bytes:
    """The bytes of a small llama GGUF, also written to `path` when one is given.

    Metadata: general.architecture/name/file_type and llama.block_count/context_length/
    embedding_length/attention.head_count/attention.head_count_kv; F32 tensors token_embd, one
    attn_norm per layer and output_norm. Another `seed` gives other bytes in the same layout.
    """
    spec = TinyGGUF(
        n_layers, context_length, embedding_length, head_count, head_count_kv, file_type, name, seed
    )
    if path is not None:
        spec.write(path)
        return path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="tiny-gguf-") as folder:
        target = Path(folder) / "tiny.gguf"
        spec.write(target)
        return target.read_bytes()
