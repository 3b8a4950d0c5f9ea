"""Tasks: a live page of the queue, filtered, sorted, with the operator's actions.

`fetch` reads one page (`PAGE` rows in the current filter and sort) and the counts by state in
one snapshot; `show` lays out only the rows whose cells changed and hands the list the new
order (`task_table.TaskList` draws each row once per change), so a refresh costs what changed,
and the cursor stays on the same task.

Pages follow a keyset cursor (`]` the next page, `[` the one before): a refresh re-reads the
page after (or before) the same task, so rows arriving meanwhile move no row to another page;
back on the first page the view follows the newest tasks again. A read is bounded whatever the
table holds: a filter no index answers alone, or a sort by another column than id or age,
looks at the newest 10,000 tasks only, and the summary says so.

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
from textual.binding import Binding
from textual.widgets import Static

from bitinglip.control import (
    SORTS,
    ControlPlane,
    Cursor,
    Job,
    TaskFilter,
    TaskPage,
    TaskRow,
    parse_task_filter,
)
from bitinglip.control import TASK_WINDOW as WINDOW
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
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        # Not in the footer (it is full at 120 columns): the summary shows them when there is
        # another page.
        Binding("right_square_bracket", "next_page", "next page", show=False),
        Binding("left_square_bracket", "prev_page", "prev page", show=False),
    ]
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
        self._after: Cursor | None = None  # the page read: after this row, before that one,
        self._before: Cursor | None = None  # or (neither) the first page, following the newest
        self.page_no = 1
        self.page_size, self.window = PAGE, WINDOW  # tests make them small
        self._shown: TaskPage | None = None
        self._to_top = False  # a new page: put the list's cursor on its first (or last) row
        self._to_bottom = False
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
        self._first_page()
        super().set_filter(text)

    def set_sort(self, column: str, descending: bool | None = None) -> None:
        self.sort = column
        self.descending = SORTS[column][1] if descending is None else descending
        self._first_page()
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

    # -- paging ----------------------------------------------------------------------------

    def _first_page(self) -> None:
        self._after = self._before = None
        self.page_no = 1

    def action_next_page(self) -> None:
        following = self._shown.next if self._shown is not None else None
        if following is None:
            self.notify("this is the last page", severity="information")
            return
        self._after, self._before = following, None
        self.page_no += 1
        self._to_top = True
        self.reload()

    def action_prev_page(self) -> None:
        previous = self._shown.prev if self._shown is not None else None
        if previous is None:
            self.notify("this is the first page", severity="information")
            return
        self._after, self._before = None, previous
        self.page_no = max(self.page_no - 1, 1)
        self._to_bottom = True
        self.reload()

    # -- refreshing ------------------------------------------------------------------------

    def fetch(self, plane: ControlPlane) -> TaskPage:
        return plane.task_page(
            self._filter,
            self.sort,
            self.descending,
            self.page_size,
            after=self._after,
            before=self._before,
            window=self.window,
        )

    def show(self, data: Any) -> None:
        assert isinstance(data, TaskPage)
        if data.prev is None:  # the first page (again): follow the newest
            self._first_page()
        self._shown = data
        self._paint_rows(data.rows)
        if self._to_top or self._to_bottom:
            self.table.move_cursor(0 if self._to_top else len(data.rows) - 1)
            self._to_top = self._to_bottom = False
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
        if self.page_no > 1:
            shown = f"page {self.page_no}: {shown}"
        matching = f"{page.matching:,}{'+' if page.at_least else ''}"
        if found.where:
            shown += f" of {matching} matching"
            if page.counted_within is not None:
                shown += f" in the newest {page.counted_within:,}"
        elif page.matching > len(page.rows):
            shown += f" of {matching}"
        order = f"{COLUMNS[self.sort][0]} {'↓' if self.descending else '↑'}"
        if page.sorted_within is not None:
            order += f" among the newest {page.sorted_within:,}"
        keys = [k for k, there in (("] next", page.next), ("[ prev", page.prev)) if there]
        more = f" · {' '.join(keys)}" if keys else ""
        return " · ".join(parts) + f"   |   {shown} · sorted by {order}{more}"

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
