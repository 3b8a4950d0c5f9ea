"""`bitinglip bench serve`, small: placement against rotation on three local agents, the gateway
against llama_cpp.server, parallel against one; every figure measured by the run itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Cli

pytestmark = pytest.mark.slow

RATIOS = (
    "loads_ratio",
    "p95_ratio",
    "placement_tokens_per_s_ratio",
    "peer_tokens_per_s_ratio",
    "peer_ttft_p50_ratio",
    "batching_ratio",
)


@pytest.fixture
def cli(cli: Cli, demo_model: Path) -> Cli:
    """The benchmarks' CLI with the demo model under its alias, already assembled."""
    models = cli.data_dir / "models"
    models.mkdir(parents=True)
    (models / "gemma-3-270m.gguf").symlink_to(demo_model)
    return cli


def test_bench_serve_measures_placement_the_peer_and_batching(cli: Cli) -> None:
    result = cli.ok(
        "bench", "serve", "--json", "--requests", "9", "--clients", "3", "--max-tokens", "2",
        "--peer-tokens", "4", "--parallel", "2",
    )  # fmt: skip
    out = json.loads(result.stdout)
    for mode in ("model", "rotation"):
        side = out["placement"][mode]
        assert side["requests"] == 9 and side["failed"] == 0, side
        assert side["model_loads"] >= 1 and side["tokens"] > 0 and side["p95_ms"] > 0
    for side in (out["peer"], out["bitinglip"], out["bitinglip_parallel_1"]):
        assert side["requests"] == 3 and side["failed"] == 0, side
        assert side["tokens_per_s"] > 0 and side["ttft_p50_ms"] > 0
    for ratio in RATIOS:
        assert isinstance(out[ratio], float) and out[ratio] > 0, ratio
        assert isinstance(out["pass"][ratio], bool) and ratio in out["targets"]
    assert "bench serve placement" in result.stderr  # progress on stderr, JSON alone on stdout
