"""The agent's `pull`: one file from a (fake, local) Hugging Face hub into the model dir,
verified, through faults, kills, cancels and limits. A real agent subprocess, a real HTTP hub."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.agents.agent_proc import AgentProc
from tests.hub.conftest import hub  # noqa: F401 - the fixture
from tests.hub.server import Hub

REPO = "org/model-GGUF"
NAME = "model-Q4_K_M.gguf"
SIZE = 3 * 1024 * 1024
MIB = 1024 * 1024


class Agent(AgentProc):
    """An agent on `model_dir` that keeps every line it wrote, sorted by run id on demand."""

    def __init__(self, model_dir: Path, preexec: Callable[[], None] | None = None) -> None:
        argv = [sys.executable, "-m", "bitinglip_agent", "--model-dir", str(model_dir)]
        self.proc = subprocess.Popen(
            [*argv, "--telemetry-interval", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "no_proxy": "*", "PYTHONDONTWRITEBYTECODE": "1"},
            preexec_fn=preexec,  # the only way to limit the child alone (RLIMIT_FSIZE)
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lines: list[bytes] = []
        self.progress: dict[str, list[dict[str, Any]]] = {}
        self._early: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.messages.put(json.loads(line))
        self.messages.put(None)

    def pull(self, run_id: str, file: dict[str, Any], dest: str, **options: Any) -> None:
        self.send("pull", run_id, file=file, dest=dest, **options)

    def outcome(self, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The `result` or `error` for `run_id`; progress events are kept in `progress`."""
        deadline = time.monotonic() + timeout
        while run_id not in self._early:
            msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            if msg is None:
                raise EOFError("the agent closed its stdout")
            if msg["type"] == "event" and msg["kind"] == "progress":
                self.progress.setdefault(msg["id"], []).append(msg["data"])
            elif msg["type"] in ("result", "error"):
                self._early[msg["id"]] = msg
        return self._early.pop(run_id)

    def first_progress(self, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.progress.get(run_id):
            msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            assert msg is not None, "the agent closed its stdout"
            if msg["type"] == "event" and msg["kind"] == "progress":
                self.progress.setdefault(msg["id"], []).append(msg["data"])
            elif msg["type"] in ("result", "error"):
                self._early[msg["id"]] = msg
        return self.progress[run_id][0]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class Remote:
    """One file on the hub, and what a pull message says about it."""

    hub: Hub
    repo: str
    commit: str
    name: str
    data: bytes

    def file(self, **override: Any) -> dict[str, Any]:
        return {
            "url": f"{self.hub.url}/{self.repo}/resolve/{self.commit}/{quote(self.name)}",
            "repo": self.repo,
            "commit": self.commit,
            "name": self.name,
            "size": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            **override,
        }

    def gets(self) -> list[str | None]:
        """The Range header of each GET of the file so far."""
        return self.hub.ranges(self.repo, self.name)

    def fault(self, kind: str | None, **options: Any) -> None:
        self.hub.fault(self.repo, self.name, kind, **options)


def _data(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def remote(hub: Hub) -> Remote:  # noqa: F811 - the imported fixture
    data = _data(1)
    commit = hub.add_repo(REPO, {NAME: data})
    return Remote(hub, REPO, commit, NAME, data)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def agent(models: Path) -> Iterator[Agent]:
    proc = Agent(models)
    yield proc
    proc.close()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob("*.partial"))


def wait_for_size(path: Path, size: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size < size:
        assert time.monotonic() < deadline, f"{path} did not reach {size} bytes"
        time.sleep(0.01)


def assert_pulled(reply: dict[str, Any], models: Path, dest: str, data: bytes) -> None:
    assert reply["type"] == "result", reply
    result = reply["result"]
    final = models / dest
    assert result["path"] == str(final.resolve())
    assert (result["size"], result["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert final.read_bytes() == data
    assert partials(models) == []


# -- the happy paths -----------------------------------------------------------------------


def test_pull_writes_the_verified_file_and_a_second_pull_finds_it(
    agent: Agent, remote: Remote, models: Path
) -> None:
    assert "pull" in agent.next("hello")["kinds"]
    agent.pull("p1", remote.file(), f"gguf/{NAME}")
    reply = agent.outcome("p1")
    assert_pulled(reply, models, f"gguf/{NAME}", remote.data)
    assert (reply["result"]["resumed_from"], reply["result"]["already"]) == (0, False)
    final_progress = agent.progress["p1"][-1]
    assert (final_progress["bytes"], final_progress["total"]) == (SIZE, SIZE)
    assert final_progress["bytes_per_s"] > 0 and final_progress["eta_s"] == 0
    assert remote.gets() == [None]

    agent.pull("p2", remote.file(), f"gguf/{NAME}")
    again = agent.outcome("p2", timeout=5)
    assert again["result"]["already"] is True and again["result"]["path"] == str(
        models / "gguf" / NAME
    )
    assert remote.gets() == [None], "a verified file is not fetched again"
    assert listing(models) == ["gguf", f"gguf/{NAME}"]


def test_a_wrong_file_at_dest_is_replaced(agent: Agent, remote: Remote, models: Path) -> None:
    (models / NAME).write_bytes(_data(2))  # same size, other bytes
    agent.pull("p1", remote.file(), NAME)
    reply = agent.outcome("p1")
    assert_pulled(reply, models, NAME, remote.data)
    assert reply["result"]["already"] is False


def test_a_partial_file_is_resumed_from_its_length(
    agent: Agent, remote: Remote, models: Path
) -> None:
    have = 1_234_567
    (models / f"{NAME}.partial").write_bytes(remote.data[:have])
    agent.pull("p1", remote.file(), NAME)
    reply = agent.outcome("p1")
    assert_pulled(reply, models, NAME, remote.data)
    assert reply["result"]["resumed_from"] == have
    assert remote.gets() == [f"bytes={have}-"]
    assert remote.hub.bytes_sent[f"{REPO}/{NAME}"] == SIZE - have


def test_progress_is_streamed_and_the_agent_answers_while_it_waits(
    agent: Agent, remote: Remote, models: Path
) -> None:
    remote.fault("stall", after_bytes=SIZE // 3, seconds=1.5, times=1)
    agent.pull("p1", remote.file(), NAME, timeout_s=10)
    first = agent.first_progress("p1")
    assert 0 < first["bytes"] <= SIZE // 3 and first["total"] == SIZE
    started = time.monotonic()
    agent.send("ping", "ping-1")
    assert agent.next("pong")["id"] == "ping-1"
    assert time.monotonic() - started < 1.0, "the loop waited on the download"
    reply = agent.outcome("p1")
    assert_pulled(reply, models, NAME, remote.data)
    seen = [p["bytes"] for p in agent.progress["p1"]]
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == SIZE, seen
    assert len(seen) <= 1.5 / 0.5 + 3, "at most one progress event per 0.5 s"


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("truncate", {"after_bytes": SIZE // 2}),
        ("reset", {"after_bytes": SIZE // 2}),
        ("stall", {"after_bytes": SIZE // 2, "seconds": 10}),
        ("wrong_length", {"extra": 100}),
        ("503", {}),
    ],
)
def test_a_broken_transfer_is_retried_and_completes(
    agent: Agent, remote: Remote, models: Path, kind: str, options: dict[str, Any]
) -> None:
    remote.fault(kind, times=1, **options)
    started = time.monotonic()
    agent.pull("p1", remote.file(), NAME, timeout_s=1)
    reply = agent.outcome("p1")
    assert_pulled(reply, models, NAME, remote.data)
    assert time.monotonic() - started < 5
    gets = remote.gets()
    if kind in ("truncate", "stall"):
        assert gets == [None, f"bytes={SIZE // 2}-"]  # resumed where the body broke
    elif kind == "reset":  # an RST drops what the receiver had not read yet
        assert gets[0] is None and len(gets) == 2 and gets[1] is not None
        assert 0 < int(gets[1][len("bytes=") : -1]) <= SIZE // 2
    elif kind == "503":
        assert gets == [None, None]


def test_a_persistent_fault_fails_as_download_failed_after_the_retries(
    agent: Agent, remote: Remote, models: Path
) -> None:
    remote.fault("reset", after_bytes=1000)
    started = time.monotonic()
    agent.pull("p1", remote.file(), NAME, retries=2, timeout_s=1)
    reply = agent.outcome("p1")
    assert (reply["type"], reply["code"], reply["retryable"]) == ("error", "download_failed", True)
    assert "3 attempts" in reply["message"] and REPO in reply["message"]
    assert 1.4 < time.monotonic() - started < 6  # backoff 0.5 s + 1 s
    assert remote.gets() == [None, "bytes=1000-", "bytes=2000-"]
    assert (models / f"{NAME}.partial").stat().st_size == 3000  # kept for the next pull
    assert not (models / NAME).exists()


def test_a_refused_connection_is_retried_then_fails(agent: Agent, remote: Remote) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{REPO}/resolve/{remote.commit}/{NAME}"
    agent.pull("p1", remote.file(url=url), NAME, retries=1)
    reply = agent.outcome("p1", timeout=10)
    assert reply["code"] == "download_failed" and "refused" in reply["message"].lower(), reply


def test_a_corrupted_body_is_quarantined_never_at_dest(
    agent: Agent, remote: Remote, models: Path
) -> None:
    remote.fault("flip", at=SIZE - 10, times=1)
    agent.pull("p1", remote.file(), f"sub/{NAME}")
    reply = agent.outcome("p1")
    assert (reply["code"], reply["retryable"]) == ("checksum_mismatch", False), reply
    expected = hashlib.sha256(remote.data).hexdigest()
    shape = r"sha256 ([0-9a-f]{64}) != expected ([0-9a-f]{64}); quarantined at (.+)"
    match = re.fullmatch(shape, reply["message"])
    assert match and match.group(2) == expected and match.group(1) != expected, reply["message"]
    quarantined = Path(match.group(3))
    assert quarantined.parent == models / ".quarantine"
    assert re.fullmatch(rf"sub__{re.escape(NAME)}\.\d+", quarantined.name)
    bad = quarantined.read_bytes()
    assert len(bad) == SIZE and bad[SIZE - 10] == remote.data[SIZE - 10] ^ 1
    assert "sha256" in Path(f"{quarantined}.why").read_text()
    assert not (models / "sub" / NAME).exists() and partials(models) == []


def test_a_gated_repo_without_a_token_is_unauthorized_and_a_missing_file_not_found(
    agent: Agent,
    hub: Hub,  # noqa: F811 - the imported fixture
    remote: Remote,
    models: Path,
) -> None:
    data = _data(3, 4096)
    commit = hub.add_repo("org/gated", {NAME: data}, gated=True)
    gated = Remote(hub, "org/gated", commit, NAME, data)
    agent.pull("p1", gated.file(), NAME)
    reply = agent.outcome("p1")
    assert (reply["code"], reply["retryable"]) == ("unauthorized", False), reply
    assert "org/gated" in reply["message"] and "HF_TOKEN" in reply["message"]
    assert gated.gets() == [None], "refused access is not retried"

    agent.pull("p2", remote.file(url=remote.file()["url"] + "x", name=NAME + "x"), "other.gguf")
    reply = agent.outcome("p2")
    assert (reply["code"], reply["retryable"]) == ("not_found", False), reply
    assert listing(models) == []


def test_the_token_opens_a_gated_repo_and_is_never_echoed(
    agent: Agent,
    hub: Hub,  # noqa: F811 - the imported fixture
    models: Path,
) -> None:
    token = hub.token
    assert token is not None
    data = _data(4, 100_000)
    commit = hub.add_repo("org/gated", {NAME: data}, gated=True)
    gated = Remote(hub, "org/gated", commit, NAME, data)

    agent.send("configure", "c1", secrets={"HF_TOKEN": token + "-wrong"})
    agent.outcome("c1")
    agent.pull("p1", gated.file(), NAME, hub=hub.url)
    refused = agent.outcome("p1")
    assert refused["code"] == "unauthorized" and "no access" in refused["message"], refused

    agent.send("configure", "c2", secrets={"HF_TOKEN": token})
    agent.outcome("c2")
    agent.pull("p2", gated.file(), NAME, hub=hub.url)
    assert_pulled(agent.outcome("p2"), models, NAME, data)
    sent = [r.headers.get("authorization") for r in hub.requests if r.method == "GET"]
    assert sent == [f"Bearer {token}-wrong", f"Bearer {token}"]

    assert agent.close() == 0
    assert agent.proc.stderr is not None
    said = b"".join(agent.lines) + agent.proc.stderr.read()
    assert token.encode() not in said


def test_a_redirect_elsewhere_keeps_the_range_but_not_the_token(
    agent: Agent, remote: Remote, models: Path
) -> None:
    """The hub answers `resolve` with a redirect to its CDN: the token stays with the hub."""
    seen: list[dict[str, str]] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(302)
            self.send_header("Location", remote.hub.url + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    token = remote.hub.token
    assert token is not None
    have = 1000
    (models / f"{NAME}.partial").write_bytes(remote.data[:have])
    with ThreadingHTTPServer(("127.0.0.1", 0), Redirect) as front:
        threading.Thread(target=front.serve_forever, daemon=True).start()
        try:
            agent.send("configure", "c1", secrets={"HF_TOKEN": token})
            agent.outcome("c1")
            port = front.server_address[1]
            url = f"http://127.0.0.1:{port}/{REPO}/resolve/{remote.commit}/{quote(NAME)}"
            agent.pull("p1", remote.file(url=url), NAME, hub=f"http://127.0.0.1:{port}")
            assert_pulled(agent.outcome("p1"), models, NAME, remote.data)
        finally:
            front.shutdown()
    assert [(h.get("authorization"), h.get("range")) for h in seen] == [
        (f"Bearer {token}", f"bytes={have}-")
    ]
    got = [(r.headers.get("authorization"), r.headers.get("range")) for r in remote.hub.requests]
    assert got == [(None, f"bytes={have}-")]


# -- names, space and limits ---------------------------------------------------------------


def test_unsafe_names_are_refused_before_anything_is_written(
    agent: Agent, remote: Remote, models: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "escape").symlink_to(outside)
    before = listing(tmp_path)
    bad = ["../x", "/abs", "a\\b", "a\x00b", "a//b", ".", "..", "", "C:x", "a/./b", "a/", "a\nb"]
    cases = [{"dest": name} for name in bad] + [{"name": name} for name in bad]
    cases += [{"dest": "escape/x.gguf"}, {"dest": ".quarantine/x.gguf"}]
    for n, case in enumerate(cases):
        file = remote.file(**({"name": case["name"]} if "name" in case else {}))
        agent.pull(f"p{n}", file, case.get("dest", NAME))
        reply = agent.outcome(f"p{n}", timeout=5)
        assert (reply["code"], reply["retryable"]) == ("unsafe_name", False), (case, reply)
        assert "\n" not in reply["message"]
    assert listing(tmp_path) == before
    assert remote.gets() == []


def test_too_little_space_is_refused_with_both_numbers(
    agent: Agent, remote: Remote, models: Path, tmp_path: Path
) -> None:
    st = os.statvfs(models)
    free = st.f_bavail * st.f_frsize
    margin = free + (1 << 30)
    before = listing(tmp_path)
    agent.pull("p1", remote.file(), NAME, margin_bytes=margin)
    reply = agent.outcome("p1")
    assert (reply["code"], reply["retryable"]) == ("no_space", False), reply
    shape = (
        r"needs ([\d.]+) GiB \((\d+) bytes \+ (\d+) margin\),"
        r" ([\d.]+) GiB free on (\S+) \((\d+) bytes\)"
    )
    match = re.fullmatch(shape, reply["message"])
    assert match, reply["message"]
    assert (int(match.group(2)), int(match.group(3))) == (SIZE, margin)
    assert abs(int(match.group(6)) - free) < 256 * MIB
    assert float(match.group(1)) == pytest.approx((SIZE + margin) / (1 << 30), abs=0.01)
    assert listing(tmp_path) == before and remote.gets() == []


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, MIB))


def test_a_file_size_limit_fails_the_write_and_the_agent_lives(
    remote: Remote, models: Path
) -> None:
    agent = Agent(models, preexec=_limit_file_size)
    try:
        agent.pull("p1", remote.file(), NAME)
        reply = agent.outcome("p1")
        assert (reply["code"], reply["retryable"]) == ("write_failed", False), reply
        assert "too large" in reply["message"].lower()
        agent.send("ping", "ping-1")
        assert agent.next("pong")["id"] == "ping-1"
        assert listing(models) == []
    finally:
        assert agent.close() == 0


# -- kills, merges, cancels ----------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_moments_then_pull_again(remote: Remote, models: Path) -> None:
    """Each seed: kill -9 in a stalled transfer, then again at a random moment of a restarted
    pull (starting, hashing the partial, fetching, renaming); then a pull completes."""
    resumed = []
    for seed in range(10):
        rng = random.Random(seed)
        dest = f"kill/{seed}.gguf"
        remote.fault("stall", after_bytes=rng.randrange(1, SIZE), seconds=3, times=1)
        for delay in (rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.05)):
            agent = Agent(models)
            try:
                agent.next("hello")
                agent.pull("p1", remote.file(), dest, timeout_s=1)
                time.sleep(delay)
            finally:
                agent.kill()
            final = models / dest
            assert not final.exists() or final.read_bytes() == remote.data
            assert len(partials(models)) <= 1
        agent = Agent(models)
        try:
            agent.pull("p2", remote.file(), dest, timeout_s=1)
            reply = agent.outcome("p2")
            assert_pulled(reply, models, dest, remote.data)
            resumed.append(reply["result"]["resumed_from"])
        finally:
            agent.close()
            remote.fault(None)
    assert sum(1 for r in resumed if r > 0) >= 3, resumed


def test_two_pulls_of_one_dest_share_one_download(
    agent: Agent, remote: Remote, models: Path
) -> None:
    remote.fault("stall", after_bytes=SIZE // 2, seconds=0.8, times=1)
    agent.pull("a", remote.file(), NAME, timeout_s=10)
    agent.first_progress("a")
    agent.pull("b", remote.file(), NAME, timeout_s=10)
    first, second = agent.outcome("a"), agent.outcome("b")
    assert_pulled(first, models, NAME, remote.data)
    assert_pulled(second, models, NAME, remote.data)
    assert remote.gets() == [None]
    assert remote.hub.bytes_sent[f"{REPO}/{NAME}"] == SIZE


def test_cancel_stops_at_once_keeps_the_partial_and_a_later_pull_resumes(
    agent: Agent, remote: Remote, models: Path
) -> None:
    remote.fault("stall", after_bytes=SIZE // 3, seconds=30, times=1)
    agent.pull("p1", remote.file(), NAME, timeout_s=20)
    wait_for_size(models / f"{NAME}.partial", SIZE // 3)  # in the stall
    started = time.monotonic()
    agent.send("cancel", "p1")
    reply = agent.outcome("p1", timeout=5)
    assert (reply["code"], reply["retryable"]) == ("canceled", False), reply
    assert time.monotonic() - started < 2, "a cancel does not wait out the read timeout"
    kept = (models / f"{NAME}.partial").stat().st_size
    assert kept == SIZE // 3 and not (models / NAME).exists()

    agent.pull("p2", remote.file(), NAME)
    reply = agent.outcome("p2")
    assert_pulled(reply, models, NAME, remote.data)
    assert reply["result"]["resumed_from"] == kept
    assert remote.gets() == [None, f"bytes={kept}-"]


def test_shutdown_stops_a_pull_and_keeps_its_partial(remote: Remote, models: Path) -> None:
    remote.fault("stall", after_bytes=SIZE // 4, seconds=30, times=1)
    agent = Agent(models)
    agent.pull("p1", remote.file(), NAME, timeout_s=20)
    wait_for_size(models / f"{NAME}.partial", SIZE // 4)
    agent.send("shutdown")
    reply = agent.outcome("p1", timeout=5)
    assert (reply["code"], reply["retryable"]) == ("agent_stopping", True), reply
    assert agent.proc.wait(5) == 0
    assert (models / f"{NAME}.partial").stat().st_size == SIZE // 4
    assert not (models / NAME).exists()


def test_the_model_loop_cancel_still_answers_for_unknown_runs(agent: Agent) -> None:
    agent.send("cancel", "nope")
    event = agent.next("event", timeout=5)
    assert (event["id"], event["kind"]) == ("nope", "log")
