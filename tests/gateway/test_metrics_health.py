"""GET /metrics parses as Prometheus text and its numbers are the database's (the per-host
families for a caller with a key); GET /health is the controller's and the hosts' state, from a
snapshot (in full for a caller with a key)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.gateway.server import Served
from tests.conftest import NOWHERE
from tests.gateway.conftest import KEY, MODEL, client, needs_model, request

pytestmark = needs_model


BEARER = {"Authorization": f"Bearer {KEY}"}


def scrape(
    served: Served, headers: dict[str, str] | None = None
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    reply = request(served, "GET", "/metrics", headers=headers)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_metrics_counts_match_the_database(served: Served, observer: ControlPlane) -> None:
    api = client(served)
    api.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0)
    api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    priority = served.bridge.profile.gateway.priority
    waiting = observer.submit_many(
        [TaskSpec(kind="echo", labels=NOWHERE, priority=p) for p in (priority, priority, 0)]
    )
    canceled = observer.submit(TaskSpec(kind="echo", labels=NOWHERE))
    observer.cancel([canceled])
    try:
        found = scrape(served)
        counts = observer.status()["tasks"]
        assert {dict(k)["state"]: v for k, v in found["bitinglip_tasks"].items()} == counts
        finished = {
            dict(k)["outcome"]: v for k, v in found["bitinglip_tasks_finished_total"].items()
        }
        assert finished == {s: counts[s] for s in ("succeeded", "failed", "canceled", "dead")}
        depth = {dict(k)["class"]: v for k, v in found["bitinglip_queue_depth"].items()}
        queued = observer.tasks(state=TaskState.QUEUED, limit=1000)
        assert depth["interactive"] == sum(t.priority >= priority for t in queued) >= 2
        assert depth["batch"] == sum(t.priority < priority for t in queued) >= 1
        done = [t for t in observer.tasks(limit=1000) if t.state == TaskState.SUCCEEDED]
        tokens = {dict(k)["type"]: v for k, v in found["bitinglip_tokens_total"].items()}
        usage = [
            t.result["usage"] for t in done if isinstance(t.result, dict) and "usage" in t.result
        ]
        assert tokens["completion"] == sum(u.get("completion_tokens", 0) for u in usage) > 0
        assert tokens["prompt"] == sum(u.get("prompt_tokens", 0) for u in usage) > 0
        assert found["bitinglip_tokens_per_second"][()] > 0
        assert found["bitinglip_controller_up"][()] == 1
        requests = found["bitinglip_gateway_requests_total"]
        assert requests[(("endpoint", "completions"), ("status", "200"))] >= 1
    finally:
        observer.cancel(waiting)


def test_metrics_with_the_key_have_each_host(keyed: Served) -> None:
    client(keyed, KEY).completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    time.sleep(1.5)  # the agent's telemetry (1 Hz) after it said hello
    found = scrape(keyed, BEARER)
    assert found["bitinglip_host_connected"][(("host", "local"),)] == 1
    assert (("host", "local"),) in found["bitinglip_host_ram_total_bytes"]


def test_health_reports_the_controller_and_hosts(keyed: Served) -> None:
    time.sleep(keyed.bridge.health_every_s + 0.2)  # one refresh after the agent said hello
    reply = request(keyed, "GET", "/health", headers=BEARER)
    assert reply.status == 200
    health = reply.json()
    assert health["status"] == "ok" and health["embedded"] is True
    assert health["controller"]["alive"] is True
    [host] = health["hosts"]
    assert host["name"] == "local" and host["healthy"] and host["connected"]
    assert set(health["tasks"]) >= {"queued", "running", "succeeded"}
