"""One host, drilled into from the Hosts view (Enter): its configuration and health signals with
their reasons, the facts its agent reported, its GPUs with their processes, the models it holds
(loaded first) and its recent tasks. Refreshes itself every tick; Escape goes back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from bitinglip.config import HostConfig
from bitinglip.control import ControlPlane, HostModel, HostTask
from bitinglip.readable import age
from bitinglip.tui.context import Context
from bitinglip.tui.views.host_rows import GpuRow, gpu_rows, verdict

GIB = 1 << 30
STATE_STYLES = {"ok": "green", "bad": "red", "unknown": "grey50"}
FACTS = ("hostname", "os", "arch", "python", "cpu_count", "ram_bytes", "version", "model_dir")


@dataclass(frozen=True)
class HostDetail:
    config: HostConfig
    state: Mapping[str, Any] | None  # the hosts table's row (`plane.fleet.hosts`)
    gpus: tuple[GpuRow, ...]
    models: list[HostModel]
    tasks: list[HostTask]


def read_host(plane: ControlPlane, config: HostConfig) -> HostDetail:
    """Everything the screen shows, on the backend thread."""
    fleet = plane.fleet
    snapshot = fleet.snapshot(config.name) or {}
    return HostDetail(
        config=config,
        state=fleet.hosts().get(config.name),
        gpus=gpu_rows(config.name, snapshot, {}),
        models=fleet.models_on(config.name),
        tasks=fleet.recent_tasks(config.name),
    )


class HostScreen(Screen[None]):
    """`HostScreen(context, config, heading)`: `heading` is the console's header line (its
    breadcrumbs end with `crumb`, the host's name), shown at the top of this full screen."""

    DEFAULT_CSS = """
    HostScreen #host-header { height: 1; background: $primary-background; padding: 0 1; }
    HostScreen #host-body { height: 1fr; }
    HostScreen .host-pair { height: auto; }
    HostScreen .host-pair Static { width: 2fr; }
    HostScreen .host-pair Static.wide { width: 3fr; }
    """

    class Shown(Message):
        """The screen painted a fresh read of its host."""

        def __init__(self, host: str) -> None:
            super().__init__()
            self.host = host

    def __init__(self, context: Context, config: HostConfig, heading: str) -> None:
        super().__init__()
        self.context = context
        self.config = config
        self.heading = heading
        self.crumb = config.name
        self.shown = 0  # reads painted so far
        self.detail: HostDetail | None = None  # the last one

    def compose(self) -> ComposeResult:
        yield Static("", id="host-header")
        with VerticalScroll(id="host-body"):
            with Horizontal(classes="host-pair"):
                yield Static("", id="host-health", classes="wide")
                yield Static("", id="host-facts")
            yield Static("", id="host-gpus")
            with Horizontal(classes="host-pair"):
                yield Static("", id="host-models")
                yield Static("", id="host-tasks", classes="wide")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#host-header", Static).update(Text(self.heading))
        self.query_one("#host-body", VerticalScroll).focus()
        self.reload()
        self.set_interval(self.context.tick_s, self.reload)

    def reload(self) -> None:
        self.run_worker(
            self._load(),
            group="load:host",
            exclusive=True,
            exit_on_error=False,
            description=f"refresh host {self.config.name}",
        )

    async def _load(self) -> None:
        detail = await self.context.backend.call(read_host, self.config)
        self.show(detail)
        self.shown += 1
        self.post_message(self.Shown(self.config.name))

    def show(self, detail: HostDetail) -> None:
        self.detail = detail
        now = self.context.now()
        self.query_one("#host-health", Static).update(health_table(detail, now))
        self.query_one("#host-facts", Static).update(facts_table(detail))
        self.query_one("#host-gpus", Static).update(gpus_table(detail))
        self.query_one("#host-models", Static).update(models_table(detail))
        self.query_one("#host-tasks", Static).update(tasks_table(detail, now))


def _table(title: str, *columns: str) -> Table:
    return Table(
        *columns,
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        expand=True,
        header_style="grey50",
    )


def health_table(detail: HostDetail, now: float) -> Table:
    config, state = detail.config, detail.state
    address = "this machine" if config.address is None else f"{config.address}:{config.port}"
    seen = None if state is None else state.get("last_seen")
    title = (
        f"{config.name} ({config.kind}, {address}): {verdict(state)}"
        f", last seen {'-' if seen is None else age(now - seen) + ' ago'}"
    )
    table = _table(title, "signal", "state", "why")
    for name, signal in ((state or {}).get("health") or {}).items():
        color = STATE_STYLES.get(signal["state"], "grey50")
        table.add_row(name, Text(signal["state"], style=color), str(signal["why"]))
    if state is None:
        table.add_row("-", Text("unknown", style="grey50"), "no controller has seen it yet")
    return table


def facts_table(detail: HostDetail) -> Table:
    config = detail.config
    table = _table("facts", "fact", "value")
    labels = ",".join(f"{k}={v}" for k, v in config.labels.items()) or "-"
    table.add_row("labels", labels)
    table.add_row("max concurrency", str(config.max_concurrency))
    facts: dict[str, Any] = (detail.state or {}).get("facts") or {}
    host_facts = facts.get("host")
    merged = {**facts, **(host_facts if isinstance(host_facts, dict) else {})}
    for key in FACTS:
        if merged.get(key) is not None:
            value = merged[key]
            shown = f"{value / GIB:.1f} GiB" if key == "ram_bytes" else str(value)
            table.add_row("ram" if key == "ram_bytes" else key.replace("_", " "), shown)
    capabilities = facts.get("capabilities")
    if isinstance(capabilities, dict):
        have = [name for name, ok in capabilities.items() if ok]
        table.add_row("capabilities", ", ".join(have) or "-")
    return table


def gpus_table(detail: HostDetail) -> Table:
    table = _table("GPUs", "gpu", "name", "util", "memory", "processes (pid: GPU memory)")
    for gpu in detail.gpus:
        processes = ", ".join(
            f"{pid}: {'-' if used is None else f'{used / GIB:.1f} GiB'}"
            for pid, used in gpu.processes
        )
        util = "-" if gpu.util is None else f"{gpu.util:.0f}%"
        used = "-" if gpu.mem_used is None else f"{gpu.mem_used / GIB:.1f}"
        total = "-" if gpu.mem_total is None else f"{gpu.mem_total / GIB:.1f}"
        table.add_row(str(gpu.index), gpu.name, util, f"{used}/{total} GiB", processes or "none")
    if not detail.gpus:
        table.add_row("-", "no GPU reported", "", "", "")
    return table


def models_table(detail: HostDetail) -> Table:
    table = _table("models on this host", "model", "copy", "loaded", "size")
    for model in detail.models:
        size = "-" if model.size is None else f"{model.size / GIB:.2f} GiB"
        state = model.state if model.error is None else f"{model.state}: {model.error}"
        table.add_row(model.name, state, "loaded" if model.loaded else "", size)
    if not detail.models:
        table.add_row("none registered", "", "", "")
    return table


def tasks_table(detail: HostDetail, now: float) -> Table:
    table = _table("recent tasks", "id", "kind", "model", "state", "attempt", "age", "error")
    for task in detail.tasks:
        error = "" if task.error is None else json.dumps(task.error)[1:-1][:60]
        table.add_row(
            str(task.id),
            task.kind,
            task.model or "-",
            task.state,
            str(task.attempt),
            f"{age(now - task.created_at)} ago",
            error,
        )
    if not detail.tasks:
        table.add_row("-", "none yet", "", "", "", "", "")
    return table
