"""A snapshot of the Loaded view (`:ps`) at 120x36: two hosts' loaded models from telemetry
written here with fixed values and a fixed clock (`Backend(control=False)`): a CPU model idle
with its unload counting down, a GPU model at work, one kept for ever, and a replica count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bitinglip.config import Profile
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.plane import ControlPlane
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from tests.conftest import FAST_QUEUE
from tests.tui.test_snapshots_models import SIZE, until_rows

NOW = 1_790_000_000.0
FLEET = """
[[hosts]]
name = "gpu-a"
kind = "ssh"
address = "10.0.0.2"

[models.qwen-small]
source = "hf:org/qwen-GGUF"
file = "qwen-Q4_K_M.gguf"
min_replicas = 2
"""
MIB = 1 << 20


def write_loaded(plane: ControlPlane) -> None:
    models = plane.profile.data_dir / "models"
    settings = {"n_ctx": 4096, "parallel": 1, "gpu_layers": 0, "threads": 2}
    local = {
        "at": NOW - 1,
        "gpus": [],
        "loaded": [
            {
                "path": str(models / "gemma-3-270m.gguf"),
                "mode": "generate",
                "settings": settings,
                "running": 0,
                "queued": 0,
                "idle_s": 41.0,
                "keep_alive_s": 300.0,
                "unloads_in_s": 259.0,
                "rss_bytes": 412 * MIB,
                "gpu_memory_bytes": None,
                "loaded_at": NOW - 300,
            }
        ],
    }
    busy = {
        "path": "/w/models/qwen-small.gguf",
        "mode": "chat",
        "settings": {"n_ctx": 8192, "parallel": 4, "gpu_layers": -1, "split_mode": "layer"},
        "running": 3,
        "queued": 2,
        "idle_s": None,
        "keep_alive_s": 300.0,
        "unloads_in_s": None,
        "rss_bytes": 980 * MIB,
        "gpu_memory_bytes": 5120 * MIB,
        "loaded_at": NOW - 1200,
    }
    forever = busy | {
        "path": "/w/models/nomic-embed.gguf",
        "mode": "embed",
        "settings": {"n_ctx": 2048, "split_mode": "none", "main_gpu": 1},
        "running": 0,
        "queued": 0,
        "idle_s": 3600.0,
        "keep_alive_s": -1.0,
        "gpu_memory_bytes": 310 * MIB,
    }
    gpu = {"at": NOW, "gpus": [{"index": 0}, {"index": 1}], "loaded": [busy, forever]}
    TelemetryRing().record(plane.store, [("local", local), ("gpu-a", gpu)])


@pytest.fixture
def loaded_backend(make_profile: Callable[..., Profile]) -> Iterator[Backend]:
    backend = Backend(make_profile(body=FAST_QUEUE + FLEET), control=False)
    backend.start()
    backend.call_sync(write_loaded)
    try:
        yield backend
    finally:
        backend.close()


def test_loaded_view(loaded_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(loaded_backend, start="ps", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("ps", 3))
