"""A real terminal for the console: tmux runs `bitinglip` in a pane we type into and read.

`Terminal.start(argv, env)` opens a detached tmux session (its own server socket and no config
file, so nothing touches the user's tmux) at a fixed size; `keys()` types, `screen()` reads the
pane as text, `wait_for()` polls the screen. After the console exits, the pane's shell prints the
exit code and the terminal's modes, so a test can check that the terminal was restored.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

AFTER = "echo EXIT=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -e '-\\?icanon' -e '-\\?echo'; "
AFTER += "tput cnorm >/dev/null; echo DONE; sleep 600"


def have_tmux() -> bool:
    return shutil.which("tmux") is not None


@dataclass
class Terminal:
    socket: Path
    name: str = "console"

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(
        self, argv: list[str], env: dict[str, str], size: tuple[int, int] = (120, 36)
    ) -> None:
        """Run `argv` in a new pane; the server (and so the pane) gets `env`, tmux sets TERM."""
        command = f"{shlex.join(argv)}; {AFTER}"
        width, height = size
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-s", self.name,
            "-x", str(width), "-y", str(height), "bash", "--norc", "--noprofile", "-c", command,
            env=env,
        )  # fmt: skip
        self._tmux("set-option", "-s", "escape-time", "0")  # Escape is a key, not a prefix

    def keys(self, *keys: str) -> None:
        """tmux key names ("Enter", "Escape", "q") or literal text with `text:` in front."""
        for key in keys:
            if key.startswith("text:"):
                self._tmux("send-keys", "-t", self.name, "-l", key[5:])
            else:
                self._tmux("send-keys", "-t", self.name, key)
            time.sleep(0.3 if key == "Escape" else 0.05)  # an Escape alone, not an Alt- prefix

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def alternate_screen(self) -> bool:
        return (
            self._tmux("display-message", "-p", "-t", self.name, "#{alternate_on}").strip() == "1"
        )

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen after {timeout}s; screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True)
