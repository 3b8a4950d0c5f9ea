"""A hostile agent on a real sshd host: something listening on the agent's socket path (the
controller's start finds it running and attaches to it) that writes a 100 MB line with no
newline. The SSH loop serves every host, so the other host keeps completing tasks and holding
its leases meanwhile; the controller's memory stays bounded; the over-long line is reported."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bitinglip.config import Profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.queue.views import Task
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.transport import bootstrap
from tests.agents.conftest import INFER_ENV, wait_for
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.test_fleet import attached, claims, model_fleet, short_generate

pytestmark = pytest.mark.slow

LINE_BYTES = 100 * 1024 * 1024
RSS_BOUND = 100 * 1024 * 1024  # the old buffer held the whole line, and copied it per packet
TASK_BOUND_S = 20.0  # an echo task through the good host, on a loaded machine
FLOOD_BOUND_S = 240.0  # the whole line through SSH (seconds; the old buffer took far longer)

# Listens on the agent's socket; every connection waits for "go" on stdin, then gets one
# LINE_BYTES line without its newline ("sent" on stdout when it was all taken), then silence.
HOSTILE = r"""
import os, socket, sys, threading, time
path, size = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.dirname(path), exist_ok=True)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(8)
go = threading.Event()
def flood(conn):
    go.wait()
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(size // len(chunk)):
            conn.sendall(chunk)
    except OSError:
        return  # the start's liveness check, which connects and hangs up
    print("sent", flush=True)
    time.sleep(600)
def serve():
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=flood, args=(conn,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
print("listening", flush=True)
sys.stdin.readline()
go.set()
time.sleep(600)
"""


def overlong(message: str) -> bool:
    """The scheduler's warning of a protocol error from the bad host about a line's length."""
    return message.startswith("agent bad:") and "line" in message


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class RssPeak:
    """The highest VmRSS of this process (the controller) while it runs."""

    def __init__(self) -> None:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@contextmanager
def hostile_agent(profile: Profile) -> Iterator[subprocess.Popen[str]]:
    """The fake agent on the first host's socket path, where the controller will look."""
    host = profile.hosts[0]
    assert host.workdir is not None
    bundle = bootstrap.local_bundle(profile)
    path = f"{host.workdir}/run/{bundle.sha256[:12]}-{bootstrap.fleet_id(profile)}.sock"
    fake = subprocess.Popen(
        [sys.executable, "-c", HOSTILE, path, str(LINE_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None and fake.stdout.readline() == "listening\n"
        yield fake
    finally:
        fake.kill()
        fake.wait()


def said_sent(fake: subprocess.Popen[str]) -> threading.Event:
    """Set once the fake agent has written its whole line into the channel."""
    sent = threading.Event()

    def read() -> None:
        if fake.stdout is not None and fake.stdout.readline() == "sent\n":
            sent.set()

    threading.Thread(target=read, daemon=True).start()
    return sent


@contextmanager
def control(profile: Profile) -> Iterator[tuple[ControlPlane, ControlLoop]]:
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None
        yield plane, loop


def test_a_100mb_line_neither_stalls_the_other_host_nor_grows_memory(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    demo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="bitinglip.control.runtime.dispatcher")
    hosts = [sshd_factory("bad"), sshd_factory("good")]
    profile = model_fleet(tmp_path, hosts, ssh_profile(hosts), demo_model)
    with hostile_agent(profile) as fake, control(profile) as (plane, loop):
        attached(loop, ["good"])
        assert loop.dispatcher is not None
        bad = loop.dispatcher.agents[0]
        wait_for(
            lambda: bad.session is not None and getattr(bad.session.transport, "attached", False),
            60,
            "the controller to attach to the hostile agent",
        )
        long_run = plane.submit(short_generate(64))  # holds its lease through the flood
        wait_for(lambda: plane.task(long_run).state == "running", 60, "the generate to start")
        peak = RssPeak()
        assert fake.stdin is not None
        fake.stdin.write("go\n")
        fake.stdin.flush()
        sent = said_sent(fake)
        echoes: list[Task] = []
        flood_until = time.monotonic() + FLOOD_BOUND_S
        while not sent.is_set() or len(echoes) < 10:  # a trickle of work for the good host
            task = plane.wait(plane.submit(TaskSpec(kind="echo", payload={"n": 1})), TASK_BOUND_S)
            echoes.append(task)
            assert task.state == "succeeded", f"the good host stalled: echo {task.state}"
            assert time.monotonic() < flood_until, "the hostile agent never got its line through"
            time.sleep(0.02)
        wait_for(
            lambda: any(overlong(r.getMessage()) for r in caplog.records),
            30,
            "the over-long line to be reported",
        )
        grown = peak.stop() - peak.start
        generate = plane.wait(long_run, timeout=120)
        claimed = claims(plane, long_run)
    assert all(t.ran_on == "good" and t.attempt == 1 for t in echoes)
    assert generate.state == "succeeded" and generate.attempt == 1 and claimed == 1
    assert grown < RSS_BOUND, f"the controller grew by {grown >> 20} MiB"
