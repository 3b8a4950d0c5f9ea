"""Tasks: a live page of the queue, filtered, sorted, with the operator's actions.

`fetch` reads one page (`PAGE` rows in the current filter and sort) and the counts by state in
one snapshot; `show` lays out only the rows whose cells changed and hands the list the new
order (`task_table.TaskList` draws each row once per change), so a refresh costs what changed,
and the cursor stays on the same task.

`/` filters (`parse_task_filter` of `bitinglip.control`): free text, `state:`, `kind:`, `host:`,
`model:`, `job:`, `-` negates, words are AND-ed. `sort` cycles the sort column (a header click
picks one; clicking it again reverses). Enter opens the task; cancel, retry, priority act on the
task under the cursor; submit opens the submit form; batch queues a JSONL file as a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import Static

from bitinglip.control import (
    SORTS,
    ControlPlane,
    Job,
    TaskFilter,
    TaskPage,
    TaskRow,
    parse_task_filter,
)
from bitinglip.errors import InputError
from bitinglip.readable import age
from bitinglip.tui.context import Context
from bitinglip.tui.messages import CrumbsChanged, OpenTask
from bitinglip.tui.views.base import View
from bitinglip.tui.views.task_actions import TaskActions
from bitinglip.tui.views.task_table import COLUMNS, TaskHeader, TaskList, lay_out

PAGE = 200
STATE_STYLES = {
    "queued": "",
    "running": "bold yellow",
    "succeeded": "green",
    "failed": "red",
    "dead": "bold red",
    "canceled": "dim",
}


class TasksView(View):
    VIEW = "tasks"
    title = "Tasks"
    ACTIONS: ClassVar[dict[str, str]] = {
        "submit": "submit",
        "batch": "batch",
        "cancel": "cancel",
        "retry": "retry",
        "priority": "priority",
        "sort": "sort",
    }
    DEFAULT_CSS = """
    TasksView #tasks-summary { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.sort = "id"
        self.descending = SORTS["id"][1]
        self._filter = parse_task_filter("")
        self._painted: dict[int, tuple[Any, ...]] = {}  # task id -> its cells on screen
        self._rows: dict[int, TaskRow] = {}
        self._summary_shown = ""
        self.actions = TaskActions(self, context, self.reload)

    def compose(self) -> ComposeResult:
        yield Static("", id="tasks-summary")
        yield TaskHeader(id="tasks-header")
        yield TaskList(id="tasks-table")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(TaskHeader).show_sort(self.sort, self.descending)

    @property
    def table(self) -> TaskList:
        return self.query_one("#tasks-table", TaskList)

    # -- filtering and sorting -------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        try:
            self._filter = parse_task_filter(text.strip())
        except InputError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        super().set_filter(text)

    def set_sort(self, column: str, descending: bool | None = None) -> None:
        self.sort = column
        self.descending = SORTS[column][1] if descending is None else descending
        self.query_one(TaskHeader).show_sort(self.sort, self.descending)
        self.reload()

    def action_sort(self) -> None:
        columns = list(SORTS)
        self.set_sort(columns[(columns.index(self.sort) + 1) % len(columns)])

    @on(TaskHeader.ColumnClicked)
    def _header_clicked(self, event: TaskHeader.ColumnClicked) -> None:
        if event.column == self.sort:
            self.set_sort(event.column, not self.descending)
        else:
            self.set_sort(event.column)

    # -- refreshing ------------------------------------------------------------------------

    def fetch(self, plane: ControlPlane) -> TaskPage:
        return plane.task_page(self._filter, self.sort, self.descending, PAGE)

    def show(self, data: Any) -> None:
        assert isinstance(data, TaskPage)
        self._paint_rows(data.rows)
        summary = self._summary(data, self._filter)
        if summary != self._summary_shown:  # an update costs a layout pass
            self._summary_shown = summary
            self.query_one("#tasks-summary", Static).update(summary)

    def _summary(self, page: TaskPage, found: TaskFilter) -> str:
        total = sum(page.counts.values())
        parts = [f"{total:,} task{'' if total == 1 else 's'}"] + [
            f"{n:,} {s}" for s, n in page.counts.items() if n
        ]
        shown = f"showing {len(page.rows):,}"
        if found.where:
            shown += f" of {page.matching:,} matching"
        elif page.matching > len(page.rows):
            shown += f" of {page.matching:,}"
        order = f"{COLUMNS[self.sort][0]} {'↓' if self.descending else '↑'}"
        return " · ".join(parts) + f"   |   {shown} · sorted by {order}"

    def _paint_rows(self, rows: list[TaskRow]) -> None:
        """Lay out only the rows whose cells changed; the list keeps the rest."""
        now = self.context.now()
        changed: dict[int, Text] = {}
        painted: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            cells = painted[row.id] = task_cells(row, now)
            if self._painted.get(row.id) != cells:
                changed[row.id] = lay_out(cells)
        self._painted = painted
        self._rows = {row.id: row for row in rows}
        self.table.set_rows([row.id for row in rows], changed)

    # -- the task under the cursor ---------------------------------------------------------

    def selected_id(self) -> int | None:
        return self.table.selected_id

    def _selected(self) -> TaskRow | None:
        task_id = self.selected_id()
        row = self._rows.get(task_id) if task_id is not None else None
        if row is None:
            self.notify("no task selected", severity="warning")
        return row

    @on(TaskList.Selected)
    def _opened(self, event: TaskList.Selected) -> None:
        self.open_task(event.task_id)

    def open_task(self, task_id: int) -> None:
        self.post_message(OpenTask(task_id))

    def action_cancel(self) -> None:
        row = self._selected()
        if row is not None:
            self.actions.cancel(row.id, f"{row.kind}, {row.state}")

    def action_retry(self) -> None:
        row = self._selected()
        if row is not None:
            self.actions.retry(row.id, f"{row.kind}, {row.state}")

    def action_priority(self) -> None:
        row = self._selected()
        if row is not None:
            self.actions.priority(row.id, row.priority)

    def action_submit(self) -> None:
        self.actions.submit(self.open_task)

    def action_batch(self) -> None:
        self.actions.batch(lambda job: self.call_later(self._show_job, job))

    def _show_job(self, job: Job) -> None:
        self.set_filter(f"job:{job.id}")
        self.post_message(CrumbsChanged())


def task_cells(row: TaskRow, now: float) -> tuple[Any, ...]:
    """The table's cells for one task, in `COLUMNS` order."""
    model = row.model or ""
    if model.endswith(".gguf"):
        model = Path(model).name
    return (
        row.id,
        row.kind,
        model,
        row.host or "",
        Text(row.state, style=STATE_STYLES.get(row.state, "")),
        row.priority,
        f"{row.attempt}/{row.max_attempts}",
        age(now - row.created_at),
        "" if row.tokens_per_s is None else f"{row.tokens_per_s:.1f}",
    )
