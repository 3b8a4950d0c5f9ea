"""One inference child process (`python -m bitinglip_agent.infer`): started with a model's
settings, spoken to in JSON lines, its stderr kept for crash reports, stopped politely first."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a dir or the .pyz


class ChildProcess:
    def __init__(self, path: str, mode: str, settings: dict[str, Any]) -> None:
        self.path = path
        self.mode = mode
        self.settings = settings  # what it was asked for (settings.effective)
        self.facts: dict[str, Any] = {}  # its ready line: effective values from llama.cpp
        self.loaded_at = time.time()
        self._stderr: collections.deque[str] = collections.deque(maxlen=8)
        self._write_lock = threading.Lock()
        argv = [
            sys.executable,
            "-m",
            "bitinglip_agent.infer",
            "--model",
            path,
            "--mode",
            mode,
            "--settings",
            json.dumps(settings),
        ]
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def read(self) -> dict[str, Any] | None:
        """The next JSON object it writes (None at EOF); other lines go to the crash report."""
        stdout = self.proc.stdout
        if stdout is None:
            return None
        while True:
            try:
                line = stdout.readline()
            except (OSError, ValueError):
                return None
            if not line:
                return None
            try:
                msg = json.loads(line)
            except ValueError:
                self._stderr.append(line.decode(errors="replace").strip())
                continue
            if isinstance(msg, dict):
                return msg

    def relay(self, deliver: Callable[[ChildProcess, dict[str, Any] | None], None]) -> None:
        """Deliver every message it writes from now on, then None at EOF, on a thread."""

        def run() -> None:
            while True:
                msg = self.read()
                deliver(self, msg)
                if msg is None:
                    return

        threading.Thread(target=run, name=f"child:{self.pid}", daemon=True).start()

    def write(self, *msgs: dict[str, Any]) -> None:
        """Lines to it, in one write."""
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            with self._write_lock:
                stdin.write(b"".join(json.dumps(msg).encode() + b"\n" for msg in msgs))
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return  # it died: its reader sees EOF and the runner reports the crash

    def why(self) -> str:
        """Its exit status and the last lines of its stderr, for an error message."""
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                code = None
        tail = " | ".join(list(self._stderr)[-3:])
        status = f"exit status {code}" if code is not None else "no exit status"
        return f"{status}{'; ' + tail if tail else ''}"

    def stop(self, timeout: float = 5.0) -> None:
        """Ask it to exit, kill it if it does not within `timeout`."""
        child = self.proc
        if child.poll() is None:
            try:
                if child.stdin is not None:
                    with self._write_lock:
                        child.stdin.write(b'{"op": "exit"}\n')
                        child.stdin.flush()
                child.wait(timeout)
            except (BrokenPipeError, ValueError, OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()

    def _drain_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        for raw in stderr:
            text = raw.decode(errors="replace").strip()
            if text:
                self._stderr.append(text)


def rss_bytes(pid: int) -> int | None:
    """A process's resident memory, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
