"""The sshd test hosts are real: keys, host key checking, and each fault they inject."""

from __future__ import annotations

import asyncio
import subprocess
import tomllib
from pathlib import Path

import asyncssh
import pytest

from bitinglip.config import parse_profile
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.sshd import ClientKeys, SshdHost

DROP_WITHIN_S = 5.0


async def connect(
    host: SshdHost, key: Path, known_hosts_line: str | None = None
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        host.port,
        username="root",
        client_keys=[str(key)],
        known_hosts=asyncssh.import_known_hosts(known_hosts_line or host.known_hosts_line()),
        agent_path=None,
        config=[],
        connect_timeout=5,
    )


async def echo(host: SshdHost, keys: ClientKeys) -> str:
    async with await connect(host, keys.key) as conn:
        result = await conn.run("echo hi", check=True, timeout=5)
    return str(result.stdout)


async def dropped(conn: asyncssh.SSHClientConnection) -> None:
    await asyncio.wait_for(conn.wait_closed(), DROP_WITHIN_S)


async def test_the_client_key_runs_a_command(
    sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    assert await echo(host, client_keys) == "hi\n"
    assert "Accepted publickey for root" in host.log.read_text()


async def test_an_unauthorized_key_is_refused(
    sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(host, client_keys.wrong_key)


def test_the_fingerprint_is_the_one_openssh_prints(sshd_factory: SshdFactory) -> None:
    host = sshd_factory("gpu-1")
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(host.dir / "hk.pub")], check=True, capture_output=True, text=True
    )
    assert listed.stdout.split()[1] == host.fingerprint
    assert host.known_hosts_line() == f"[127.0.0.1]:{host.port} {host.host_pub}"


async def test_stop_drops_live_connections_and_start_comes_back_on_the_same_port(
    sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    port = host.port
    conn = await connect(host, client_keys.key)
    process = await conn.create_process("cat")  # exits when its stdin closes
    host.stop()
    await dropped(conn)
    assert process.exit_status is None  # the link dropped; no exit status came back
    assert host.pid is None and host.sessions() == []
    with pytest.raises(OSError):
        await connect(host, client_keys.key)
    host.start()
    assert host.port == port
    assert await echo(host, client_keys) == "hi\n"


async def test_cut_drops_live_connections_and_new_ones_work(
    sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    listener = host.pid
    first, second = [await connect(host, client_keys.key) for _ in range(2)]
    assert len(host.sessions()) >= 2
    host.cut()
    await asyncio.gather(dropped(first), dropped(second))
    assert host.pid == listener
    assert await echo(host, client_keys) == "hi\n"


async def test_a_daemonized_session_process_survives_stop(
    sshd_factory: SshdFactory, client_keys: ClientKeys, tmp_path: Path
) -> None:
    host = sshd_factory("gpu-1")
    pidfile = tmp_path / "daemon.pid"
    daemon = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' </dev/null >/dev/null 2>&1 &"
    async with await connect(host, client_keys.key) as conn:
        await conn.run(daemon, check=True, timeout=5)
        for _ in range(500):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.01)
        pid = int(pidfile.read_text())
        host.stop()
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in "RS"  # alive: not killed, not a zombie
    finally:
        subprocess.run(["kill", str(pid)], check=False)


async def test_rekey_changes_the_host_key(
    sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    old_line, old_fingerprint = host.known_hosts_line(), host.fingerprint
    host.rekey()
    assert host.fingerprint != old_fingerprint
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(host, client_keys.key, old_line)
    assert await echo(host, client_keys) == "hi\n"


async def test_three_hosts_listen_at_once(
    three_hosts: list[SshdHost], client_keys: ClientKeys
) -> None:
    assert len({host.port for host in three_hosts}) == 3
    assert len({host.fingerprint for host in three_hosts}) == 3
    outputs = await asyncio.gather(*(echo(host, client_keys) for host in three_hosts))
    assert outputs == ["hi\n"] * 3


def test_extra_config_overrides_a_default(sshd_factory: SshdFactory) -> None:
    host = sshd_factory("gpu-1", extra_config={"allowstreamlocalforwarding": "no"})
    config = (host.dir / "sshd_config").read_text()
    assert "allowstreamlocalforwarding no" in config
    with pytest.raises(ValueError, match="Port"):
        sshd_factory("gpu-2", extra_config={"Port": "22"})


def test_the_profile_text_loads(
    three_hosts: list[SshdHost], ssh_profile: ProfileText, client_keys: ClientKeys, tmp_path: Path
) -> None:
    text = ssh_profile(three_hosts, extra='durability = "full"\n')
    profile = parse_profile(text, name="ssh", path=None, data_dir=tmp_path / "data")
    assert profile.durability == "full"
    assert [(h.name, h.port, h.identity_file) for h in profile.hosts] == [
        (h.name, h.port, client_keys.key) for h in three_hosts
    ]
    assert profile.hosts[0].workdir == str(tmp_path / "remote" / "gpu-1")
    assert tomllib.loads(text)["hosts"][2]["model_dir"] == str(tmp_path / "remote/gpu-3/models")
