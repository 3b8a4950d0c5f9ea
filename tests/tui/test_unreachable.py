"""Fifty unreachable hosts never delay a keypress: the console's event loop does no I/O.

Half the hosts refuse the connection at once (a closed port); half accept TCP and never send an
SSH banner, so each attempt hangs until the connect timeout. While the control loop keeps
trying them, the app switches views on every key and its event loop is never blocked (its
worst lag, measured with a timer, stays far below one connect timeout).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import parse_profile

HOSTS = 50
LAG_BOUND_S = 0.5  # a bound on being blocked at all (a host times out after 5 s), not a speed


@pytest.fixture
def silent_port() -> Iterator[int]:
    listener = socket.socket()  # accepts TCP, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def unreachable_profile(tmp_path: Path, silent: int) -> Any:
    closed = closed_port()
    hosts = "".join(
        f'[[hosts]]\nname = "h{i:02}"\nkind = "ssh"\naddress = "127.0.0.1"\n'
        f"port = {silent if i % 2 else closed}\n"
        for i in range(HOSTS)
    )
    text = "[controller]\nlease_s = 1.0\n" + hosts
    return parse_profile(text, name="far", path=None, data_dir=tmp_path / "far")


async def test_keys_stay_live_with_fifty_unreachable_hosts(
    console: Any, tmp_path: Path, silent_port: int
) -> None:
    profile = unreachable_profile(tmp_path, silent_port)
    async with console(profile) as c:
        for _ in range(100):
            if c.backend.role == "controller":
                break
            await c.pilot.pause(0.05)
        assert c.backend.role == "controller"  # its dispatcher is connecting to all fifty
        for key, view in [("3", "tasks"), ("1", "hosts"), ("7", "logs"), ("2", "gpus")] * 3:
            await c.pilot.press(key)
            assert view == c.app.current.VIEW
        # The loop's worst lag while fifty hosts are being (re)tried: a 50 ms sleep, 60 times.
        worst = 0.0
        for _ in range(60):
            before = time.monotonic()
            await asyncio.sleep(0.05)
            worst = max(worst, time.monotonic() - before - 0.05)
        assert worst < LAG_BOUND_S
        hosts = await c.backend.call(lambda plane: plane.status()["hosts"])
        assert len(hosts) == HOSTS
