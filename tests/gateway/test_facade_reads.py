"""What the gateway reads through the façade, without a model: the /metrics exposition (its
names, labels and values, as prometheus_client renders them) and the bridge's batched watch of
many tasks (new output, a rerun's restart, the end)."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bitinglip.control import (
    ControlPlane,
    TaskSpec,
    TaskState,
    WatchMark,
    WatchStep,
    open_control_plane,
)
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.gateway import metrics
from tests.conftest import NOWHERE
from tests.gateway.conftest import gateway_profile

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
GPU = 'RTX "4090"\n'  # a label value that needs escaping


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def fill(plane: ControlPlane) -> None:
    """Tasks in every interesting state, usage on the succeeded one, two hosts' telemetry."""
    ids = plane.submit_many(
        [TaskSpec(kind="echo", labels=NOWHERE, priority=p) for p in (100, 100, 5, 0, 0)]
    )
    first, _ = plane.queue.claim("test", limit=2, labels=NOWHERE)
    usage = {"prompt_tokens": 7, "completion_tokens": 120}
    plane.queue.complete(first.task_id, first.token, {"text": "x", "usage": usage})
    plane.cancel([ids[-1]])
    now = time.time()
    gpus = [
        {"index": 0, "name": GPU, "utilization_pct": 99, "temperature_c": float("nan")},
        {"name": "b", "memory_total_bytes": 5, "power_w": 310.25},
    ]
    local = {"at": now, "cpu_percent": 12.5, "ram_total_bytes": 1 << 34, "gpus": gpus}
    TelemetryRing().record(plane.store, [("local", local), ("elsewhere", {"at": now})])


def test_metrics_names_labels_and_values(tmp_path: Path) -> None:
    requests = {("completions", 200): 3, ("chat", 500): 2}
    with open_control_plane(gateway_profile(tmp_path, None)) as plane:
        fill(plane)
        text = metrics.render(plane, 10, requests, 4, per_host=True).decode()
        brief = metrics.render(plane, 10, requests, 4, per_host=False).decode()
    found = samples(text)
    assert found.pop("bitinglip_tasks") == {
        (("state", s.value),): {"queued": 2, "running": 1, "succeeded": 1, "canceled": 1}.get(
            s.value, 0
        )
        for s in TaskState
    }
    host, gpu0, gpu1 = ("host", "local"), ("gpu", "0"), ("gpu", "1")
    assert found == {
        "bitinglip_queue_depth": {(("class", "interactive"),): 0, (("class", "batch"),): 2},
        "bitinglip_tasks_finished_total": {
            (("outcome", o),): int(o in ("succeeded", "canceled"))
            for o in ("succeeded", "failed", "canceled", "dead")
        },
        "bitinglip_tokens_total": {(("type", "prompt"),): 7, (("type", "completion"),): 120},
        "bitinglip_tokens_per_second": {(): 2.0},
        "bitinglip_controller_up": {(): 0},
        "bitinglip_host_healthy": {(host,): 0},
        "bitinglip_host_connected": {(host,): 0},
        "bitinglip_host_cpu_percent": {(host,): 12.5},
        "bitinglip_host_ram_total_bytes": {(host,): 1 << 34},
        "bitinglip_gpu_utilization_percent": {(gpu0, host, ("name", GPU)): 99},
        "bitinglip_gpu_memory_total_bytes": {(gpu1, host, ("name", "b")): 5},
        "bitinglip_gpu_power_watts": {(gpu1, host, ("name", "b")): 310.25},
        "bitinglip_gateway_requests_total": {
            (("endpoint", "chat"), ("status", "500")): 2,
            (("endpoint", "completions"), ("status", "200")): 3,
        },
        "bitinglip_gateway_active_requests": {(): 4},
    }
    # every family says what it is, those without samples too (a host that sent no GPU values)
    assert "# TYPE bitinglip_gpu_temperature_celsius gauge" in text
    assert "# TYPE bitinglip_tokens_total counter" in text
    assert "_created" not in text
    assert 'host="' not in brief and "bitinglip_host_" not in brief
    assert samples(brief)["bitinglip_tokens_total"] == found["bitinglip_tokens_total"]


def test_watch_steps_follow_output_restarts_and_ends(tmp_path: Path) -> None:
    with open_control_plane(gateway_profile(tmp_path, None)) as plane:
        streamed, quiet = plane.submit_many(
            [TaskSpec(kind="echo", labels=NOWHERE) for _ in range(2)]
        )
        marks = {streamed: WatchMark(), quiet: WatchMark(output=False)}

        def step() -> dict[int, WatchStep]:
            steps = plane.watch_steps(marks)
            marks.update({i: s.mark for i, s in steps.items()})
            return steps

        first = step()  # learns each task's lease token
        assert all(not s.chunks and s.final is None for s in first.values())
        assert step() == {}  # queued, no output: nothing new
        a, b = plane.queue.claim("test", limit=2, labels=NOWHERE)
        for claim in (a, b):
            plane.queue.append_output(claim.task_id, claim.token, "ab")
            plane.queue.append_output(claim.task_id, claim.token, "c")
        steps = step()
        assert steps[streamed].chunks == ["ab", "c"] and steps[quiet].chunks == []
        assert marks == {streamed: WatchMark(2, a.token), quiet: WatchMark(0, b.token, False)}
        assert step() == {}  # nothing new since
        plane.queue.release([(a.task_id, a.token)])  # the task runs again: output starts over
        [again] = plane.queue.claim("test", labels=NOWHERE)
        plane.queue.append_output(again.task_id, again.token, "z")
        plane.queue.complete(again.task_id, again.token, {"text": "z"})
        plane.queue.complete(b.task_id, b.token, {"text": "abc"})
        steps = step()
    assert steps[streamed].restarted and steps[streamed].chunks == ["z"]
    assert marks[streamed] == WatchMark(1, again.token)
    assert not steps[quiet].restarted and steps[quiet].chunks == []
    ended = {i: s.final.state for i, s in steps.items() if s.final is not None}
    assert ended == {streamed: TaskState.SUCCEEDED, quiet: TaskState.SUCCEEDED}
