"""`models fit --cache-type-k/--cache-type-v`: the KV cache sized in the given types (q8_0 takes
34 bytes per 32 elements where f16 takes 64), the weights unchanged; a type llama.cpp does not
have is a usage error."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bitinglip.cli import app
from tests.hub.server import Hub
from tests.hub.test_fit_hub import REPO, data_dir, fit_json, repo

__all__ = ["data_dir", "repo"]  # fixtures


def test_the_kv_cache_is_sized_in_the_cache_types(
    hub: Hub, repo: dict[str, int], data_dir: Path
) -> None:
    f16, _ = fit_json(data_dir)
    q8, _ = fit_json(data_dir, "--cache-type-k", "q8_0", "--cache-type-v", "q8_0")
    k_only, _ = fit_json(data_dir, "--cache-type-k", "q8_0")
    for wide, narrow, half in zip(f16["needs"], q8["needs"], k_only["needs"], strict=True):
        assert narrow["weights_bytes"] == wide["weights_bytes"]
        assert narrow["kv_bytes"] == wide["kv_bytes"] * 34 // 64, (wide, narrow)
        assert half["kv_bytes"] == (wide["kv_bytes"] + narrow["kv_bytes"]) // 2, half


def test_an_unknown_cache_type_is_a_usage_error(data_dir: Path) -> None:
    argv = ["--data-dir", str(data_dir), "models", "fit", REPO, "--cache-type-k", "q9"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert "'q9' is not one of" in result.stderr
