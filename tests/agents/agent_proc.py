"""A real agent subprocess for tests, spoken to line by line."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

AGENTS_DIR = Path(__file__).resolve().parents[2] / "agents"


class AgentProc:
    def __init__(
        self, *args: str, isolated: bool = False, env: dict[str, str] | None = None
    ) -> None:
        if isolated:  # no site-packages: no optional package can be imported
            argv = [
                sys.executable,
                "-I",
                "-S",
                "-c",
                f"import sys; sys.path.insert(0, {str(AGENTS_DIR)!r}); import runpy;"
                " runpy.run_module('bitinglip_agent', run_name='__main__')",
                *args,
            ]
        else:
            argv = [sys.executable, "-m", "bitinglip_agent", *args]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.messages.put(json.loads(line))
        self.messages.put(None)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg_type: str, msg_id: str | None = None, **fields: Any) -> None:
        msg = {"v": 1, "type": msg_type, **({"id": msg_id} if msg_id else {}), **fields}
        self.send_raw(json.dumps(msg).encode() + b"\n")

    def next(self, *types: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next message of one of `types` (others, like telemetry, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            if msg is None:
                raise EOFError("the agent closed its stdout")
            if not types or msg["type"] in types:
                return msg

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
