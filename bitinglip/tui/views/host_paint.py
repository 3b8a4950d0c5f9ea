"""Painting hosts and GPUs into lines (`Strip`s) for `RowList`.

A GPU line and a host's CPU line share one column layout (`Columns`, from the width), so bars
line up down the whole fleet:

    GPU NAME        UTIL ███▌   63%  MEMORY ███  40.1/80.0G  TEMP █  61C  POWER █ 312/700W  ▁▂▃▅
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from bitinglip.tui.views.host_rows import GpuRow, HostRow
from bitinglip.tui.widgets import (
    BAD_STYLE,
    BOLD,
    DIM,
    OK_STYLE,
    WARN_STYLE,
    Segments,
    bar,
    line,
    sparkline,
    text,
)

GIB = 1 << 30
INDENT = 4
NAME_W = 16
HOT_C = 90.0  # the temperature bar is full here
SIGNAL_MARKS = {"ok": ("✓", OK_STYLE), "bad": ("✗", BAD_STYLE), "unknown": ("?", DIM)}
VERDICT_STYLES = {"healthy": OK_STYLE, "unhealthy": BAD_STYLE, "not seen": DIM}
# Cells of text beside the bars: index, name, util %, memory, temp, power, and the gaps.
_FIXED = 4 + (NAME_W + 1) + 6 + 15 + 6 + 11


@dataclass(frozen=True)
class Columns:
    """Bar and sparkline widths for a line `width` cells wide after a `prefix`."""

    prefix: int
    util: int
    mem: int
    temp: int
    power: int
    spark: int

    @classmethod
    def fit(cls, width: int, prefix: int) -> Columns:
        room = max(width - prefix - _FIXED, 0)
        wide = min(max(room * 22 // 100, 3), 20)
        narrow = min(max(room * 10 // 100, 2), 10)
        spark = max(room - 2 * wide - 2 * narrow, 0)
        return cls(prefix, wide, wide, narrow, narrow, spark)


def header(columns: Columns, first: str) -> Segments:
    """The column names above GPU lines; `first` fills the prefix (e.g. "HOST")."""
    c = columns
    return [
        text(first, DIM, c.prefix),
        text("GPU", DIM, 4),
        text("NAME", DIM, NAME_W + 1),
        text("UTIL", DIM, c.util + 6),
        text("MEMORY", DIM, c.mem + 15),
        text("TEMP", DIM, c.temp + 6),
        text("POWER", DIM, c.power + 11),
        text("HISTORY (util %)", DIM, c.spark),
    ]


def gpu_segments(gpu: GpuRow, c: Columns) -> Segments:
    return [
        text(str(gpu.index), BOLD, 4),
        text(gpu.name, None, NAME_W + 1),
        *bar(None if gpu.util is None else gpu.util / 100, c.util),
        text(_pct(gpu.util).rjust(5) + " "),
        *bar(_fraction(gpu.mem_used, gpu.mem_total), c.mem),
        text(" " + _used_of(gpu.mem_used, gpu.mem_total).rjust(13) + " "),
        *bar(None if gpu.temp is None else gpu.temp / HOT_C, c.temp),
        text(_celsius(gpu.temp).rjust(5) + " "),
        *bar(_fraction(gpu.power, gpu.power_limit), c.power),
        text(" " + _watts(gpu.power, gpu.power_limit).rjust(9) + " "),
        *sparkline(gpu.history, c.spark),
    ]


def cpu_segments(host: HostRow, c: Columns) -> Segments:
    """The host's own numbers in the GPU columns: CPU %, RAM, load, free disk, CPU history."""
    load = "-" if host.load is None else f"{host.load:.2f}"
    disk = "-" if host.disk_free is None else f"{host.disk_free / GIB:.0f}G"
    return [
        text("", None, 4),
        text("CPU / RAM", DIM, NAME_W + 1),
        *bar(None if host.cpu is None else host.cpu / 100, c.util),
        text(_pct(host.cpu).rjust(5) + " "),
        *bar(_fraction(host.ram_used, host.ram_total), c.mem),
        text(" " + _used_of(host.ram_used, host.ram_total).rjust(13) + " "),
        text(f"load {load}"[: c.temp + 6].ljust(c.temp + 6), DIM),
        text(f"disk {disk} free"[: c.power + 11].ljust(c.power + 11), DIM),
        *sparkline(host.cpu_history, c.spark),
    ]


def paint_host(host: HostRow, width: int) -> list[Strip]:
    """A host's lines: its name and health, the why (when there is one), CPU/RAM, its GPUs."""
    columns = Columns.fit(width, INDENT)
    indent = text(" " * INDENT)
    lines = [line(host_line(host), width)]
    if host.why is not None:
        style = BAD_STYLE if host.why_bad else WARN_STYLE
        style = DIM if host.verdict == "not seen" else style
        lines.append(line([indent, text(f"why: {host.why}", style)], width))
    lines.append(line([indent, *cpu_segments(host, columns)], width))
    lines.extend(line([indent, *gpu_segments(g, columns)], width) for g in host.gpus)
    return lines


def host_line(host: HostRow) -> Segments:
    verdict = host.verdict + (" (stale)" if host.stale else "")
    segments = [
        text(host.name, BOLD, max(len(host.name) + 2, 14)),
        text(f"{host.kind} {host.address}", DIM, max(len(host.address) + 6, 22)),
        text(verdict, VERDICT_STYLES.get(host.verdict, DIM), len(verdict) + 2),
    ]
    for name, state in host.signals:
        mark, style = SIGNAL_MARKS.get(state, ("?", DIM))
        segments.append(Segment(f"{mark}{name} ", style))
    gpus = len(host.gpus)
    count = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
    segments.append(text(f" {count}, seen {host.seen}", DIM))
    return segments


def paint_gpu(gpu: GpuRow, width: int, host_width: int = 14) -> list[Strip]:
    """One GPU of the GPUs view: its host, then the GPU columns."""
    columns = Columns.fit(width, host_width)
    return [
        line([text(gpu.host, Style(bold=True), host_width), *gpu_segments(gpu, columns)], width)
    ]


def _fraction(used: float | None, total: float | None) -> float | None:
    if used is None or not total:
        return None
    return used / total


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _celsius(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}C"


def _used_of(used: int | None, total: int | None) -> str:
    """ "40.1/80.0G"; "-" when both are unknown."""
    if used is None and total is None:
        return "-"
    u = "-" if used is None else f"{used / GIB:.1f}"
    t = "-" if total is None else f"{total / GIB:.1f}"
    return f"{u}/{t}G"


def _watts(power: float | None, limit: float | None) -> str:
    drawn = "-" if power is None else f"{power:.0f}"
    return f"{drawn}W" if limit is None else f"{drawn}/{limit:.0f}W"
