"""Nothing the operator or a task supplies is ever pasted into a remote shell: argv words, paths,
user names, model ids and prompts reach the host exactly, and a canary file never appears."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitinglip.config import parse_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.transport import bootstrap, ssh
from bitinglip.errors import ConfigError, SshError
from tests.ssh.conftest import ProfileText
from tests.ssh.sshd import SshdHost

ECHO_ARGV = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"


def nasty(canary: Path) -> list[str]:
    """Shell metacharacters aimed at the canary, and text a shell would split or mangle."""
    return [
        f"; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"a\ntouch {canary}",
        f"' ; touch {canary}; '",
        f'" ; touch {canary}; "',
        f"&& touch {canary} ||",
        f"| touch {canary}",
        "; rm -rf ~",
        "two words  and\ttabs",
        "ünïcödé ✓ 日本語",
        "*",
        "~",
        "$HOME",
        "-rf",
        "",
    ]


# Any text an argv word can hold: no NUL, no lone surrogates.
WORD = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)


@pytest.fixture
def connection(
    sshd_factory: Callable[..., SshdHost], ssh_profile: ProfileText, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Any, SshdHost]]:
    host = sshd_factory("gpu-1")
    trusted = ssh.own_known_hosts()
    trusted.parent.mkdir(parents=True, exist_ok=True)
    trusted.write_text(host.known_hosts_line() + "\n")
    profile = parse_profile(ssh_profile([host]), name="t", path=None, data_dir=tmp_path / "d")
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(ssh.connect(profile.hosts[0]))
    yield loop, conn, host
    conn.close()
    loop.close()


def remote_argv(loop: asyncio.AbstractEventLoop, conn: Any, words: list[str]) -> list[str]:
    done = loop.run_until_complete(ssh.run(conn, [sys.executable, "-c", ECHO_ARGV, *words]))
    assert done.status == 0, done.stderr
    return list(json.loads(done.stdout))


def test_argv_words_arrive_exactly(
    connection: tuple[asyncio.AbstractEventLoop, Any, SshdHost], tmp_path: Path
) -> None:
    loop, conn, _ = connection
    canary = tmp_path / "CANARY"
    words = nasty(canary)
    assert remote_argv(loop, conn, words) == words
    assert not canary.exists()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(words=st.lists(WORD, max_size=6))
def test_any_argv_arrives_exactly(
    connection: tuple[asyncio.AbstractEventLoop, Any, SshdHost], words: list[str]
) -> None:
    loop, conn, _ = connection
    assert remote_argv(loop, conn, words) == words


def test_workdir_and_model_dir_with_metacharacters(
    sshd_factory: Callable[..., SshdHost], ssh_profile: ProfileText, tmp_path: Path
) -> None:
    """A workdir full of shell syntax is a folder name: the agent installs and runs there."""
    host = sshd_factory("gpu-1")
    ssh.own_known_hosts().parent.mkdir(parents=True, exist_ok=True)
    ssh.own_known_hosts().write_text(host.known_hosts_line() + "\n")
    short = Path(tempfile.mkdtemp(prefix="bl"))  # a Unix socket path must fit in 107 bytes
    canary = short / "C"
    odd = short / f"w $(touch {canary}) `id`;x"
    text = ssh_profile([host])
    text = text.replace(json.dumps(str(tmp_path / "remote" / "gpu-1")), json.dumps(str(odd)), 1)
    profile = parse_profile(text, name="t", path=None, data_dir=tmp_path / "d")
    payloads = [{"prompt": word, "model_id": word} for word in nasty(canary)]
    with open_control_plane(profile) as plane, plane.embedded():
        ids = plane.submit_many([TaskSpec(kind="echo", payload=p) for p in payloads])
        done = [plane.wait(i, timeout=60) for i in ids]
    assert [t.result for t in done] == payloads
    assert list(odd.glob("agent/*/bitinglip-agent.pyz"))
    assert not canary.exists()
    subprocess.run(["pkill", "-KILL", "-f", "--", f"--socket {odd}/"], check=False)
    shutil.rmtree(short)


def test_user_names_are_never_a_shell(
    connection: tuple[asyncio.AbstractEventLoop, Any, SshdHost], tmp_path: Path
) -> None:
    """A user name is sent in the SSH protocol, not a command: refused, nothing run."""
    _, _, host = connection
    canary = tmp_path / "CANARY"
    for user in (f"root; touch {canary}", f"$(touch {canary})"):
        text = (
            f'[[hosts]]\nname = "h"\nkind = "ssh"\naddress = "127.0.0.1"\nport = {host.port}\n'
            f"user = {json.dumps(user)}\n"
        )
        profile = parse_profile(text, name="t", path=None, data_dir=tmp_path / "d")
        with pytest.raises(SshError) as refused:
            asyncio.run(ssh.connect(profile.hosts[0]))
        assert refused.value.reason in {"auth", "no_key"}
    assert not canary.exists()


@pytest.mark.parametrize("name", ["-oProxyCommand=x", "a;b", "$(id)", "a b", "a\nb", "`id`"])
def test_host_names_with_shell_syntax_are_refused_at_load(name: str, tmp_path: Path) -> None:
    text = f'[[hosts]]\nname = {json.dumps(name)}\nkind = "ssh"\naddress = "127.0.0.1"\n'
    with pytest.raises(ConfigError, match="not a valid host name"):
        parse_profile(text, name="t", path=None, data_dir=tmp_path)


def test_agent_argv_is_a_list_of_words() -> None:
    """The daemon's command line quotes every word (a socket path with a space stays one)."""
    probe = bootstrap.Probe(
        python=(3, 11, 0),
        executable="/usr/bin/python3",
        workdir="/w d",
        agent="/w d/agent/x/bitinglip-agent.pyz",
        agent_ok=True,
        venv_python=None,
        model_dir="/w d/models",
        nvidia_smi=None,
        time=0.0,
    )
    host = parse_profile(
        '[[hosts]]\nname = "h"\nkind = "ssh"\naddress = "a"\n', name="t", path=None
    ).hosts[0]
    line = ssh.command_line(bootstrap.agent_argv(probe, "/w d/run/s.sock", host))
    assert "'/w d/agent/x/bitinglip-agent.pyz'" in line and "'/w d/run/s.sock'" in line
