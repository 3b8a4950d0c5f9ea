"""The agent against a hostile neighbourhood: where its HF token may go, a symlink planted where
it writes a download, a run folder others can write. A real agent subprocess, a real HTTP hub."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bitinglip_agent.hub_token import sends_token

from tests.agents.test_downloads import (  # noqa: F401 - fixtures
    NAME,
    Agent,
    Remote,
    agent,
    assert_pulled,
    listing,
    models,
    remote,
)
from tests.hub.conftest import hub  # noqa: F401 - the fixture
from tests.hub.server import Hub

# -- the HF token --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hub_url", "sent"),
    [
        ("https://huggingface.co/o/r/resolve/c/f.gguf", "https://huggingface.co", True),
        ("https://HuggingFace.co:443/o/r/resolve/c/f.gguf", "https://huggingface.co/", True),
        ("http://huggingface.co/o/r/resolve/c/f.gguf", "https://huggingface.co", False),
        ("https://huggingface.co:8443/f.gguf", "https://huggingface.co", False),
        ("https://cdn-lfs.hf.co/f.gguf", "https://huggingface.co", False),
        ("https://huggingface.co.evil.example/f.gguf", "https://huggingface.co", False),
        ("https://huggingface.co@evil.example/f.gguf", "https://huggingface.co", False),
        ("https://huggingface.co/f.gguf", None, False),
        ("https://huggingface.co/f.gguf", "", False),
        ("http://mirror.lan/f.gguf", "http://mirror.lan", False),  # plain http, off this host
        ("http://10.0.0.5:8080/f.gguf", "http://10.0.0.5:8080", False),
        ("http://127.0.0.1:8080/f.gguf", "http://127.0.0.1:8080", True),  # a loopback mirror
        ("http://[::1]:8080/f.gguf", "http://[::1]:8080", True),
        ("http://localhost:8080/f.gguf", "http://localhost:8080", True),
        ("http://127.0.0.1:8081/f.gguf", "http://127.0.0.1:8080", False),
        ("ftp://huggingface.co/f.gguf", "ftp://huggingface.co", False),
        ("https://[broken/f.gguf", "https://huggingface.co", False),
    ],
)
def test_the_token_goes_only_over_https_to_the_named_hub(
    url: str, hub_url: str | None, sent: bool
) -> None:
    assert sends_token(url, hub_url) is sent


def test_a_pull_sends_the_token_only_to_the_hub_the_control_plane_named(
    agent: Agent,  # noqa: F811 - the imported fixture
    hub: Hub,  # noqa: F811
    remote: Remote,  # noqa: F811
    models: Path,  # noqa: F811
) -> None:
    """The test hub is plain http on 127.0.0.1: named as the hub it gets the token (a loopback
    mirror); a pull naming no hub, or an https hub on that host, sends the file's URL none."""
    token = hub.token
    assert token is not None
    agent.send("configure", "c1", secrets={"HF_TOKEN": token})
    agent.outcome("c1")
    https_hub = hub.url.replace("http://", "https://")
    for run_id, hub_url in (("p1", None), ("p2", https_hub), ("p3", hub.url)):
        options = {} if hub_url is None else {"hub": hub_url}
        agent.pull(run_id, remote.file(), f"{run_id}/{NAME}", **options)
        assert_pulled(agent.outcome(run_id), models, f"{run_id}/{NAME}", remote.data)
    sent = [r.headers.get("authorization") for r in hub.requests if r.method == "GET"]
    assert sent == [None, None, f"Bearer {token}"]


def test_a_gated_file_behind_a_hub_the_token_may_not_reach_says_why(
    agent: Agent,  # noqa: F811 - the imported fixture
    hub: Hub,  # noqa: F811
) -> None:
    data = b"gated bytes" * 100
    commit = hub.add_repo("org/gated", {NAME: data}, gated=True)
    gated = Remote(hub, "org/gated", commit, NAME, data)
    assert hub.token is not None
    agent.send("configure", "c1", secrets={"HF_TOKEN": hub.token})
    agent.outcome("c1")
    agent.pull("p1", gated.file(), NAME, hub="https://huggingface.co")
    reply = agent.outcome("p1")
    assert reply["code"] == "unauthorized", reply
    assert "only over https to the hub (https://huggingface.co)" in reply["message"]
    assert [r.headers.get("authorization") for r in hub.requests] == [None]


def test_a_pull_refuses_a_hub_that_is_not_a_string(
    agent: Agent,  # noqa: F811 - the imported fixture
    remote: Remote,  # noqa: F811
) -> None:
    agent.pull("p1", remote.file(), NAME, hub=["https://huggingface.co"])
    assert agent.outcome("p1")["code"] == "bad_request"


# -- files the agent writes ----------------------------------------------------------------


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_planted_at_the_partial_is_not_written_through(
    agent: Agent,  # noqa: F811 - the imported fixture
    remote: Remote,  # noqa: F811
    models: Path,  # noqa: F811
    tmp_path: Path,
    target_exists: bool,
) -> None:
    outside = tmp_path / "outside" / "precious.txt"
    outside.parent.mkdir()
    if target_exists:
        outside.write_bytes(b"precious")
    (models / f"{NAME}.partial").symlink_to(outside)
    agent.pull("p1", remote.file(), NAME)
    reply = agent.outcome("p1")
    assert (reply["code"], reply["retryable"]) == ("write_failed", False), reply
    assert reply["message"] == (
        f"{models.resolve() / NAME}.partial is a symlink or not a plain file; refused to write "
        "through it (remove it and pull again)"
    )
    if target_exists:
        assert outside.read_bytes() == b"precious"
    else:
        assert not outside.exists(), "the dangling symlink's target was created"
    assert listing(models) == [f"{NAME}.partial"]
    assert not remote.gets(), "nothing was fetched"

    (models / f"{NAME}.partial").unlink()  # the same agent pulls once the link is gone
    agent.pull("p2", remote.file(), NAME)
    assert_pulled(agent.outcome("p2"), models, NAME, remote.data)


def test_a_symlink_planted_at_the_quarantine_note_is_not_written_through(
    agent: Agent,  # noqa: F811 - the imported fixture
    remote: Remote,  # noqa: F811
    models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The `.why` beside a quarantined file has a name one can guess (the dest and the second):
    links planted at every name of the next minute are left alone, the note goes unwritten."""
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"precious")
    quarantine = models / ".quarantine"
    quarantine.mkdir()
    now = int(time.time())
    for second in range(now, now + 60):
        (quarantine / f"{NAME}.{second}.why").symlink_to(outside)
    remote.fault("flip", at=100, times=1)
    agent.pull("p1", remote.file(), NAME)
    reply = agent.outcome("p1")
    assert reply["code"] == "checksum_mismatch", reply
    assert outside.read_bytes() == b"precious"
    kept = [p for p in quarantine.iterdir() if not p.is_symlink()]
    assert [p.name for p in kept] == [reply["message"].rsplit("/", 1)[-1]], "the file, no note"


def _start_daemon(sock: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bitinglip_agent", "--daemon", "--socket", str(sock)]
    return subprocess.run(
        [*argv, "--telemetry-interval", "0", "--detached-exit-s", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_run_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    done = _start_daemon(run / "agent.sock")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"bitinglip_agent: the run folder {run} is writable by group or others (mode 777); "
        f"run `chmod 700 {run}` and start again"
    ]
    assert list(run.iterdir()) == [], "nothing was created in it"


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another user needs root")
def test_a_run_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(run, nobody, -1)
    done = _start_daemon(run / "agent.sock")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"bitinglip_agent: the run folder {run} belongs to uid {nobody}, not this user (0); "
        "remove it (or pick another --socket path) and start again"
    ]
    assert list(run.iterdir()) == []


def test_a_run_folder_it_makes_is_private_and_it_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _start_daemon(run / "agent.sock")
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    try:
        assert said["started"] is True
        assert run.stat().st_mode & 0o777 == 0o700
    finally:
        os.kill(said["pid"], 15)
