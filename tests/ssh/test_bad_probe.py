"""A remembered probe that cannot be used (a workdir too long for the agent's socket path, or
fields of the wrong types) breaks only its host: the other host's tasks complete meanwhile, and
the bad host forgets the probe, probes afresh and then works."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.transport import bootstrap
from tests.ssh.conftest import ProfileText
from tests.ssh.sshd import SshdHost
from tests.ssh.test_fleet import attached, fleet_profile, trust

pytestmark = pytest.mark.slow

GOOD = bootstrap.Probe(
    python=(3, 11, 0),
    executable="/usr/bin/python3",
    workdir="/srv/bitinglip",
    agent="/srv/bitinglip/agent/x/bitinglip-agent.pyz",
    agent_ok=True,
    venv_python=None,
    model_dir="/srv/bitinglip/models",
    nvidia_smi=None,
    time=0.0,
)


def long_workdir(probe: dict[str, Any]) -> dict[str, Any]:
    """The socket path under it is over SUN_PATH_MAX: building the transport raises."""
    return {**probe, "workdir": "/" + "w" * 200}


def wrong_types(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe file edited by hand (or written by another version): an int for a path."""
    return {**probe, "agent": 123, "agent_ok": "yes"}


def remember(profile: Profile, host_name: str, spoil: Callable[[dict[str, Any]], Any]) -> Path:
    """Write `host_name`'s remembered probe for this agent version, spoilt by `spoil`."""
    host = next(h for h in profile.hosts if h.name == host_name)
    bundle = bootstrap.local_bundle(profile)
    bootstrap.save_probe(profile, host, bundle, GOOD)
    path = bootstrap._probe_file(profile, host)
    data = json.loads(path.read_text())
    data["probe"] = spoil(asdict(GOOD))
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("spoil", [long_workdir, wrong_types])
def test_a_bad_remembered_probe_breaks_only_its_host_until_it_probes_afresh(
    spoil: Callable[[dict[str, Any]], Any],
    tmp_path: Path,
    sshd_factory: Callable[..., SshdHost],
    ssh_profile: ProfileText,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, bad = sshd_factory("gpu-1"), sshd_factory("gpu-2")
    trust(good, bad)
    profile = fleet_profile(tmp_path, ssh_profile([good, bad]))
    probe_file = remember(profile, "gpu-2", spoil)
    caplog.set_level(logging.INFO, logger="bitinglip.control")
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None
        attached(loop, ["gpu-1"])
        on_good = plane.submit_many(
            [TaskSpec(kind="echo", payload={"n": n}, host="gpu-1") for n in range(20)]
        )
        on_bad = plane.submit_many(
            [TaskSpec(kind="echo", payload={"n": n}, host="gpu-2") for n in range(20)]
        )
        done_good = [plane.wait(i, timeout=30) for i in on_good]
        attached(loop, ["gpu-2"], timeout=30)  # the bad probe forgotten: probed afresh
        done_bad = [plane.wait(i, timeout=30) for i in on_bad]
        alive = not loop.ended.is_set()
    assert [t.state for t in done_good] == ["succeeded"] * 20
    assert {t.ran_on for t in done_good} == {"gpu-1"}
    assert [t.state for t in done_bad] == ["succeeded"] * 20, [t.error for t in done_bad]
    assert {t.ran_on for t in done_bad} == {"gpu-2"}
    assert all(t.attempt == 1 for t in done_good + done_bad)
    assert alive
    remembered = json.loads(probe_file.read_text())["probe"]  # the fresh probe, saved
    assert remembered["workdir"] == str(tmp_path / "remote" / "gpu-2")
    said = [r.getMessage() for r in caplog.records]
    assert any("gpu-2" in m and "remembered probe" in m for m in said), said
