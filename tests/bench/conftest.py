"""The benchmarks' CLI, run hermetically: its own HOME and data dir, no BITINGLIP_ variables,
the test's folder as the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.cli.conftest import Cli, hermetic_env


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    for key, value in hermetic_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return Cli(CliRunner(), tmp_path / "data", tmp_path)
