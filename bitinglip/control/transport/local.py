"""The local transport: the agent as a subprocess of this machine, JSON lines over its pipes."""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

LineHandler = Callable[[bytes], None]
CloseHandler = Callable[[str], None]


class LocalTransport:
    """Runs `python -m bitinglip_agent` here. `on_line` and `on_close` are called from a
    reader thread; `send` may be called from any thread."""

    def __init__(
        self, name: str, agent_args: Sequence[str] = (), python: str | None = None
    ) -> None:
        self.name = name
        self.argv = [python or sys.executable, "-m", "bitinglip_agent", *agent_args]
        self._proc: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(
        self,
        on_line: LineHandler,
        on_close: CloseHandler,
        on_detach: CloseHandler | None = None,  # a pipe never re-attaches: unused
        in_flight: Callable[[], list[str]] | None = None,  # likewise
    ) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not the agent
        )
        threading.Thread(
            target=self._read, args=(on_line, on_close), daemon=True, name=f"agent-out:{self.name}"
        ).start()
        threading.Thread(
            target=self._drain_stderr, daemon=True, name=f"agent-err:{self.name}"
        ).start()
        token = os.environ.get("HF_TOKEN")
        if token:  # as over SSH: secrets reach the agent as a message, kept in its memory
            from bitinglip_agent import protocol

            self.send(protocol.encode("configure", "configure", secrets={"HF_TOKEN": token}))

    def send(self, data: bytes) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        with self._send_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False  # it died; the reader sees EOF and reports why
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Close its stdin (the agent exits at EOF), then wait, then kill."""
        proc = self._proc
        if proc is None:
            return
        with self._send_lock:
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    log.debug("agent %s: stdin already gone", self.name)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _read(self, on_line: LineHandler, on_close: CloseHandler) -> None:
        from bitinglip_agent.protocol import read_line

        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while (line := read_line(proc.stdout)) is not None:
            on_line(line)
        code = proc.wait()
        tail = " | ".join(list(self._stderr)[-3:])
        on_close(f"agent process exited with status {code}{'; ' + tail if tail else ''}")

    def _drain_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for raw in proc.stderr:
            text = raw.decode(errors="replace").rstrip()
            if text:
                self._stderr.append(text)
                log.info("agent %s: %s", self.name, text)
