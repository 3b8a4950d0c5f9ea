"""What a metrics scrape reads (`ControlPlane.metrics`), in one read transaction so that the
numbers agree with each other and with the database at that moment: the queue's usage, the
controller, every host's stored health and each host's latest telemetry."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bitinglip.control.fleet import hosts, telemetry_ring
from bitinglip.control.queue.usage import QueueUsage, usage
from bitinglip.control.runtime import controller
from bitinglip.control.runtime.controller import ControllerInfo
from bitinglip.control.store.db import Store


@dataclass(frozen=True)
class PlaneMetrics:
    """`usage`: the queue split at a priority, tokens over a recent window; `controller`: the
    lease holder (alive or not), None when none ever was; `hosts`: stored health by host name;
    `telemetry`: the newest snapshot of each host, by name."""

    usage: QueueUsage
    controller: ControllerInfo | None
    hosts: dict[str, dict[str, Any]]
    telemetry: dict[str, dict[str, Any]]


def read_metrics(store: Store, priority: int, window_s: float) -> PlaneMetrics:
    with store.read():
        return PlaneMetrics(
            usage=usage(store, priority, time.time() - window_s),
            controller=controller.current(store),
            hosts={row["name"]: row for row in hosts.load_hosts(store)},
            telemetry=telemetry_ring.latest(store),
        )
