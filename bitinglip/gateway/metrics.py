"""GET /metrics: Prometheus text exposition (version 0.0.4), read from the database per scrape.

Built with prometheus_client (the one module that imports it): each scrape registers two
collectors on a registry of its own (never the global one) and renders it with
`generate_latest`. `PlaneCollector` reads the façade once (`ControlPlane.metrics`: one read
transaction, so the numbers agree with each other and with the database at that moment): tasks
by state (the queue depth), queued work split into interactive (at or above the gateway's
priority) and batch, finished tasks by outcome, token counters and the recent generation rate,
the controller, and each host's stored health and latest telemetry (host and per GPU).
`GatewayCollector` adds the gateway's own request counters. The per-host families (they name
the hosts) are left out for a caller without an API key.

A scrape runs in the bridge's thread (`Bridge.call`), which owns the plane: a few indexed reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from bitinglip.control import TERMINAL, ControlPlane, PlaneMetrics, TaskState

RATE_WINDOW_S = 60.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

_HOST_GAUGES = (
    ("cpu_percent", "bitinglip_host_cpu_percent", "CPU use of the host, percent."),
    ("ram_used_bytes", "bitinglip_host_ram_used_bytes", "RAM in use on the host."),
    ("ram_total_bytes", "bitinglip_host_ram_total_bytes", "RAM of the host."),
    ("disk_free_bytes", "bitinglip_host_disk_free_bytes", "Free space of the model dir's disk."),
)
_GPU_GAUGES = (
    ("utilization_pct", "bitinglip_gpu_utilization_percent", "GPU utilisation, percent."),
    ("memory_used_bytes", "bitinglip_gpu_memory_used_bytes", "GPU memory in use."),
    ("memory_total_bytes", "bitinglip_gpu_memory_total_bytes", "GPU memory."),
    ("temperature_c", "bitinglip_gpu_temperature_celsius", "GPU temperature."),
    ("power_w", "bitinglip_gpu_power_watts", "GPU power draw."),
)
_GPU_LABELS = ["host", "gpu", "name"]


def render(
    plane: ControlPlane,
    priority: int,
    requests: Mapping[tuple[str, int], int],
    active: int,
    per_host: bool = True,
) -> bytes:
    """One scrape's exposition. In the bridge's thread: `plane` is read here."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlaneCollector(plane, priority, per_host))
    registry.register(GatewayCollector(requests, active))
    return generate_latest(registry)


class PlaneCollector(Collector):
    """The control plane's families, from one `ControlPlane.metrics` snapshot per collect."""

    def __init__(self, plane: ControlPlane, priority: int, per_host: bool) -> None:
        self.plane = plane
        self.priority = priority
        self.per_host = per_host

    def collect(self) -> Iterator[Metric]:
        found = self.plane.metrics(self.priority, RATE_WINDOW_S)
        yield from _tasks(found)
        tokens = CounterMetricFamily(
            "bitinglip_tokens_total", "Tokens of succeeded tasks, by direction.", labels=["type"]
        )
        tokens.add_metric(["prompt"], found.usage.prompt_tokens)
        tokens.add_metric(["completion"], found.usage.completion_tokens)
        yield tokens
        yield GaugeMetricFamily(
            "bitinglip_tokens_per_second",
            f"Completion tokens per second over the last {RATE_WINDOW_S:g} s.",
            value=found.usage.recent_completion_tokens / RATE_WINDOW_S,
        )
        holder = found.controller
        yield GaugeMetricFamily(
            "bitinglip_controller_up",
            "1 when a controller holds the lease.",
            value=int(holder is not None and holder.alive),
        )
        if self.per_host:
            yield from _hosts([h.name for h in self.plane.profile.hosts], found)


class GatewayCollector(Collector):
    """This gateway's own counters, as they were when the scrape was asked for."""

    def __init__(self, requests: Mapping[tuple[str, int], int], active: int) -> None:
        self.requests = requests
        self.active = active

    def collect(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "bitinglip_gateway_requests_total",
            "HTTP requests answered by this gateway, by endpoint and status.",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), n in sorted(self.requests.items()):
            answered.add_metric([endpoint, str(status)], n)
        yield answered
        yield GaugeMetricFamily(
            "bitinglip_gateway_active_requests",
            "Requests of this gateway waiting on their task.",
            value=self.active,
        )


def _tasks(found: PlaneMetrics) -> Iterator[Metric]:
    counts = found.usage.counts
    states = GaugeMetricFamily(
        "bitinglip_tasks",
        "Tasks in the database by state (queued and running: the queue depth).",
        labels=["state"],
    )
    for state, n in counts.items():
        states.add_metric([state], n)
    yield states
    depth = GaugeMetricFamily(
        "bitinglip_queue_depth",
        "Queued tasks: interactive (at or above the gateway's priority) and batch.",
        labels=["class"],
    )
    depth.add_metric(["interactive"], found.usage.interactive)
    depth.add_metric(["batch"], found.usage.batch)
    yield depth
    finished = CounterMetricFamily(
        "bitinglip_tasks_finished_total", "Tasks that ended, by outcome.", labels=["outcome"]
    )
    for s in TaskState:
        if s in TERMINAL:
            finished.add_metric([s.value], counts.get(s.value, 0))
    yield finished


def _hosts(names: list[str], found: PlaneMetrics) -> Iterator[Metric]:
    """Health of each host of the profile; telemetry of each host that sent some."""
    healthy = GaugeMetricFamily(
        "bitinglip_host_healthy",
        "1 when every health signal of the host is ok (as the controller stored it).",
        labels=["host"],
    )
    connected = GaugeMetricFamily(
        "bitinglip_host_connected",
        "1 when the controller has a session with the host's agent.",
        labels=["host"],
    )
    for name in names:
        stored = found.hosts.get(name, {})
        healthy.add_metric([name], int(bool(stored.get("healthy"))))
        connected.add_metric([name], int(bool(stored.get("connected"))))
    yield healthy
    yield connected
    latest = found.telemetry
    for key, metric, help_text in _HOST_GAUGES:
        family = GaugeMetricFamily(metric, help_text, labels=["host"])
        for host, snapshot in latest.items():
            value = _number(snapshot.get(key))
            if value is not None:
                family.add_metric([host], value)
        yield family
    gpus = [(h, g) for h, s in latest.items() for g in s.get("gpus") or [] if isinstance(g, dict)]
    for key, metric, help_text in _GPU_GAUGES:
        family = GaugeMetricFamily(metric, help_text, labels=_GPU_LABELS)
        for i, (host, gpu) in enumerate(gpus):
            value = _number(gpu.get(key))
            if value is not None:
                family.add_metric([host, str(gpu.get("index", i)), str(gpu.get("name", ""))], value)
        yield family


def _number(value: Any) -> float | None:
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return float(value)
    if isinstance(value, list) and value:  # load: [1, 5, 15]
        return _number(value[0])
    return None
