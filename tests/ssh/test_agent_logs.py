"""An SSH host's own agent log, read over SSH (`bitinglip.control.fleet.logs`), and shown by
the console's Logs view with a `host:NAME` filter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bitinglip.control.fleet import logs as agent_logs
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.errors import InputError, SshError
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.test_fleet import attached, fleet_profile, running, trust
from tests.tui.conftest import console

__all__ = ["console", "running"]  # fixtures used here

pytestmark = pytest.mark.slow


def test_the_tail_of_a_running_agent_log(
    sshd_factory: SshdFactory, ssh_profile: ProfileText, tmp_path: Path, running: Any
) -> None:
    host = sshd_factory("gpu-1")
    trust(host)
    profile = fleet_profile(tmp_path, ssh_profile([host]))
    with running(profile) as (plane, loop):
        attached(loop, ["gpu-1"])
        task = plane.wait(plane.submit(TaskSpec(kind="echo", payload={"n": 1}, host="gpu-1")), 30)
        assert task.state == "succeeded"
        lines = asyncio.run(agent_logs.tail(profile, "gpu-1"))
    assert any("bitinglip_agent: daemon started" in line for line in lines)
    assert any("a control plane attached" in line for line in lines)


def test_a_local_or_unknown_host_has_no_remote_log(
    sshd_factory: SshdFactory, ssh_profile: ProfileText, tmp_path: Path, make_profile: Any
) -> None:
    with pytest.raises(InputError, match="unknown host 'nope'"):
        asyncio.run(agent_logs.tail(make_profile(), "nope"))
    with pytest.raises(InputError, match="host local is local"):
        asyncio.run(agent_logs.tail(make_profile(), "local"))
    host = sshd_factory("gpu-1")  # not trusted: refused, one line
    profile = fleet_profile(tmp_path, ssh_profile([host]))
    with pytest.raises(SshError, match=r"SHA256:|fingerprint"):
        asyncio.run(agent_logs.tail(profile, "gpu-1"))


async def test_the_logs_view_shows_an_ssh_hosts_agent_log(
    sshd_factory: SshdFactory, ssh_profile: ProfileText, tmp_path: Path, console: Any
) -> None:
    host = sshd_factory("gpu-1")
    trust(host)
    profile = fleet_profile(tmp_path, ssh_profile([host]))
    async with console(profile, start="logs") as c:
        await c.backend.call(
            lambda plane: plane.wait(plane.submit(TaskSpec(kind="echo", host="gpu-1")), 30)
        )
        c.app.current.set_filter("host:gpu-1")
        for _ in range(200):
            await c.pilot.pause(0.05)
            lines = c.app.query_one("#logs-text").lines
            if any("daemon started" in line for line in lines):
                break
        assert any("── agent log on gpu-1" in line for line in lines)
        assert any("a control plane attached" in line for line in lines)
