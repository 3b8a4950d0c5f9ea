"""The daemon agent's replay ring (the results it keeps for the next attachment): bounded in
bytes, and rid of the results the control plane has acknowledged by no longer waiting for them.

A real daemon (`python -m bitinglip_agent --daemon`), spoken to over its Unix socket as the SSH
channel does: the first line is a `ping` listing the runs still awaited.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bitinglip_agent import protocol

MIB = 1 << 20
RUNS = 200
# Unbounded, the ring keeps all 200 results of 1 MiB (over 200 MiB); capped at 64 MiB, it stays
# well under this above the daemon's size before the runs.
GROWTH_BOUND = 150 * MIB


class Daemon:
    def __init__(self, folder: Path) -> None:
        self.socket = str(folder / "run" / "agent.sock")
        done = subprocess.run(
            [
                sys.executable, "-m", "bitinglip_agent", "--daemon", "--socket", self.socket,
                "--telemetry-interval", "0", "--detached-exit-s", "120",
            ],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        self.pid = int(json.loads(done.stdout.splitlines()[-1])["pid"])

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def attach(self, runs: list[str] | None) -> Attachment:
        return Attachment(self.socket, runs)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Attachment:
    """One connection: sends the `ping`, collects what comes before `hello` (the replay)."""

    def __init__(self, path: str, runs: list[str] | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        fields: dict[str, Any] = {} if runs is None else {"runs": runs}
        self.send(protocol.encode("ping", "attach", **fields))
        self.replayed: list[dict[str, Any]] = []
        while (msg := self.next())["type"] != "hello":
            self.replayed.append(msg)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "the daemon closed the connection"
        msg: dict[str, Any] = json.loads(line)
        return msg

    def results(self, count: int) -> set[str]:
        """The ids of the next `count` results (parts joined), other messages skipped."""
        parts = protocol.Parts()
        done: set[str] = set()
        while len(done) < count:
            msg = self.next()
            if msg["type"] == "result_part":
                msg = parts.add(msg) or {"type": "part"}
            if msg["type"] == "result":
                done.add(msg["id"])
        return done

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    started = Daemon(tmp_path)
    yield started
    started.stop()


def _echo(run_id: str, payload: object) -> bytes:
    return protocol.encode("run", run_id, task={"id": 1, "kind": "echo", "payload": payload})


def test_many_big_results_keep_the_daemon_small(daemon: Daemon) -> None:
    conn = daemon.attach([])
    base = daemon.rss()
    payload = "r" * MIB
    ids = [f"{n}.1" for n in range(RUNS)]

    def write() -> None:
        for run_id in ids:
            conn.send(_echo(run_id, payload))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert conn.results(RUNS) == set(ids)
    writer.join(30)
    grown = daemon.rss() - base
    conn.close()
    assert grown < GROWTH_BOUND, f"the daemon grew by {grown / MIB:.0f} MiB over {RUNS} results"


def test_results_the_control_plane_has_are_not_sent_again(daemon: Daemon) -> None:
    first = daemon.attach([])
    first.send(_echo("1.1", "one") + _echo("2.1", "two"))
    assert first.results(2) == {"1.1", "2.1"}
    first.close()
    # Re-attached, it still waits for run 2 only: run 1's result is acknowledged.
    second = daemon.attach(["2.1"])
    assert [(m["type"], m["id"]) for m in second.replayed] == [("result", "2.1")]
    second.close()
    # Now it waits for neither; an attachment that names no runs gets every result kept:
    # there is none left.
    third = daemon.attach([])
    third.close()
    fourth = daemon.attach(None)
    assert [m for m in fourth.replayed if m["type"] == "result"] == []
    fourth.close()
