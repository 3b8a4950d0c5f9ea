"""Loaded (`:ps`): every model loaded on every host, as `bitinglip ps` shows it, from the agents'
telemetry the controller stores: the GPU(s), GPU memory and RSS, running and queued requests,
idle for, unloads in, context; the line under the table gives the highlighted model's file and
settings, the summary the replicas of models with `min_replicas` (desired vs ready).

Keys: load (a form: the model, and optionally `@HOST`; a `load` task, followed until it ends)
and unload (the highlighted model from its host, asked first). Both are tasks the control plane
places like any other; hidden when read-only. `/` filters: free text, `host:NAME`, `gpu:0`,
`-word` excludes.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from bitinglip.control import (
    LOADED_COLUMNS,
    TERMINAL,
    ControlPlane,
    LoadedModel,
    LoadedReport,
    Task,
    TaskSpec,
    TaskState,
)
from bitinglip.errors import BitinglipError
from bitinglip.readable import error_line
from bitinglip.tui.context import Context
from bitinglip.tui.forms import ValueForm, confirm
from bitinglip.tui.messages import Reported
from bitinglip.tui.views.base import View
from bitinglip.tui.views.model_rows import keep

POLL_S = 0.25  # how often a load or unload the view started is looked at until it ends


def detail(model: LoadedModel) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(model.settings.items()) if v is not None)
    mode = f" ({model.mode})" if model.mode else ""
    return f"{model.name} on {model.host}{mode}: {model.path}" + (
        f" · {settings}" if settings else ""
    )


def summary(report: LoadedReport, shown: int) -> str:
    hosts = len({m.host for m in report.models})
    line = f"{len(report.models)} model(s) loaded on {hosts} host(s)"
    if report.replicas:
        line += " · replicas " + ", ".join(
            f"{r.model} {len(r.ready)}/{r.desired}" for r in report.replicas
        )
    if report.stale:
        line += " · no recent report from " + ", ".join(sorted(report.stale))
    if shown != len(report.models):
        line += f"; {shown} shown"
    return line


class LoadedView(View):
    VIEW = "ps"
    title = "Loaded"
    ACTIONS: ClassVar[dict[str, str]] = {"load": "load", "unload": "unload"}

    DEFAULT_CSS = """
    LoadedView #ps-summary { height: 1; padding: 0 1; color: $text-muted; }
    LoadedView #ps-table { height: 1fr; }
    LoadedView #ps-detail { height: auto; max-height: 3; padding: 0 1; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.shown: list[LoadedModel] = []
        self._painted: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="ps-summary", classes="summary")
        yield DataTable(id="ps-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="ps-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#ps-table", DataTable).add_columns(*LOADED_COLUMNS)

    def fetch(self, plane: ControlPlane) -> LoadedReport:
        return plane.fleet.loaded(now=self.context.now())

    def show(self, data: Any) -> None:
        assert isinstance(data, LoadedReport)
        rows = [m for m in data.models if keep(self.filter_text, _text(m), _tags(m))]
        painted = tuple(m.cells() for m in rows)
        if painted != self._painted:
            self._paint(rows)
            self._painted = painted
        self.query_one("#ps-summary", Static).update(summary(data, len(rows)))
        self._show_detail()

    def _paint(self, rows: list[LoadedModel]) -> None:
        table: DataTable[str] = self.query_one("#ps-table", DataTable)
        selected = self.selected
        table.clear()
        for model in rows:
            table.add_row(*model.cells(), key=f"{model.host}\n{model.path}")
        self.shown = rows
        keys = [(m.host, m.path) for m in rows]
        if selected is not None and (selected.host, selected.path) in keys:
            table.move_cursor(row=keys.index((selected.host, selected.path)), animate=False)

    @property
    def selected(self) -> LoadedModel | None:
        table = self.query_one("#ps-table", DataTable)
        if 0 <= table.cursor_row < len(self.shown):
            return self.shown[table.cursor_row]
        return None

    @on(DataTable.RowHighlighted, "#ps-table")
    def _show_detail(self) -> None:
        model = self.selected
        self.query_one("#ps-detail", Static).update(detail(model) if model is not None else "")

    # -- actions ---------------------------------------------------------------------------

    def action_load(self) -> None:
        model = self.selected
        start = model.name if model is not None else next(iter(self.context.profile.models), "")

        def chosen(value: str | None) -> None:
            if value:
                name, _, host = value.partition("@")
                spec = TaskSpec(kind="load", model=name.strip(), host=host.strip() or None)
                self._start(spec, f"load {value}")

        self.app.push_screen(ValueForm("Load which model? (MODEL or MODEL@HOST)", start), chosen)

    def action_unload(self) -> None:
        model = self.selected
        if model is None:
            self.post_message(Reported("unload", False, "no loaded model to unload"))
            return
        spec = TaskSpec(kind="unload", model=model.name, host=model.host)
        what = f"unload {model.name} from {model.host}"
        busy = f" ({model.running} running requests finish first)" if model.running else ""
        confirm(
            self, f"Unload {model.name} from {model.host}?{busy}", lambda: self._start(spec, what)
        )

    def _start(self, spec: TaskSpec, what: str) -> None:
        action = str(spec.kind)
        self.run_worker(self._run(spec, what), group=action, exit_on_error=False, description=what)

    async def _run(self, spec: TaskSpec, what: str) -> None:
        """Submit the task, then look at it until it ends (never blocking the backend thread)."""
        action = str(spec.kind)
        backend = self.context.backend
        try:
            task_id = await backend.call(ControlPlane.submit, spec)
            task = await backend.call(ControlPlane.task, task_id)
            while task.state not in TERMINAL:
                await asyncio.sleep(POLL_S)
                task = await backend.call(ControlPlane.task, task_id)
        except BitinglipError as exc:
            self.post_message(Reported(action, False, f"{what}: {error_line(exc)}"))
            return
        self.post_message(Reported(action, task.state == TaskState.SUCCEEDED, ended(task, what)))
        self.reload()


def ended(task: Task, what: str) -> str:
    """One line for how a load or unload task ended."""
    if task.state != TaskState.SUCCEEDED:
        first = (task.error or "no error recorded").strip().splitlines()[0]
        return f"{what}: task {task.id} {task.state}: {first}"
    result = task.result if isinstance(task.result, dict) else {}
    if task.kind == "unload":
        count = int(result.get("unloaded") or 0)
        return f"{what}: done" if count else f"{what}: it was not loaded"
    if result.get("already"):
        return f"{task.model} was already loaded on {task.ran_on}"
    return f"{task.model} loaded on {task.ran_on} in {float(result.get('load_s') or 0):.2f} s"


def _text(model: LoadedModel) -> str:
    return f"{model.host} {model.name} {model.path} {model.gpus}"


def _tags(model: LoadedModel) -> dict[str, set[str]]:
    return {"host": {model.host}, "gpu": set(model.gpus.split(",")), "model": {model.name}}
