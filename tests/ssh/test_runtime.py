"""`hosts setup --runtime` on a real sshd host: a venv with llama-cpp-python made on the host
(pip, from the package index; the llama-cpp-python wheel comes from pip's cache once `make setup`
has built it), its output streamed, then real inference there through the agent on the venv."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bitinglip.config import parse_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.cli.conftest import Proc
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.test_fleet import place_model, trust
from tests.ssh.test_hosts_cli import trust_as

pytestmark = pytest.mark.slow


def test_setup_runtime_then_generate_on_the_host(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    proc: Proc,
    demo_model: Path,
) -> None:
    host = sshd_factory("gpu-1")
    trust(host)  # for the control plane in this process
    trust_as(proc, host)  # for the CLI subprocesses
    base_python = getattr(sys, "_base_executable", sys.executable)  # no llama_cpp of ours
    text = ssh_profile([host], python=base_python)
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    done = proc("--profile", path, "hosts", "setup", "gpu-1", "--runtime", "--json", timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["runtime"] is True
    assert "Successfully installed" in done.stderr or "already satisfied" in done.stderr
    again = proc("--profile", path, "hosts", "check", "gpu-1", "--json", timeout=60)
    signals = json.loads(again.stdout)["signals"]
    assert signals["runtime"]["state"] == "ok", signals["runtime"]
    profile = parse_profile(text, name="fleet", path=path, data_dir=tmp_path / "data")
    place_model(profile, demo_model)
    payload = {"prompt": "One, two,", "max_tokens": 4, "temperature": 0, "seed": 1}
    with open_control_plane(profile) as plane, plane.embedded():
        task = plane.wait(
            plane.submit(TaskSpec(kind="generate", model="gemma-3-270m", payload=payload)), 120
        )
    assert task.state == "succeeded", task.error
    assert task.ran_on == "gpu-1" and task.result["text"]
