"""Logs: the control plane's log and each agent's lines, followed live, searchable.

The lines come from the backend's `LogRing` (the `bitinglip` logger: the control loop, the SSH
sessions, and the local agents' stderr, which the control plane logs as `agent <host>: ...`).
`/` filters: free text, `host:NAME` (that host's lines), `level:warning`, `-text` to exclude.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Log, Static

from bitinglip.control.plane import ControlPlane
from bitinglip.tui.backend import LogLine
from bitinglip.tui.views.base import View

SHOWN = 2_000
LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogsData:
    lines: list[LogLine]
    total: int  # lines ever logged: the view appends only the new ones


class LogsView(View):
    VIEW = "logs"
    title = "Logs"

    def __init__(self) -> None:
        super().__init__()
        self._seen = 0
        self._painted_filter: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="logs-summary", classes="summary")
        yield Log(id="logs-text", max_lines=SHOWN, auto_scroll=True)

    def fetch(self, plane: ControlPlane) -> LogsData:
        ring = self.console.backend.log
        return LogsData(list(ring.lines), ring.total)

    def show(self, data: Any) -> None:
        assert isinstance(data, LogsData)
        log = self.query_one("#logs-text", Log)
        keep = line_filter(self.filter_text)
        if self._painted_filter != self.filter_text:
            log.clear()
            new = data.lines
            self._painted_filter = self.filter_text
        else:
            new = data.lines[max(0, len(data.lines) - (data.total - self._seen)) :]
        self._seen = data.total
        shown = [format_line(line) for line in new if keep(line)]
        if shown:
            log.write_lines(shown[-SHOWN:])
        where = f" matching {self.filter_text!r}" if self.filter_text else ""
        self.query_one("#logs-summary", Static).update(
            f"{data.total} line(s) logged this session{where}; "
            f"also in {self.console.backend.log.path or 'memory only'}"
        )


def format_line(line: LogLine) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line.at))
    return f"{stamp} {line.level:<7} {line.text}"


def line_filter(text: str) -> Any:
    """A predicate over log lines for a `/` filter: words must all match (AND); `host:NAME`
    keeps that host's lines, `level:LEVEL` that level and above, `-word` excludes."""
    tests = []
    for word in text.split():
        negate = word.startswith("-") and len(word) > 1
        word = word[1:] if negate else word
        key, sep, value = word.partition(":")
        if sep and key == "host":
            test = _host_test(value)
        elif sep and key == "level" and value.lower() in LEVELS:
            floor = LEVELS.index(value.lower())
            test = _level_test(floor)
        else:
            test = _text_test(word.lower())
        tests.append((negate, test))

    def keep(line: LogLine) -> bool:
        return all(test(line) != negate for negate, test in tests)

    return keep


def _host_test(host: str) -> Any:
    return lambda line: line.source.split(" ")[-1] == host and line.source != "control"


def _level_test(floor: int) -> Any:
    return lambda line: line.level in LEVELS and LEVELS.index(line.level) >= floor


def _text_test(word: str) -> Any:
    return lambda line: word in line.text.lower()
