"""`bitinglip bench tui`, small: every figure measured, with its target and verdict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.conftest import Cli, hermetic_env

FIGURES = (
    "tasks_refresh_ms_median",
    "tasks_refresh_ms_p95",
    "fleet_refresh_ms_median",
    "fleet_refresh_ms_p95",
    "idle_cpu_percent",
    "rss_growth_mb",
)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    for key, value in hermetic_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return Cli(CliRunner(), tmp_path / "data", tmp_path)


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
