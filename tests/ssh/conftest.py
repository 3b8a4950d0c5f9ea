"""SSH fixtures: real OpenSSH servers on 127.0.0.1 (see sshd.py) and a client isolated from ~/.ssh.

`sshd_factory(name, **kw)` starts a host (keywords as `start_sshd`); every host it started is
stopped at teardown, whether the test passed or not. HOME points into a temp folder and no
ssh-agent is reachable, so nothing here reads the user's ~/.ssh or keys.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.cli.conftest import Cli, Proc, hermetic_env
from tests.ssh.sshd import ClientKeys, SshdHost, make_client_keys, ssh_profile_text, start_sshd

SshdFactory = Callable[..., SshdHost]
ProfileText = Callable[..., str]


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    return make_client_keys(tmp_path_factory.mktemp("ssh-client"))


@pytest.fixture(autouse=True)
def _isolated_ssh_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.ssh (config, known_hosts, keys) and no ssh-agent of the user's."""
    home = tmp_path / "ssh-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(autouse=True)
def _no_agent_left(tmp_path: Path) -> Iterator[None]:
    """Agents the test's hosts started (daemons, detached from sshd) end with the test."""
    yield
    for pattern in (f"--socket {tmp_path}/", f"--model {tmp_path}/"):  # daemons, their children
        subprocess.run(["pkill", "-KILL", "-f", "--", pattern], check=False)


@pytest.fixture
def sshd_factory(tmp_path: Path, client_keys: ClientKeys) -> Iterator[SshdFactory]:
    started: list[SshdHost] = []

    def start(name: str, **kw: Any) -> SshdHost:
        host = start_sshd(tmp_path / "sshd", name, client_keys, **kw)
        started.append(host)
        return host

    yield start
    with ExitStack() as stack:  # stops every host even if stopping one of them fails
        for host in started:
            stack.callback(host.stop)


@pytest.fixture
def three_hosts(sshd_factory: SshdFactory) -> list[SshdHost]:
    return [sshd_factory(f"gpu-{index}") for index in (1, 2, 3)]


@pytest.fixture
def ssh_profile(client_keys: ClientKeys, tmp_path: Path) -> ProfileText:
    """`ssh_profile(hosts, extra="")`: `ssh_profile_text` with workdirs under tmp_path/remote."""

    def text(hosts: list[SshdHost], **kw: Any) -> str:
        return ssh_profile_text(hosts, client_keys, workdir_root=tmp_path / "remote", **kw)

    return text


# The CLI, in process and as a subprocess, hermetic as in tests/cli.


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI in process, hermetic as in tests/cli (HOME, XDG folders, cwd under tmp_path)."""
    for key in [k for k in os.environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    for key, value in hermetic_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return Cli(CliRunner(), data_dir, tmp_path)


@pytest.fixture
def proc(tmp_path: Path, data_dir: Path) -> Proc:
    return Proc(data_dir, tmp_path, hermetic_env(tmp_path))
