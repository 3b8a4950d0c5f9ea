"""GPUs: one line per GPU across the fleet, nvitop-like: host, index, name, utilisation bar,
memory bar, temperature, power and a sparkline of its recent utilisation.

The same read as the Hosts view (its own `FleetReader`, two queries a refresh); `RowList`
repaints only the GPUs whose numbers changed, and only the lines on screen. `/` filters: free
text (host or GPU name), `host:NAME`, `gpu:TEXT` (index or name), `-word` to exclude. Enter on a
GPU opens its host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.widgets import Static

from bitinglip.control import ControlPlane, FleetReader
from bitinglip.tui.context import Context
from bitinglip.tui.messages import OpenHost
from bitinglip.tui.views.base import View
from bitinglip.tui.views.host_paint import Columns, header, paint_gpu
from bitinglip.tui.views.host_rows import GpuRow, gpu_fields, gpu_rows, matches
from bitinglip.tui.widgets import HeaderLine, RowList

HOST_WIDTH = 14


@dataclass(frozen=True)
class GpusData:
    rows: list[GpuRow]  # the GPUs the filter keeps
    gpus: int  # GPUs in the fleet
    hosts: int  # hosts reporting GPUs
    busy: int  # GPUs above 0% utilisation


class GpusView(View):
    VIEW = "gpus"
    title = "GPUs"
    DEFAULT_CSS = """
    GpusView #gpus-summary { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.reader = FleetReader()  # used on the backend thread only
        self._summary = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="gpus-summary", classes="summary")
        yield HeaderLine(
            lambda width: header(Columns.fit(width, HOST_WIDTH), "HOST"), id="gpus-columns"
        )
        yield RowList(lambda gpu, width: paint_gpu(gpu, width, HOST_WIDTH), id="gpus-list")

    def fetch(self, plane: ControlPlane) -> GpusData:
        names = [h.name for h in plane.profile.hosts]
        telemetry = plane.fleet.telemetry(self.reader, names)
        rows: list[GpuRow] = []
        for name in names:
            rows.extend(gpu_rows(name, telemetry.latest.get(name) or {}, telemetry.history))
        words = self.filter_text.split()
        return GpusData(
            rows=[r for r in rows if matches(words, gpu_fields(r))],
            gpus=len(rows),
            hosts=len({r.host for r in rows}),
            busy=sum(1 for r in rows if r.util),
        )

    def show(self, data: Any) -> None:
        assert isinstance(data, GpusData)
        listing = self.query_one("#gpus-list", RowList)
        listing.set_rows([(row.key, row, 1) for row in data.rows])
        shown = "" if len(data.rows) == data.gpus else f", {len(data.rows)} shown"
        summary = f"{data.gpus} GPU(s) on {data.hosts} host(s), {data.busy} busy{shown}."
        if not data.gpus:
            summary = "No GPU reported: agents without NVML (nvidia-ml-py) report none."
        if summary != self._summary:
            self._summary = summary
            self.query_one("#gpus-summary", Static).update(summary)

    @on(RowList.Selected, "#gpus-list")
    def _open_host(self, event: RowList.Selected) -> None:
        host = event.key.rpartition("/")[0]
        config = next((h for h in self.context.profile.hosts if h.name == host), None)
        if config is not None:
            self.post_message(OpenHost(config))
