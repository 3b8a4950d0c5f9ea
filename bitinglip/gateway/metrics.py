"""GET /metrics: Prometheus text exposition (version 0.0.4), read from the database per scrape.

Everything is read through the façade in one read transaction (`ControlPlane.metrics`), so the
numbers agree with each other and with the database at that moment: tasks by state (the queue
depth), queued work split into interactive (at or above the gateway's priority) and batch,
finished tasks by outcome, token counters and the recent generation rate, the controller, and
each host's stored health and latest telemetry (host and per GPU). The gateway adds its own
request counters. The per-host families (they name the hosts) are left out for a caller without
an API key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from bitinglip.control import TERMINAL, ControlPlane, PlaneMetrics, TaskState

RATE_WINDOW_S = 60.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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


class Exposition:
    """Metric families in text form: HELP and TYPE once, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    plane: ControlPlane,
    priority: int,
    requests: Mapping[tuple[str, int], int],
    active: int,
    per_host: bool = True,
) -> str:
    out = Exposition()
    found = plane.metrics(priority, RATE_WINDOW_S)
    usage = found.usage
    _tasks(out, usage.counts, {1: usage.interactive, 0: usage.batch})
    out.family(
        "bitinglip_tokens_total",
        "counter",
        "Tokens of succeeded tasks, by direction.",
        [
            ({"type": "prompt"}, usage.prompt_tokens),
            ({"type": "completion"}, usage.completion_tokens),
        ],
    )
    out.family(
        "bitinglip_tokens_per_second",
        "gauge",
        f"Completion tokens per second over the last {RATE_WINDOW_S:g} s.",
        [({}, usage.recent_completion_tokens / RATE_WINDOW_S)],
    )
    holder = found.controller
    alive = holder is not None and holder.alive
    out.family(
        "bitinglip_controller_up",
        "gauge",
        "1 when a controller holds the lease.",
        [({}, int(alive))],
    )
    if per_host:
        _hosts(out, plane, found)
    _gateway(out, requests, active)
    return out.text()


def _tasks(out: Exposition, counts: Mapping[str, int], queued: Mapping[int, int]) -> None:
    out.family(
        "bitinglip_tasks",
        "gauge",
        "Tasks in the database by state (queued and running: the queue depth).",
        [({"state": s}, n) for s, n in counts.items()],
    )
    out.family(
        "bitinglip_queue_depth",
        "gauge",
        "Queued tasks: interactive (at or above the gateway's priority) and batch.",
        [({"class": "interactive"}, queued.get(1, 0)), ({"class": "batch"}, queued.get(0, 0))],
    )
    out.family(
        "bitinglip_tasks_finished_total",
        "counter",
        "Tasks that ended, by outcome.",
        [({"outcome": s.value}, counts.get(s.value, 0)) for s in TaskState if s in TERMINAL],
    )


def _hosts(out: Exposition, plane: ControlPlane, found: PlaneMetrics) -> None:
    health, latest = found.hosts, found.telemetry
    names = [h.name for h in plane.profile.hosts]
    out.family(
        "bitinglip_host_healthy",
        "gauge",
        "1 when every health signal of the host is ok (as the controller stored it).",
        [({"host": n}, int(bool(health.get(n, {}).get("healthy")))) for n in names],
    )
    out.family(
        "bitinglip_host_connected",
        "gauge",
        "1 when the controller has a session with the host's agent.",
        [({"host": n}, int(bool(health.get(n, {}).get("connected")))) for n in names],
    )
    for key, name, help_text in _HOST_GAUGES:
        samples = [({"host": h}, _number(s.get(key))) for h, s in latest.items()]
        out.family(name, "gauge", help_text, [(lab, v) for lab, v in samples if v is not None])
    gpus = [(h, g) for h, s in latest.items() for g in s.get("gpus") or [] if isinstance(g, dict)]
    for key, name, help_text in _GPU_GAUGES:
        samples = [
            (
                {"host": h, "gpu": str(g.get("index", i)), "name": str(g.get("name", ""))},
                _number(g.get(key)),
            )
            for i, (h, g) in enumerate(gpus)
        ]
        out.family(name, "gauge", help_text, [(lab, v) for lab, v in samples if v is not None])


def _gateway(out: Exposition, requests: Mapping[tuple[str, int], int], active: int) -> None:
    out.family(
        "bitinglip_gateway_requests_total",
        "counter",
        "HTTP requests answered by this gateway, by endpoint and status.",
        [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(requests.items())],
    )
    out.family(
        "bitinglip_gateway_active_requests",
        "gauge",
        "Requests of this gateway waiting on their task.",
        [({}, active)],
    )


def _number(value: Any) -> float | None:
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return float(value)
    if isinstance(value, list) and value:  # load: [1, 5, 15]
        return _number(value[0])
    return None


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
