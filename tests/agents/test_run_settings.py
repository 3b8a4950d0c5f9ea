"""A model's run settings as the agent applies them (no llama.cpp here): defaults, checks,
keep-alive precedence, the memory a load takes, and the stop-string hold-back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from bitinglip_agent.batch import _held_back
from bitinglip_agent.gguf_check import check_gguf
from bitinglip_agent.server import AgentOptions
from bitinglip_agent.settings import N_CTX, SettingsError, effective, estimate_bytes, keep_alive_s

OPTIONS = AgentOptions(threads=3, gpu_layers=0, idle_unload_s=300.0)


def test_missing_settings_are_the_agents_defaults() -> None:
    settings = effective(None, OPTIONS)
    assert settings["n_ctx"] == N_CTX == 4096
    assert (settings["parallel"], settings["threads"], settings["gpu_layers"]) == (1, 3, 0)
    assert effective({"threads": 0, "parallel": 4}, OPTIONS)["threads"] == 3  # 0: the agent's
    given = effective({"n_ctx": 512, "gpu_layers": -1, "cache_type_k": "q8_0"}, OPTIONS)
    assert (given["n_ctx"], given["gpu_layers"], given["cache_type_k"]) == (512, -1, "q8_0")


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"parallel": 0}, "parallel"),
        ({"parallel": 65}, "parallel"),
        ({"n_ctx": "big"}, "n_ctx"),
        ({"gpu_layers": True}, "gpu_layers"),
        ({"cache_type_v": "q3"}, "cache_type_v"),
        ({"split_mode": "diagonal"}, "split_mode"),
        ({"tensor_split": [1, "x"]}, "tensor_split"),
        ({"flash_attn": "yes"}, "flash_attn"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(given: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=f"^setting {named} = ") as caught:
        effective(given, OPTIONS)
    assert "\n" not in str(caught.value)


def test_keep_alive_the_requests_then_the_models_then_the_agents() -> None:
    assert keep_alive_s({"payload": {"keep_alive_s": 0}, "model": {"keep_alive_s": 60}}, 300) == 0
    assert keep_alive_s({"payload": {}, "model": {"keep_alive_s": 60}}, 300) == 60
    assert keep_alive_s({"payload": {"keep_alive_s": None}, "model": {}}, 300) == 300
    assert keep_alive_s({"payload": {"keep_alive_s": -5}}, 300) == -1  # any negative: forever


def test_a_loads_estimate_is_the_file_and_its_kv_cache(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(4)
    writer.add_embedding_length(64)
    writer.add_head_count(8)
    writer.add_head_count_kv(2)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    summary = check_gguf(str(path))
    assert summary.kv_elements_per_token == 4 * 2 * (8 + 8)  # layers x kv heads x (k + v dims)
    one = estimate_bytes(summary, effective({"n_ctx": 1000}, OPTIONS))
    eight = estimate_bytes(summary, effective({"n_ctx": 1000, "parallel": 8}, OPTIONS))
    kv = 4 * 2 * 16 * 1000 * 2  # f16
    assert one == int(summary.file_size * 1.2 + kv)
    assert eight - one == 7 * kv


def test_text_that_may_start_a_stop_string_is_held_back() -> None:
    assert _held_back("Hello wor", ["world"]) == 3
    assert _held_back("Hello", ["world"]) == 0
    assert _held_back("a<", ["<end>", "<e"]) == 1
    assert _held_back("x</s", ["</s>"]) == 3
