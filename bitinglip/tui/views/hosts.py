"""Hosts (the fleet): every host of the profile with its health signals and the one-line why, its
CPU/RAM, and under it each GPU with bars (utilisation, memory, temperature, power) and a sparkline
of its recent utilisation. Enter drills into a host (`HostScreen`).

One refresh is one read on the backend thread: the hosts' stored health (`plane.fleet.hosts`) and
the telemetry through a `FleetReader` (two queries, history topped up incrementally); rows are built
there too. On screen, `RowList` repaints only the hosts whose values changed, and only their visible
lines. `/` filters: free text, `host:`, `state:` (healthy, unhealthy, not seen), `kind:`, `label:`,
`gpu:`, `-word` to exclude.
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
from bitinglip.tui.views.host_paint import INDENT, Columns, header, paint_host
from bitinglip.tui.views.host_rows import HostRow, host_fields, host_rows, matches
from bitinglip.tui.widgets import HeaderLine, RowList


@dataclass(frozen=True)
class FleetData:
    rows: list[HostRow]  # the hosts the filter keeps
    hosts: int  # hosts in the profile
    healthy: int
    gpus: int


class HostsView(View):
    VIEW = "hosts"
    title = "Hosts"
    DEFAULT_CSS = """
    HostsView #hosts-summary { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.reader = FleetReader()  # used on the backend thread only
        self._summary = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="hosts-summary", classes="summary")
        yield HeaderLine(lambda width: header(Columns.fit(width, INDENT), ""), id="hosts-columns")
        yield RowList(paint_host, id="hosts-list")

    def fetch(self, plane: ControlPlane) -> FleetData:
        hosts = plane.profile.hosts
        stored = plane.fleet.hosts()
        telemetry = plane.fleet.telemetry(self.reader, [h.name for h in hosts])
        rows = host_rows(hosts, stored, telemetry, self.context.now())
        words = self.filter_text.split()
        labels = {h.name: h.labels for h in hosts}
        shown = [r for r in rows if matches(words, host_fields(r, labels[r.name]))]
        return FleetData(
            rows=shown,
            hosts=len(rows),
            healthy=sum(r.verdict == "healthy" for r in rows),
            gpus=sum(len(r.gpus) for r in rows),
        )

    def show(self, data: Any) -> None:
        assert isinstance(data, FleetData)
        listing = self.query_one("#hosts-list", RowList)
        listing.set_rows([(row.name, row, row.lines) for row in data.rows])
        shown = "" if len(data.rows) == data.hosts else f", {len(data.rows)} shown"
        summary = (
            f"{data.hosts} host(s): {data.healthy} healthy, {data.hosts - data.healthy} not healthy"
            f"{shown}; {data.gpus} GPU(s). Enter opens a host."
        )
        if summary != self._summary:
            self._summary = summary
            self.query_one("#hosts-summary", Static).update(summary)

    @on(RowList.Selected, "#hosts-list")
    def _open_host(self, event: RowList.Selected) -> None:
        config = next((h for h in self.context.profile.hosts if h.name == event.key), None)
        if config is not None:
            self.post_message(OpenHost(config))
