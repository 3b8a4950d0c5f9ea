"""CLI fixtures: a hermetic environment, a data dir, and the CLI run in process or as a process.

Every run is isolated from the user's state: the data dir lives in `tmp_path`, XDG_CONFIG_HOME,
XDG_DATA_HOME and HOME point into `tmp_path`, no BITINGLIP_* variable leaks in, and the working
directory is `tmp_path` (so the repository's ./profiles folder is never picked up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bitinglip.cli import app

BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = BIN / "bitinglip"
# The console script when the venv has one, else `python -m bitinglip`.
COMMAND: list[str] = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "bitinglip"]
)

# A model alias of the built-in default profile. `--label gpu=none` (no host has that label)
# keeps a task for it queued while a controller runs.
MODEL = "gemma-3-270m"
NOWHERE = "gpu=none"
NOWHERE_LABELS = {"gpu": "none"}
STOP_WITHIN_S = 5.0


def hermetic_env(root: Path) -> dict[str, str]:
    """os.environ without BITINGLIP_*, with HOME and the XDG folders under `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITINGLIP_")}
    env.update(
        HOME=str(root / "home"),
        XDG_CONFIG_HOME=str(root / "xdg-config"),
        XDG_DATA_HOME=str(root / "xdg-data"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@dataclass
class Cli:
    """The Typer app through CliRunner, with `--data-dir` set (unless `data_dir=False`)."""

    runner: CliRunner
    data_dir: Path
    cwd: Path

    def __call__(self, *args: str | Path, data_dir: bool = True) -> Result:
        argv = [str(a) for a in args]
        if data_dir:
            argv = ["--data-dir", str(self.data_dir), *argv]
        return self.runner.invoke(app, argv, catch_exceptions=False)

    def ok(self, *args: str | Path) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str | Path) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def registered(self, *global_args: str | Path) -> list[dict[str, Any]]:
        """`models ls --json` without the profile's aliases that no registered model answers."""
        return [m for m in self.json(*global_args, "models", "ls") if m["id"] is not None]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.json("status")["tasks"]
        return counts


@dataclass
class Proc:
    """The CLI as a real subprocess (the console script), cwd and env hermetic."""

    data_dir: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, args: Sequence[str | Path], data_dir: bool = True) -> list[str]:
        head = [*COMMAND, "--data-dir", str(self.data_dir)] if data_dir else [*COMMAND]
        return [*head, *(str(a) for a in args)]

    def __call__(
        self,
        *args: str | Path,
        data_dir: bool = True,
        timeout: float = 30,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, data_dir),
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    def json(self, *args: str | Path, timeout: float = 30) -> Any:
        return json.loads(self.ok(*args, "--json", timeout=timeout).stdout)

    def popen(self, *args: str | Path, stderr_to: Path) -> subprocess.Popen[bytes]:
        with stderr_to.open("wb") as sink:
            return subprocess.Popen(
                self.argv(args),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 10.0, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class Up:
    """A `bitinglip [GLOBAL_ARGS] up` process and the file its stderr goes to."""

    def __init__(self, proc: Proc, log: Path, *global_args: str | Path) -> None:
        self.log = log
        self.process = proc.popen(*global_args, "up", stderr_to=log)

    @property
    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_until_controller(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"up exited early:\n{self.stderr}"
            return "bitinglip: controller of " in self.stderr

        wait_for("`bitinglip up` to hold the controller lease", ready)

    def stop(self, sig: signal.Signals, within: float = STOP_WITHIN_S) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"up ignored {sig.name} for {within} s") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def assert_stopped_cleanly(up: Up, sig: signal.Signals, code: int) -> None:
    assert code == 0, up.stderr
    lines = stderr_lines(up.stderr)
    assert "Traceback" not in up.stderr
    assert f"bitinglip: {sig.name}: stopping" in lines, lines
    assert lines[-1] == "bitinglip: stopped", lines


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    for key, value in hermetic_env(tmp_path).items():
        if key != "PYTHONDONTWRITEBYTECODE":
            monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return Cli(CliRunner(), data_dir, tmp_path)


@pytest.fixture
def proc(tmp_path: Path, data_dir: Path) -> Proc:
    return Proc(data_dir, tmp_path, hermetic_env(tmp_path))


def write_jsonl(path: Path, *lines: object) -> Path:
    """One line per item: a str as is, anything else as JSON."""
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text, encoding="utf-8")
    return path
