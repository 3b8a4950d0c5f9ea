"""What telemetry says of a loaded model's GPUs: the GPUs whose NVML process list has its
child (with their memory summed); nothing said where NVML lists no processes (the control
plane then derives them from the model's settings)."""

from __future__ import annotations

import os
from typing import Any

from bitinglip_agent.telemetry import with_memory


def gpu(index: int, processes: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"index": index, "processes": processes}


def test_the_gpus_nvml_lists_the_child_on() -> None:
    me, other = os.getpid(), os.getpid() + 1
    gpus = [
        gpu(0, [{"pid": other, "memory_bytes": 5}]),
        gpu(1, [{"pid": me, "memory_bytes": 100}]),
        gpu(2, [{"pid": me, "memory_bytes": 50}, {"pid": other, "memory_bytes": 7}]),
    ]
    [entry] = with_memory([{"path": "m.gguf", "pid": me}], gpus)
    assert entry["gpus"] == [1, 2]
    assert entry["gpu_memory_bytes"] == 150
    assert "pid" not in entry and entry["rss_bytes"] > 0


def test_nothing_is_said_without_nvml_processes() -> None:
    [entry] = with_memory([{"path": "m.gguf", "pid": os.getpid()}], [gpu(0, None)])
    assert "gpus" not in entry and entry["gpu_memory_bytes"] is None
