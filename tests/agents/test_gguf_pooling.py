"""The GGUF check reads `<arch>.pooling_type`: an embedding model that says how it pools (CLS,
last token) is run its own way, not with the mean every other model gets."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from bitinglip_agent.gguf_check import check_gguf


def test_the_pooling_type_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cls.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-embedder")
    writer.add_block_count(1)
    writer.add_pooling_type(gguf.PoolingType.CLS)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert check_gguf(str(path)).pooling_type == int(gguf.PoolingType.CLS)
