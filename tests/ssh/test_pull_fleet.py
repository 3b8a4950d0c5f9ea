"""Pulls to SSH hosts: each host's agent downloads from the hub itself, verified; a task for the
alias then runs only where the model is ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import parse_profile
from bitinglip.control.models import registry
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.errors import HubError
from tests.agents.conftest import wait_for
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.test_fleet import trust

pytestmark = pytest.mark.slow

REPO = "org/tiny-GGUF"
Q8 = tiny_gguf(seed=1, n_layers=3)


def test_pull_to_two_ssh_hosts_then_place_by_copy(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    hub: Hub,  # noqa: F811
    demo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = [sshd_factory(name) for name in ("gpu-1", "gpu-2", "gpu-3")]
    trust(*hosts)
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    hub.add_repo("org/gemma-GGUF", {"gemma-Q4_K_M.gguf": demo_model})
    text = ssh_profile(hosts) + '\n[models.gemma-hf]\nsource = "hf:org/gemma-GGUF"\n'
    profile = parse_profile(text, name="fleet", path=None, data_dir=tmp_path / "data")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with open_control_plane(profile) as plane, plane.embedded():
        _, tickets = plane.models.pull(REPO, hosts=["gpu-1", "gpu-2"])
        done = [plane.wait(t.task_id, timeout=60) for t in tickets if t.task_id is not None]
        assert [t.state for t in done] == ["succeeded", "succeeded"], [t.error for t in done]
        for host, task in zip(("gpu-1", "gpu-2"), done, strict=True):
            assert isinstance(task.result, dict)
            path = Path(task.result["path"])
            assert path.read_bytes() == Q8
            assert path.is_relative_to(tmp_path / "remote" / host / "models")
        assert sorted(registry.ready_on(plane.store, tickets[0].model_id)) == ["gpu-1", "gpu-2"]
        assert not (tmp_path / "remote" / "gpu-3" / "models" / "hf").exists()
        # The alias is on no host: a model task waits, and runs where the pull put it.
        _, [ticket] = plane.models.pull("org/gemma-GGUF", hosts=["gpu-3"])
        task_id = plane.submit(
            TaskSpec(
                kind="generate",
                model="gemma-hf",
                payload={"prompt": "One, two,", "max_tokens": 4, "temperature": 0},
            )
        )
        assert ticket.task_id is not None
        assert plane.wait(ticket.task_id, timeout=120).state == "succeeded"
        task = plane.wait(task_id, timeout=120)
        copies: Any = wait_for(
            lambda: registry.find(plane.store, "gemma-hf", profile), 5, "the registry row"
        )
    assert task.state == "succeeded", task.error
    assert task.ran_on == "gpu-3"
    assert copies["hosts"]["gpu-3"]["last_used_at"] is not None


def test_via_operator_downloads_once_and_pushes_verified(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    hub: Hub,  # noqa: F811
) -> None:
    """For hosts without internet: this machine downloads once (the hub serves the file once),
    pushes it over SFTP to both hosts, verified there; no pull task, no download by a host."""
    hosts = [sshd_factory(name) for name in ("gpu-1", "gpu-2")]
    trust(*hosts)
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    profile = parse_profile(ssh_profile(hosts), name="f", path=None, data_dir=tmp_path / "data")
    with open_control_plane(profile) as plane:
        file, placed = plane.models.pull_via_operator(REPO, all_hosts=True)
        assert sorted(registry.ready_on(plane.store, registry.register(plane.store, file))) == [
            "gpu-1",
            "gpu-2",
        ]
        assert plane.tasks() == []
    for host in ("gpu-1", "gpu-2"):
        path = Path(placed[host])
        assert path.read_bytes() == Q8
        assert path.is_relative_to(tmp_path / "remote" / host / "models")
        assert not list(path.parent.glob("*.push-*"))
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("tiny-Q8_0.gguf")]
    assert len(gets) == 1 and hub.bytes_sent[f"{REPO}/tiny-Q8_0.gguf"] == len(Q8)


def test_via_operator_refuses_a_corrupt_download_and_pushes_nothing(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    hub: Hub,  # noqa: F811
) -> None:
    host = sshd_factory("gpu-1")
    trust(host)
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    hub.fault(REPO, "tiny-Q8_0.gguf", "flip")
    profile = parse_profile(ssh_profile([host]), name="f", path=None, data_dir=tmp_path / "data")
    with open_control_plane(profile) as plane, pytest.raises(HubError, match="sha256"):
        plane.models.pull_via_operator(REPO)
    assert not (tmp_path / "remote" / "gpu-1" / "models").exists()
