"""Pulls: the `pull` and `remove` tasks, newest first, with each pull's progress as the agent
reports it (bytes done of the total, speed, ETA: `Task.progress`) and the error of one that
failed; the line under the table says more about the highlighted task. Enter opens the task
(`TaskScreen`: its events, result and error, followed live); the cancel key cancels a pull or a
removal (asks first). `/` filters: free text, `state:running`, `host:NAME`, `kind:remove`,
`-word` excludes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from bitinglip.control import PULL_KINDS, TERMINAL, ControlPlane, Task, TaskState
from bitinglip.errors import BitinglipError
from bitinglip.readable import age, error_line, human_size
from bitinglip.tui.context import Context
from bitinglip.tui.forms import confirm
from bitinglip.tui.messages import OpenTask, Reported
from bitinglip.tui.views.base import View
from bitinglip.tui.views.model_rows import keep

LIMIT = 500
BAR = 10
ERROR_WIDTH = 18
COLUMNS = (
    "id",
    "kind",
    "file",
    "host",
    "state",
    "progress",
    "bytes",
    "speed",
    "eta",
    "age",
    "error",
)


@dataclass(frozen=True)
class PullRow:
    task_id: int
    kind: str
    file: str
    host: str
    state: TaskState
    done: int | None  # bytes on the host (None: not known, e.g. a remove)
    total: int | None
    speed: float | None  # bytes/s while running
    eta_s: float | None
    created_at: float
    error: str | None

    @classmethod
    def of(cls, task: Task) -> PullRow:
        payload: dict[str, Any] = task.payload if isinstance(task.payload, dict) else {}
        file: dict[str, Any] = payload["file"] if isinstance(payload.get("file"), dict) else {}
        progress = task.progress if isinstance(task.progress, dict) else {}
        name = file.get("name") or str(payload.get("dest", "?")).rsplit("/", 1)[-1]
        total = progress.get("total", file.get("size"))
        done = progress.get("bytes")
        if task.state == TaskState.SUCCEEDED and task.kind == "pull":
            done = total
        running = task.state == TaskState.RUNNING
        return cls(
            task_id=task.id,
            kind=task.kind,
            file=str(name),
            host=task.host or task.ran_on or "-",
            state=task.state,
            done=None if done is None else int(done),
            total=None if total is None else int(total),
            speed=float(progress["bytes_per_s"])
            if running and progress.get("bytes_per_s")
            else None,
            eta_s=float(progress["eta_s"])
            if running and progress.get("eta_s") is not None
            else None,
            created_at=task.created_at,
            error=task.error,
        )

    def cells(self, now: float) -> tuple[str, ...]:
        sizes = "-" if self.total is None else human_size(self.total)
        if self.total is not None and self.done is not None:
            sizes = f"{of_total(self.done, self.total)}/{sizes}"
        return (
            str(self.task_id),
            self.kind,
            self.file,
            self.host,
            str(self.state),
            bar(self.done, self.total),
            sizes,
            f"{human_size(int(self.speed))}/s" if self.speed else "",
            age(self.eta_s) if self.eta_s is not None else "",
            age(now - self.created_at),
            clip(self.first_error, ERROR_WIDTH),
        )

    @property
    def first_error(self) -> str:
        lines = (self.error or "").strip().splitlines()
        return lines[0] if lines else ""

    @property
    def line(self) -> str:
        """What the view says about the highlighted task below the table."""
        head = f"task {self.task_id}: {self.kind} {self.file} on {self.host}, {self.state}"
        return f"{head}: {self.first_error}" if self.error else head


def of_total(done: int, total: int) -> str:
    """`done` in the unit `human_size` gives `total` ("2.1" of "5.0 GiB")."""
    for shift in (30, 20, 10):
        if total >= 1 << shift:
            return f"{done / (1 << shift):.1f}"
    return str(done)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def bar(done: int | None, total: int | None) -> str:
    if not total or done is None:
        return ""
    fraction = min(max((done or 0) / total, 0.0), 1.0)
    filled = int(fraction * BAR)
    return "█" * filled + "░" * (BAR - filled) + f" {int(fraction * 100):3d}%"


def read_pulls(plane: ControlPlane) -> list[PullRow]:
    tasks = plane.tasks(kinds=PULL_KINDS, limit=LIMIT)
    return [PullRow.of(t) for t in tasks]


class PullsView(View):
    VIEW = "pulls"
    title = "Pulls"
    ACTIONS: ClassVar[dict[str, str]] = {"cancel": "cancel"}

    DEFAULT_CSS = """
    PullsView #pulls-summary { height: 1; padding: 0 1; color: $text-muted; }
    PullsView #pulls-table { height: 1fr; }
    PullsView #pulls-detail { height: auto; max-height: 4; padding: 0 1; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.shown: list[PullRow] = []
        self._painted: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="pulls-summary", classes="summary")
        yield DataTable(id="pulls-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="pulls-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#pulls-table", DataTable).add_columns(*COLUMNS)

    def fetch(self, plane: ControlPlane) -> list[PullRow]:
        return read_pulls(plane)

    def show(self, data: Any) -> None:
        assert isinstance(data, list)
        rows = [r for r in data if keep(self.filter_text, _text(r), _tags(r))]
        now = self.context.now()
        painted = (tuple(rows), int(now))
        if painted != self._painted:
            self._paint(rows, now)
            self._painted = painted
        running = sum(1 for r in data if r.state == TaskState.RUNNING)
        failed = sum(1 for r in data if r.state in (TaskState.FAILED, TaskState.DEAD))
        line = f"{len(data)} pull/remove task(s): {running} running, {failed} failed"
        if len(rows) != len(data):
            line += f"; {len(rows)} shown"
        self.query_one("#pulls-summary", Static).update(line)
        self._show_detail()

    def _paint(self, rows: list[PullRow], now: float) -> None:
        table: DataTable[str] = self.query_one("#pulls-table", DataTable)
        selected = self.selected
        table.clear()
        for row in rows:
            table.add_row(*row.cells(now), key=str(row.task_id))
        self.shown = rows
        ids = [r.task_id for r in rows]
        if selected is not None and selected.task_id in ids:
            table.move_cursor(row=ids.index(selected.task_id), animate=False)

    @property
    def selected(self) -> PullRow | None:
        table = self.query_one("#pulls-table", DataTable)
        if 0 <= table.cursor_row < len(self.shown):
            return self.shown[table.cursor_row]
        return None

    @on(DataTable.RowHighlighted, "#pulls-table")
    def _show_detail(self) -> None:
        row = self.selected
        self.query_one("#pulls-detail", Static).update(row.line if row is not None else "")

    @on(DataTable.RowSelected, "#pulls-table")
    def _open(self) -> None:
        """The task's detail (events, result, error), followed live."""
        row = self.selected
        if row is not None:
            self.post_message(OpenTask(row.task_id))

    def action_cancel(self) -> None:
        row = self.selected
        if row is None:
            self.post_message(Reported("cancel", False, "no pull to cancel"))
            return
        if row.state in TERMINAL:
            self.post_message(Reported("cancel", False, f"task {row.task_id} already {row.state}"))
            return
        task_id = row.task_id

        def cancel() -> None:
            self.run_worker(
                self._cancel(task_id), group="cancel", exit_on_error=False, description="cancel"
            )

        what = f"the {row.kind} of {row.file} on {row.host} (task {task_id})"
        confirm(self, f"Cancel {what}?", cancel)

    async def _cancel(self, task_id: int) -> None:
        try:
            outcome = await self.context.backend.call(ControlPlane.cancel, [task_id])
        except BitinglipError as exc:
            self.post_message(Reported("cancel", False, error_line(exc)))
            return
        result = outcome.get(task_id, "not found")
        ok = result in ("canceled", "cancel requested")
        self.post_message(Reported("cancel", ok, f"task {task_id}: {result}"))
        self.reload()


def _text(row: PullRow) -> str:
    return f"{row.task_id} {row.kind} {row.file} {row.host} {row.state} {row.error or ''}"


def _tags(row: PullRow) -> dict[str, set[str]]:
    return {"state": {str(row.state)}, "host": {row.host}, "kind": {row.kind}}
