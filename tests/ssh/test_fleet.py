"""The control plane driving agents on real sshd hosts: placement over three hosts, a connection
cut mid-task (nothing failed, nothing run twice), a host going away (only its tasks requeued),
unreachable hosts not slowing the others, and the HF token never in argv or logs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.transport import ssh
from bitinglip.control.transport.remote import RemoteTransport
from bitinglip.errors import SshError
from tests.agents.conftest import INFER_ENV, wait_for
from tests.ssh.conftest import ProfileText
from tests.ssh.sshd import SshdHost

pytestmark = pytest.mark.slow


def trust(*hosts: SshdHost) -> None:
    path = ssh.own_known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for host in hosts:
            f.write(host.known_hosts_line() + "\n")


def fleet_profile(tmp_path: Path, text: str, name: str = "fleet") -> Profile:
    return parse_profile(text, name=name, path=None, data_dir=tmp_path / "data")


def place_model(profile: Profile, model: Path) -> None:
    """The demo model in every SSH host's model dir, as a pull would leave it."""
    for host in profile.hosts:
        assert host.model_dir is not None
        folder = Path(host.model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gemma-3-270m.gguf").symlink_to(model)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Callable[[Profile], Any]:
    """`with running(profile) as (plane, loop)`: a control plane with its loop in a thread."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    from contextlib import contextmanager

    @contextmanager
    def run(profile: Profile) -> Iterator[tuple[ControlPlane, ControlLoop]]:
        with open_control_plane(profile) as plane, plane.embedded() as loop:
            assert loop is not None
            yield plane, loop

    return run


def attached(loop: ControlLoop, names: list[str], timeout: float = 30.0) -> None:
    dispatcher = loop.dispatcher
    assert dispatcher is not None

    def ready() -> bool:
        return all(
            a.session is not None and a.session.ready
            for a in dispatcher.agents
            if a.host.name in names
        )

    wait_for(ready, timeout, f"agents of {names} to say hello")


def short_generate(max_tokens: int = 8) -> TaskSpec:
    payload = {"prompt": "Count: one, two,", "max_tokens": max_tokens, "temperature": 0, "seed": 1}
    return TaskSpec(kind="generate", model="gemma-3-270m", payload=payload)


def started_on_agent(session: Any) -> bool:
    """The agent has the run: it has sent output for it. (A run is in `session.inflight` from
    the moment it is written to the channel, before the agent has read it: a drop then loses
    the request, which the re-attach rightly treats as a lost run.)"""
    return any(run.output for run in list(session.inflight.values()))


def claims(plane: ControlPlane, task_id: int) -> int:
    rows = plane.store.conn.execute(
        "SELECT COUNT(*) FROM task_events WHERE task_id = ? AND to_state = 'running'", (task_id,)
    ).fetchone()
    return int(rows[0])


def model_fleet(
    tmp_path: Path, hosts: list[SshdHost], text: str, model: Path, *, one_slot: bool = False
) -> Profile:
    """A profile of trusted sshd hosts, each with the demo model in its model dir."""
    trust(*hosts)
    if one_slot:
        text = text.replace("[[hosts]]", "[[hosts]]\nmax_concurrency = 1")
    profile = fleet_profile(tmp_path, text)
    place_model(profile, model)
    return profile


def first_session(loop: ControlLoop) -> tuple[Any, RemoteTransport]:
    """The first host's session and its SSH transport."""
    assert loop.dispatcher is not None
    session = loop.dispatcher.agents[0].session
    assert session is not None
    assert isinstance(session.transport, RemoteTransport)
    return session, session.transport


def test_work_spreads_over_three_hosts(
    tmp_path: Path,
    three_hosts: list[SshdHost],
    ssh_profile: ProfileText,
    demo_model: Path,
    running: Callable[[Profile], Any],
) -> None:
    """In rotation (model-blind placement) every host with a free slot takes the next task."""
    rotation = '[serving]\nplacement = "rotation"\n'
    profile = model_fleet(
        tmp_path, three_hosts, ssh_profile(three_hosts, extra=rotation), demo_model, one_slot=True
    )
    with running(profile) as (plane, loop):
        attached(loop, [h.name for h in three_hosts])
        ids = plane.submit_many([short_generate(4) for _ in range(6)])
        done = [plane.wait(i, timeout=120) for i in ids]
    assert [t.state for t in done] == ["succeeded"] * 6
    assert {t.ran_on for t in done} == {"gpu-1", "gpu-2", "gpu-3"}
    assert all(t.attempt == 1 for t in done)


def test_connection_cut_mid_task_neither_fails_nor_reruns(
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    ssh_profile: ProfileText,
    demo_model: Path,
    running: Callable[[Profile], Any],
) -> None:
    host = sshd_factory("gpu-1")
    profile = model_fleet(tmp_path, [host], ssh_profile([host]), demo_model)
    with running(profile) as (plane, loop):
        attached(loop, ["gpu-1"])
        session, transport = first_session(loop)
        task_id = plane.submit(short_generate(48))
        wait_for(lambda: plane.task(task_id).state == "running", 30, "the task to start")
        wait_for(lambda: started_on_agent(session), 60, "the agent to start the run")
        host.cut()  # every live SSH connection drops; sshd still accepts new ones
        wait_for(lambda: transport.attaches >= 2, 30, "the transport to re-attach")
        task = plane.wait(task_id, timeout=120)
        claimed = claims(plane, task_id)
    assert task.state == "succeeded", task.error
    assert task.attempt == 1
    assert claimed == 1
    assert task.result and task.result["text"]


def test_stopping_one_host_requeues_only_its_tasks(
    tmp_path: Path,
    three_hosts: list[SshdHost],
    ssh_profile: ProfileText,
    demo_model: Path,
    running: Callable[[Profile], Any],
) -> None:
    rotation = '[serving]\nplacement = "rotation"\n'  # one task on each host at once
    profile = model_fleet(
        tmp_path, three_hosts, ssh_profile(three_hosts, extra=rotation), demo_model, one_slot=True
    )
    with running(profile) as (plane, loop):
        attached(loop, [h.name for h in three_hosts])
        ids = plane.submit_many([short_generate(32) for _ in range(3)])
        wait_for(
            lambda: all(plane.task(i).state == "running" for i in ids), 60, "three tasks running"
        )
        first_hosts = {i: plane.task(i).ran_on for i in ids}
        victim = next(i for i, h in first_hosts.items() if h == "gpu-2")
        three_hosts[1].stop()
        done = {i: plane.wait(i, timeout=120) for i in ids}
    assert all(t.state == "succeeded" for t in done.values()), [t.error for t in done.values()]
    assert done[victim].attempt == 2 and done[victim].ran_on in {"gpu-1", "gpu-3"}
    assert all(done[i].attempt == 1 for i in ids if i != victim)


def test_unreachable_hosts_do_not_slow_the_others(
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    ssh_profile: ProfileText,
    running: Callable[[Profile], Any],
) -> None:
    good = sshd_factory("gpu-1")
    trust(good)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    silent = socket.socket()  # accepts TCP, never sends an SSH banner
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    extra = "".join(
        f'[[hosts]]\nname = "{name}"\nkind = "ssh"\naddress = "127.0.0.1"\nport = {port}\n'
        'user = "root"\n\n'
        for name, port in (("closed", closed_port), ("silent", silent.getsockname()[1]))
    )
    text = ssh_profile([good]).replace("[[hosts]]", extra + "[[hosts]]", 1)
    profile = fleet_profile(tmp_path, text)
    try:
        with running(profile) as (plane, loop):
            attached(loop, ["gpu-1"])
            started = time.monotonic()
            ids = plane.submit_many([TaskSpec(kind="echo", payload={"n": n}) for n in range(50)])
            done = [plane.wait(i, timeout=10) for i in ids]
            elapsed = time.monotonic() - started
            reasons = {
                a.host.name: getattr(a.session.transport, "last_error", "")
                for a in loop.dispatcher.agents
            }
            wait_for(
                lambda: (
                    "no SSH handshake"
                    in getattr(
                        loop.dispatcher.agents[1].session.transport,
                        "last_error",
                        "",
                    )
                ),
                ssh.CONNECT_TIMEOUT_S + 5,
                "the silent host's timeout",
            )
    finally:
        silent.close()
    assert [t.state for t in done] == ["succeeded"] * 50
    assert {t.ran_on for t in done} == {"gpu-1"}
    assert elapsed < ssh.CONNECT_TIMEOUT_S, "a silent host delayed the others"
    assert "connection refused" in reasons["closed"]


def test_hf_token_reaches_the_agent_but_never_argv_or_logs(
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    ssh_profile: ProfileText,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "hf_TESTtoken" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", token)
    host = sshd_factory("gpu-1")
    trust(host)
    profile = fleet_profile(tmp_path, ssh_profile([host]))
    from bitinglip.control.transport.bootstrap import local_bundle

    lines: list[bytes] = []
    transport = RemoteTransport(profile, profile.hosts[0], local_bundle(profile))
    transport.start(lines.append, lambda _r: None)
    try:
        wait_for(
            lambda: any(b'"configured":["HF_TOKEN"]' in line for line in lines),
            30,
            "the agent to confirm the token",
        )
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        agent_pids = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", "bitinglip-agent.pyz"], capture_output=True, text=True
            ).stdout.split()
        ]
        assert agent_pids
        environ = [Path(f"/proc/{pid}/environ").read_bytes() for pid in agent_pids]
    finally:
        transport.send(b'{"v":1,"type":"shutdown"}\n')
        transport.close()
    assert token not in ps
    assert all(token.encode() not in env for env in environ)
    logs = [*tmp_path.rglob("*.log"), host.log]
    assert logs
    for log in logs:
        assert token not in log.read_text(errors="replace"), log


def test_several_hosts_behind_one_address_stay_apart(
    tmp_path: Path, sshd_factory: Callable[..., SshdHost], ssh_profile: ProfileText
) -> None:
    """Trusting the host on one port trusts nothing on another port of the same address."""
    first, second = sshd_factory("gpu-1"), sshd_factory("gpu-2")
    trust(first)
    profile = fleet_profile(tmp_path, ssh_profile([first, second]))

    async def attempt(index: int) -> str:
        try:
            conn = await ssh.connect(profile.hosts[index])
        except SshError as exc:
            return exc.reason
        conn.close()
        return "ok"

    import asyncio

    assert asyncio.run(attempt(0)) == "ok"
    assert asyncio.run(attempt(1)) == "unknown_host_key"


def test_ssh_config_alias_is_honoured(
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    client_keys: Any,
) -> None:
    """address = a Host alias of ~/.ssh/config: HostName, Port, User and IdentityFile from it."""
    host = sshd_factory("gpu-1")
    trust(host)
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "config").write_text(
        f"Host lab-box\n  HostName 127.0.0.1\n  Port {host.port}\n  User root\n"
        f"  IdentityFile {client_keys.key}\n"
    )
    text = '[[hosts]]\nname = "gpu-1"\nkind = "ssh"\naddress = "lab-box"\n'
    profile = fleet_profile(tmp_path, text)

    async def whoami() -> bytes:
        conn = await ssh.connect(profile.hosts[0])
        try:
            return (await ssh.run(conn, ["id", "-un"])).stdout
        finally:
            conn.close()

    import asyncio

    assert asyncio.run(whoami()).strip() == b"root"


def test_a_result_produced_while_the_host_was_away_arrives_after_reconnect(
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    ssh_profile: ProfileText,
    demo_model: Path,
    running: Callable[[Profile], Any],
) -> None:
    """sshd gone (every connection dropped) while the agent finishes the task; sshd back: the
    agent sends the result it kept, and the task succeeds once, on its first attempt."""
    host = sshd_factory("gpu-1")
    text = ssh_profile([host]).replace("lease_ttl_s = 2.0", "lease_ttl_s = 30.0")
    profile = model_fleet(tmp_path, [host], text, demo_model)
    with running(profile) as (plane, loop):
        attached(loop, ["gpu-1"])
        session, transport = first_session(loop)
        task_id = plane.submit(short_generate(24))
        wait_for(lambda: started_on_agent(session), 60, "the agent to start the run")
        host.stop()
        time.sleep(4.0)  # the agent finishes meanwhile (24 tokens) and keeps the result
        assert plane.task(task_id).state == "running"
        host.start()
        task = plane.wait(task_id, timeout=60)
        claimed = claims(plane, task_id)
    assert task.state == "succeeded", task.error
    assert (task.attempt, claimed) == (1, 1)
    assert transport.attaches >= 2
