"""A fleet written with a fixed clock, for the Hosts and GPUs views' tests and snapshots.

Two healthy SSH hosts with three GPUs each and a minute of generated telemetry (written with the
control plane's own functions by `bitinglip.bench.fleet_telemetry.FleetWriter`), an SSH host
that refuses connections and one whose host key is unknown: their health rows are what the
control loop stores, from the SSH layer's own one-line errors (`control.ssh.failures.explain`).
Nothing runs a control loop over them: the console under test uses `Backend(control=False)`
and `now=lambda: NOW`.
"""

from __future__ import annotations

import asyncssh

from bitinglip.bench.fleet_telemetry import FleetWriter
from bitinglip.config import HostConfig
from bitinglip.control.fleet import hosts
from bitinglip.control.models import registry
from bitinglip.control.models.refs import HubFile
from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.transport.ssh.failures import explain
from bitinglip.control.transport.ssh.trust import KeyCheck

NOW = 1_800_000_000.0
HISTORY_S = 60
GPUS = 3
HEALTHY = ("gpu-a", "gpu-b")
# A fixed ed25519 public key (test data only): the key an unknown host offers.
OFFERED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEswyiGZ/cu9JcRd3Ieev9PibVlPZMv/X2itXUuRX5W7"
FINGERPRINT = "SHA256:Zch6vVkcgvrC3qtR28kAdgf1ma2zTTLTiSsLLSUCIp0"

FLEET = """
[[hosts]]
name = "gpu-a"
kind = "ssh"
address = "10.0.0.1"
labels = { zone = "a" }

[[hosts]]
name = "gpu-b"
kind = "ssh"
address = "10.0.0.2"
labels = { zone = "b" }

[[hosts]]
name = "gpu-c"
kind = "ssh"
address = "127.0.0.1"
port = 9

[[hosts]]
name = "gpu-d"
kind = "ssh"
address = "10.0.0.4"
user = "ops"
"""


def write_fleet(plane: ControlPlane) -> None:
    """Telemetry of the healthy hosts up to NOW, and the two failing hosts' health rows."""
    writer = FleetWriter(plane.store, list(HEALTHY), GPUS)
    for back in range(HISTORY_S - 1, -1, -1):
        writer.write(NOW - back)
    config = {h.name: h for h in plane.profile.hosts}
    tracker = hosts.HealthTracker()
    failing = [
        tracker.observe(failed("gpu-c", refused(config["gpu-c"])), NOW),
        tracker.observe(failed("gpu-d", unknown_key(config["gpu-d"])), NOW),
    ]
    hosts.save(plane.store, failing)


def write_model(plane: ControlPlane, host: str) -> int:
    """A registered model whose verified copy on `host` is loaded (as its agent would say)."""
    file = HubFile(
        repo="acme/tiny-llm-GGUF",
        commit="0" * 40,
        name="tiny-llm-Q4_K_M.gguf",
        size=2 * (1 << 30),
        sha256="a" * 64,
        quant="Q4_K_M",
        url="https://huggingface.co/acme/tiny-llm-GGUF/resolve/0/tiny-llm-Q4_K_M.gguf",
    )
    store = plane.store
    model_id = registry.register(store, file, now=NOW - 600)
    registry.set_host_state(store, host, model_id, "pulling", now=NOW - 600)
    path = f"/srv/models/{file.name}"
    registry.set_host_state(store, host, model_id, "ready", path=path, now=NOW - 500)
    registry.set_loaded(store, host, model_id, True)
    return model_id


def write_tasks(plane: ControlPlane, host: str, count: int = 3) -> list[int]:
    """Tasks pinned to `host`, submitted at fixed times (NOW - 120 s, then 10 s apart)."""
    at = [NOW - 120.0]

    def clock() -> float:
        at[0] += 10.0
        return at[0]

    queue = TaskQueue(plane.store, plane.profile.queue, clock=clock)
    specs = [TaskSpec(kind="echo", payload={"i": i}, host=host) for i in range(count)]
    return [queue.submit(spec) for spec in specs]


def failed(name: str, error: str) -> hosts.HostObservation:
    return hosts.HostObservation(host=name, connected=False, error=error, kind="ssh")


def refused(host: HostConfig) -> str:
    return str(explain(host, ConnectionRefusedError(), KeyCheck(), 10.0))


def unknown_key(host: HostConfig) -> str:
    offered = asyncssh.import_public_key(OFFERED_KEY)
    check = KeyCheck(host=str(host.address), port=host.port, offered=offered)
    return str(explain(host, ConnectionError("host key is not trusted"), check, 10.0))
