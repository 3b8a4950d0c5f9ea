"""`bitinglip bench growth`, small: every figure measured at both sizes, with its target and
verdict, and the prune really giving space back."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli

PER_SIZE = (
    "e2e_per_s",
    "tasks_refresh_ms",
    "status_ms",
    "health_ms",
    "jobs_submit_lines_per_s",
    "jobs_submit_peak_rss_mb",
    "prune_size_ratio",
)


def test_bench_growth_measures_both_sizes_against_the_targets(cli: Cli) -> None:
    result = cli(
        "bench", "growth", "--json", "--small", "300", "--large", "3000", "--drain", "100",
        "--samples", "3",
    )  # fmt: skip
    out = json.loads(result.stdout)
    for figure in PER_SIZE:
        assert out[f"{figure}_small"] > 0 and out[f"{figure}_large"] > 0, figure
    assert out["e2e_ratio"] == round(out["e2e_per_s_large"] / out["e2e_per_s_small"], 3)
    assert set(out["targets"]) == set(out["pass"]) and "e2e_ratio" in out["pass"]
    assert out["db_mb_after_prune_large"] < out["db_mb_before_prune_large"]
    assert result.exit_code == (0 if out["ok"] else 1)
