"""`bitinglip.control.models.settings`: a run's llama.cpp settings and keep-alive from the profile,
and `gpu_layers = "auto"` from the fit estimate of real tiny GGUF files (written with gguf-py).

The tiny GGUF (tests/hub/gguf_files.py, defaults): 2 layers, embedding 16, 2 heads, 1 KV head,
so head_dim = 8, and F32 tensors token_embd (8 × 16 = 512 B, stays in host memory), one
attn_norm per layer (64 B) and output_norm (64 B, counted on the GPU). At ctx tokens the f16 KV
cache of one layer is ctx × 1 KV head × (8 + 8) × 2 B = 32 × ctx B, and `fit.plan` keeps a 1 GiB
margin. So at n_ctx 4096 one layer takes 64 + 131072 = 131136 B, and the whole model
704 + 2 × 131072 B plus the margin.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.models.gguf_header import GGUFHeader, file_reads, read_header
from bitinglip.control.models.gguf_meta import GGUFMeta, read_local
from bitinglip.control.models.settings import (
    keep_alive_s,
    parse_duration,
    run_settings,
)
from bitinglip.errors import InputError
from tests.hub.gguf_files import tiny_gguf

GIB = 1 << 30
OUTPUT = 64  # output_norm
LAYER_4096 = 64 + 4096 * 32  # attn_norm + the f16 KV cache of one layer at 4096 tokens
WHOLE_4096 = 704 + 2 * 4096 * 32  # every tensor + the KV cache of both layers


def profile(text: str = "") -> Profile:
    env = {"HOME": "/nonexistent", "XDG_DATA_HOME": "/nonexistent/data"}
    return parse_profile(text, name="t", path=None, env=env)


def model(keys: str) -> Profile:
    return profile('[models.m]\nsource = "hf:o/r"\n' + keys)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    tiny_gguf(path)
    return path


@pytest.fixture(scope="module")
def header(gguf: Path) -> GGUFHeader:
    with gguf.open("rb") as f:
        return read_header(file_reads(f), gguf.stat().st_size, name=str(gguf))


# -- the settings ----------------------------------------------------------------------------


def test_a_name_without_a_table_gets_the_defaults() -> None:
    assert run_settings(profile(), "org/repo:Q4_K_M") == {
        "n_ctx": 4096,
        "gpu_layers": -1,
        "parallel": 1,
    }


def test_every_key_the_profile_sets_is_carried() -> None:
    settings = run_settings(
        model(
            "n_ctx = 2048\ngpu_layers = 12\nthreads = 3\nflash_attn = false\n"
            'cache_type_k = "q8_0"\ncache_type_v = "f16"\nsplit_mode = "layer"\n'
            'tensor_split = [1, 2]\nmain_gpu = 1\nchat_format = "chatml"\nparallel = 4\n'
            'keep_alive = "1m"\nmin_replicas = 1\n'
        ),
        "m",
    )
    assert settings == {
        "n_ctx": 2048,
        "gpu_layers": 12,
        "threads": 3,
        "flash_attn": False,
        "cache_type_k": "q8_0",
        "cache_type_v": "f16",
        "split_mode": "layer",
        "tensor_split": [1.0, 2.0],
        "main_gpu": 1,
        "chat_format": "chatml",
        "parallel": 4,
    }


def test_an_explicit_gpu_layers_is_kept_whatever_fits(header: GGUFHeader) -> None:
    for value in (-1, 0, 7):
        settings = run_settings(model(f"gpu_layers = {value}\n"), "m", free_bytes=0, meta=header)
        assert settings["gpu_layers"] == value


# -- gpu_layers = "auto" ---------------------------------------------------------------------


def auto(p: Profile, free: int | None, meta: GGUFMeta | GGUFHeader | None) -> int:
    layers = run_settings(p, "m", free_bytes=free, meta=meta)["gpu_layers"]
    assert isinstance(layers, int)
    return layers


@pytest.mark.parametrize(
    ("free", "layers"),
    [
        (GIB + WHOLE_4096, -1),  # it all fits: every layer
        (GIB + 10 * WHOLE_4096, -1),
        (GIB + OUTPUT + 2 * LAYER_4096, 2),  # both layers, token_embd in host memory
        (GIB + OUTPUT + LAYER_4096, 1),
        (GIB + OUTPUT + 2 * LAYER_4096 - 1, 1),
        (GIB + OUTPUT + LAYER_4096 - 1, 0),  # not one layer
        (GIB, 0),
        (0, 0),
    ],
)
def test_auto_is_what_fits(header: GGUFHeader, free: int, layers: int) -> None:
    assert auto(model(""), free, header) == layers


def test_auto_is_all_layers_without_a_gpu_figure_or_a_file(header: GGUFHeader) -> None:
    assert auto(model(""), None, header) == -1  # a host without a GPU figure
    assert auto(model(""), GIB, None) == -1  # nothing to estimate from


def test_auto_counts_the_context_of_every_parallel_sequence(header: GGUFHeader) -> None:
    free = GIB + OUTPUT + 2 * LAYER_4096
    assert auto(model("parallel = 1\n"), free, header) == 2
    assert auto(model("parallel = 2\n"), free, header) == 1  # 8192 tokens: 262208 B a layer
    assert auto(model("n_ctx = 8192\n"), free, header) == 1
    assert auto(model("n_ctx = 2048\nparallel = 2\n"), free, header) == 2


def test_auto_counts_the_cache_types(header: GGUFHeader) -> None:
    q8_layer = 64 + 4096 * 32 * 34 // 64  # q8_0: 34 bytes per 32 elements, not 64
    free = GIB + OUTPUT + 2 * q8_layer
    assert auto(model(""), free, header) == 1
    quantized = 'flash_attn = true\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
    assert auto(model(quantized), free, header) == 2
    assert auto(model('cache_type_k = "f32"\ncache_type_v = "f32"\n'), free, header) == 0


def test_auto_from_a_local_files_meta_reads_its_header(gguf: Path, header: GGUFHeader) -> None:
    meta = read_local(gguf)
    for free in (GIB + WHOLE_4096, GIB + OUTPUT + LAYER_4096, GIB + 100):
        assert auto(model(""), free, meta) == auto(model(""), free, header)


def test_auto_from_a_remote_meta_spreads_the_weights_over_the_layers(gguf: Path) -> None:
    """No header to read: the weights (704 B) evenly over two layers, 352 B each, and the KV
    cache from the metadata's head counts (the same 131072 B a layer here)."""
    meta = replace(read_local(gguf), source="https://hub.example/o/r/resolve/c/tiny.gguf")
    assert (meta.embedding_length, meta.head_count, meta.head_count_kv) == (16, 2, 1)
    assert auto(model(""), GIB + WHOLE_4096, meta) == -1
    assert auto(model(""), GIB + 352 + 4096 * 32, meta) == 1
    assert auto(model(""), GIB + 352 + 4096 * 32 - 1, meta) == 0
    headless = replace(meta, head_count=None)  # no KV cache counted: the weights alone
    assert auto(model(""), GIB + 704, headless) == -1
    assert auto(model(""), GIB + 703, headless) == 1
    assert auto(model(""), GIB + 351, headless) == 0


def test_a_local_meta_of_another_size_is_not_trusted(gguf: Path, header: GGUFHeader) -> None:
    meta = replace(read_local(gguf), file_size=gguf.stat().st_size + 1, head_count=None)
    assert auto(model(""), GIB + 704, meta) == -1  # the metadata's estimate, not the file's
    assert auto(model(""), GIB + 704, header) == 0


# -- keep-alive ------------------------------------------------------------------------------


def test_keep_alive_precedence() -> None:
    assert keep_alive_s(profile(), "anything") == 300.0
    p = profile('[serving]\nkeep_alive = "10m"\n[models.m]\nsource = "hf:o/r"\nkeep_alive = 0\n')
    assert keep_alive_s(p, "m") == 0.0
    assert keep_alive_s(p, "other") == 600.0
    p = profile('[serving]\nkeep_alive = -1\n[models.m]\nsource = "hf:o/r"\n')
    assert keep_alive_s(p, "m") == -1.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("90s", 90.0), ("1h", 3600.0), ("300", 300.0), ("-1", -1.0), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_names_the_bad_value() -> None:
    with pytest.raises(InputError) as caught:
        parse_duration("5 minutes")
    message = str(caught.value)
    assert message.startswith('"5 minutes" is not a keep-alive duration; use ')
    assert '"5m"' in message and "-1" in message and "\n" not in message
    assert caught.value.exit_code == 2
