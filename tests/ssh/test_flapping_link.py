"""A flapping link does not burn attempts: a run written to the SSH connection that drops before
the agent read it is sent again on re-attach (same run id, same lease, same attempt).

The cut is made by a real TCP proxy between the control plane and a real sshd. Armed, it drops
the next chunk the client sends that is at least PAYLOAD_BYTES long, and closes both sides:
those bytes were written by the control plane but never reach sshd, so the agent never reads
the run they carry. The test arms it while the connection is idle and then submits one echo task
with a payload of that size: only its `run` is that big (the client's other traffic, keepalive
replies and window adjustments, is tens of bytes and passes).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitinglip.config import parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.transport import ssh
from tests.agents.conftest import wait_for
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.sshd import ADDRESS, SshdHost

pytestmark = pytest.mark.slow

CUTS = 20
PAYLOAD_BYTES = 4096  # the `run` line is bigger than this; a keepalive is well under 100 bytes


class CuttingProxy:
    """127.0.0.1:`port` -> sshd; `arm()`: the next big client chunk is the last of that link."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server((ADDRESS, 0))
        self.port = int(self.listener.getsockname()[1])
        self.dropped: list[int] = []  # sizes of the client chunks that never reached sshd
        self._armed = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self._armed.set()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._open:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((ADDRESS, self.target))
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if from_client and len(data) >= PAYLOAD_BYTES and self._cut(len(data)):
                _close(src)
                _close(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _cut(self, size: int) -> bool:
        with self._lock:
            if not self._armed.is_set():
                return False
            self._armed.clear()
            self.dropped.append(size)
            return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxied(sshd_factory: SshdFactory) -> Iterator[tuple[SshdHost, CuttingProxy]]:
    host = sshd_factory("gpu-1")
    proxy = CuttingProxy(host.port)
    yield host, proxy
    proxy.close()


def _ready(plane: ControlPlane) -> bool:
    loop = plane.loop
    agents = [] if loop is None or loop.dispatcher is None else loop.dispatcher.agents
    return bool(agents) and all(a.session is not None and a.session.ready for a in agents)


def test_runs_cut_off_before_the_agent_read_them_succeed_on_attempt_1(
    tmp_path: Path, proxied: tuple[SshdHost, CuttingProxy], ssh_profile: ProfileText
) -> None:
    host, proxy = proxied
    text = ssh_profile([host]).replace(f"port = {host.port}\n", f"port = {proxy.port}\n")
    known = ssh.own_known_hosts()
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"[{ADDRESS}]:{proxy.port} {host.host_pub}\n")
    profile = parse_profile(text, name="flapping", path=None, data_dir=tmp_path / "data")
    payload = "p" * PAYLOAD_BYTES
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None
        tasks = []
        for n in range(CUTS):
            wait_for(lambda: _ready(plane), 60, "the agent to be attached")
            proxy.arm()
            task_id = plane.submit(TaskSpec(kind="echo", payload={"n": n, "pad": payload}))
            tasks.append(plane.wait(task_id, timeout=60))
            assert len(proxy.dropped) == n + 1, "the run went through: the proxy did not cut"
        runs = {
            t.id: plane.store.conn.execute(
                "SELECT COUNT(*) FROM task_events WHERE task_id = ? AND to_state = 'running'",
                (t.id,),
            ).fetchone()[0]
            for t in tasks
        }
    assert [(t.state, t.attempt) for t in tasks] == [("succeeded", 1)] * CUTS, [
        (t.id, t.state, t.attempt, t.error_kind, t.error) for t in tasks
    ]
    assert [t.result for t in tasks] == [{"n": n, "pad": payload} for n in range(CUTS)]
    assert set(runs.values()) == {1}  # claimed once each: sent again, not retried
