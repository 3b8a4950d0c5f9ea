"""Logs: the control plane's log and each agent's lines, followed live, searchable.

The lines come from the backend's `LogRing` (the `bitinglip` logger: the control loop, the SSH
sessions, and the local agents' stderr, which the control plane logs as `agent <host>: ...`).
`/` filters: free text, `host:NAME` (that host's lines), `level:warning`, `-text` to exclude.
With `host:NAME` of an SSH host, the tail of that host's own agent log (it runs detached and
writes it on the host) is read over SSH every few seconds and shown first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Log, Static

from bitinglip.control import ControlPlane, agent_log
from bitinglip.errors import BitinglipError
from bitinglip.tui.backend import LogLine
from bitinglip.tui.context import Context
from bitinglip.tui.views.base import View

SHOWN = 2_000
REMOTE_EVERY_S = 5.0
LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogsData:
    lines: list[LogLine]
    total: int  # lines ever logged: the view appends only the new ones


class LogsView(View):
    VIEW = "logs"
    title = "Logs"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._seen = 0
        self._painted: tuple[str, float] | None = None  # (filter, remote fetch time) on screen
        self._remote: tuple[str, float, list[str]] | None = None  # host, fetched at, lines

    def compose(self) -> ComposeResult:
        yield Static("", id="logs-summary", classes="summary")
        yield Log(id="logs-text", max_lines=SHOWN, auto_scroll=True)

    def fetch(self, plane: ControlPlane) -> LogsData:
        ring = self.context.backend.log
        return LogsData(list(ring.lines), ring.total)

    def show(self, data: Any) -> None:
        assert isinstance(data, LogsData)
        log = self.query_one("#logs-text", Log)
        keep = line_filter(self.filter_text)
        remote = self._remote_lines()
        painted = (self.filter_text, remote[0] if remote else 0.0)
        if self._painted != painted:
            log.clear()
            if remote:
                log.write_lines(remote[1])
            new = data.lines
            self._painted = painted
        else:
            new = data.lines[max(0, len(data.lines) - (data.total - self._seen)) :]
        self._seen = data.total
        shown = [format_line(line) for line in new if keep(line)]
        if shown:
            log.write_lines(shown[-SHOWN:])
        self._maybe_fetch_remote()
        where = f" matching {self.filter_text!r}" if self.filter_text else ""
        self.query_one("#logs-summary", Static).update(
            f"{data.total} line(s) logged this session{where}; "
            f"also in {self.context.backend.log.path or 'memory only'}"
        )

    # -- an SSH host's own agent log -------------------------------------------------------

    def _remote_host(self) -> str | None:
        """The SSH host named by a `host:NAME` term of the filter, if any."""
        ssh_hosts = {h.name for h in self.context.profile.hosts if h.kind == "ssh"}
        for word in self.filter_text.split():
            key, _, value = word.partition(":")
            if key == "host" and value in ssh_hosts:
                return value
        return None

    def _remote_lines(self) -> tuple[float, list[str]] | None:
        host = self._remote_host()
        if host is None or self._remote is None or self._remote[0] != host:
            return None
        _, at, lines = self._remote
        stamp = time.strftime("%H:%M:%S", time.localtime(at))
        return at, [f"── agent log on {host} (read at {stamp}) ──", *lines, "── this console ──"]

    def _maybe_fetch_remote(self) -> None:
        host = self._remote_host()
        if host is None:
            return
        if (
            self._remote
            and self._remote[0] == host
            and time.time() - self._remote[1] < (REMOTE_EVERY_S)
        ):
            return

        async def fetch() -> None:
            await self._fetch_remote(host)

        self.run_worker(
            fetch,  # type: ignore[arg-type]  # mypy infers Never from WorkType
            group="logs:remote",
            exclusive=True,
            exit_on_error=False,
            description=f"agent log of {host}",
        )

    async def _fetch_remote(self, host: str) -> None:
        try:
            lines = await agent_log(self.context.profile, host)
        except BitinglipError as exc:
            lines = [f"(could not read the agent log: {exc})"]
        self._remote = (host, time.time(), lines)
        self.reload()


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
