"""`bitinglip bench tui`, small: every figure measured, with its target and verdict."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli

FIGURES = (
    "tasks_refresh_ms_median",
    "tasks_refresh_ms_p95",
    "fleet_refresh_ms_median",
    "fleet_refresh_ms_p95",
    "idle_cpu_percent",
    "rss_growth_mb",
)


def test_bench_tui_measures_every_figure_against_its_target(cli: Cli) -> None:
    result = cli(
        "bench", "tui", "--json", "--hosts", "3", "--gpus", "2", "--tasks", "200",
        "--idle-s", "2", "--minutes", "0.1", "--samples", "5",
    )  # fmt: skip
    out = json.loads(result.stdout)
    assert set(FIGURES) == set(out["targets"]) == set(out["pass"])
    for figure in FIGURES:
        assert isinstance(out[figure], int | float), figure
        assert out["pass"][figure] == (out[figure] <= out["targets"][figure]), figure
    assert out["fleet_refresh_ms_median"] > 0 and out["tasks_refresh_ms_median"] > 0
    assert out["idle_cpu_percent"] > 0 and out["telemetry_writes"] >= 5
    assert result.exit_code == (0 if out["ok"] else 1)
