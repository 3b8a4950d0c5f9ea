"""Profile keys for retention: `[retention]`, how long finished tasks keep what they stored.

`outputs`: how long after it finished a task keeps its outputs (result, output chunks, events)
and its payload (the prompt); after that the controller prunes them and marks the task pruned,
so readers tell "pruned" from "no result". `tasks`: how long its row stays at all. Each is a
duration as elsewhere in the profile (`duration_seconds`: seconds, `"90s"`, `"5m"`, `"1h30m"`)
with days added (`"7d"`, `"1d12h"`), or `"forever"`. The defaults keep a week of history whole
(outputs for 7 days) and the rows, with their states and errors, for 30. Standard library only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bitinglip.config_serving import duration_seconds
from bitinglip.config_tables import Table, describe

__all__ = [
    "DAY_S",
    "FOREVER",
    "MIN_RETENTION_S",
    "RETENTION_FIX",
    "RETENTION_KEYS",
    "RetentionConfig",
    "parse_retention",
    "retention_seconds",
    "retention_text",
]

DAY_S = 86_400.0
FOREVER = math.inf
MIN_RETENTION_S = 60.0  # a waiting client (the gateway, `--wait`) reads its result well within it
RETENTION_FIX = (
    'use a duration of at least a minute: seconds, or a string like "7d", "36h", "90m", '
    '"1d12h"; or "forever"'
)
_DAYS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)d(.*)")


def retention_seconds(value: object) -> float | None:
    """Seconds for a retention (`"7d"`, `"36h"`, 3600, `"forever"` is `math.inf`); None when
    `value` is not one (negative durations included). Days are added to `duration_seconds`."""
    if value == "forever":
        return FOREVER
    days = 0.0
    if isinstance(value, str) and (match := _DAYS.fullmatch(value.strip())):
        days, value = float(match.group(1)) * DAY_S, match.group(2) or "0"
    seconds = duration_seconds(value)
    if seconds is None or seconds < 0:
        return None
    return days + seconds


def retention_text(seconds: float) -> str:
    """A retention as the profile writes it: `"7d"`, `"36h"`, `"90m"`, `"45s"`, `"forever"`."""
    if math.isinf(seconds):
        return "forever"
    for unit, size in (("d", DAY_S), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class RetentionConfig:
    """Seconds after a task finished (`math.inf`: forever) that it keeps its outputs, events,
    result and payload (`outputs`), and its row (`tasks`, never shorter than `outputs`)."""

    outputs: float = 7 * DAY_S
    tasks: float = 30 * DAY_S

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": retention_text(self.outputs), "tasks": retention_text(self.tasks)}


RETENTION_KEYS = ("outputs", "tasks")


def parse_retention(table: Table) -> RetentionConfig:
    default = RetentionConfig()
    outputs = _read(table, "outputs", default.outputs)
    tasks = _read(table, "tasks", max(default.tasks, outputs))
    if tasks < outputs:
        problem = (
            f"rows kept {retention_text(tasks)} are shorter than outputs "
            f"({retention_text(outputs)}): a row goes with its outputs"
        )
        key = "tasks" if "tasks" in table else "outputs"
        table.fail(key, problem, 'keep tasks at least as long as outputs, or make it "forever"')
    return RetentionConfig(outputs=outputs, tasks=tasks)


def _read(table: Table, key: str, default: float) -> float:
    if key not in table:
        return default
    value = table.data[key]
    seconds = retention_seconds(value)
    if seconds is None:
        table.fail(key, f"{describe(value)} is not a duration", RETENTION_FIX)
    if seconds < MIN_RETENTION_S:
        table.fail(key, f"{describe(value)} is shorter than a minute", RETENTION_FIX)
    return seconds
