"""Jobs: each batch with its progress, throughput, ETA and failures; its tasks; its results.

Progress is done (finished in any way) over total; throughput is tasks done per minute since
the job's first task started; the ETA is what is left at that pace. Enter shows the job's tasks
(the Tasks view filtered by `job:<id>`); `export` writes the job's results as JSONL (the lines
`bitinglip jobs export` writes) to a path it asks for, by default `./job-<id>.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from bitinglip.control import ControlPlane, Job, JobPace, write_lines
from bitinglip.errors import BitinglipError
from bitinglip.readable import age, error_line
from bitinglip.tui.context import Context
from bitinglip.tui.forms import ValueForm
from bitinglip.tui.messages import Reported, ShowView
from bitinglip.tui.views.base import View

SHOWN = 100
BAR = 20
COLUMNS: dict[str, tuple[str, int]] = {
    "id": ("id", 5),
    "name": ("name", 18),
    "progress": ("progress", BAR + 5),
    "done": ("done", 11),
    "rate": ("tasks/min", 9),
    "eta": ("ETA", 6),
    "failed": ("failed", 6),
    "now": ("now", 22),
}


@dataclass(frozen=True)
class JobLine:
    job: Job
    pace: JobPace


class JobsView(View):
    VIEW = "jobs"
    title = "Jobs"
    ACTIONS: ClassVar[dict[str, str]] = {"export": "export results"}
    DEFAULT_CSS = """
    JobsView #jobs-summary { height: 1; padding: 0 1; color: $text-muted; }
    JobsView DataTable { height: 1fr; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._painted: dict[int, tuple[Any, ...]] = {}  # job id -> its cells on screen

    def compose(self) -> ComposeResult:
        yield Static("", id="jobs-summary")
        yield DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        table = self.table
        for key, (label, width) in COLUMNS.items():
            table.add_column(label, width=width, key=key)

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#jobs-table", DataTable)

    def fetch(self, plane: ControlPlane) -> list[JobLine]:
        found = plane.jobs(SHOWN)
        paces = plane.job_paces([job.id for job in found])
        return [JobLine(job, paces[job.id]) for job in found]

    def show(self, data: Any) -> None:
        table = self.table
        selected = self.selected_id()
        now = self.context.now()
        painted: dict[int, tuple[Any, ...]] = {}
        for job_id in [i for i in self._painted if i not in {line.job.id for line in data}]:
            table.remove_row(str(job_id))
        for line in data:
            cells = painted[line.job.id] = job_cells(line, now)
            self._paint_row(line.job.id, cells)
        self._painted = painted
        order = {line.job.id: index for index, line in enumerate(data)}
        if [int(str(r.key.value)) for r in table.ordered_rows] != list(order):
            table.sort("id", key=order.__getitem__)
        if selected in order:
            table.move_cursor(row=order[selected], scroll=False)
        running = sum(1 for line in data if line.job.done < line.job.total)
        self.query_one("#jobs-summary", Static).update(
            f"{len(data)} job(s) · {running} in progress   |   Enter: its tasks · "
            f"{self.context.keys['export']}: export its results"
        )

    def _paint_row(self, job_id: int, cells: tuple[Any, ...]) -> None:
        """Add the row, or update the cells that changed (any update re-renders the table)."""
        before = self._painted.get(job_id)
        if before is None:
            self.table.add_row(*cells, key=str(job_id))
            return
        for key, old, new in zip(COLUMNS, before, cells, strict=True):
            if old != new:
                self.table.update_cell(str(job_id), key, new)

    def selected_id(self) -> int | None:
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        return int(str(key.value))

    @on(DataTable.RowSelected, "#jobs-table")
    def _opened(self, event: DataTable.RowSelected) -> None:
        self.post_message(ShowView("tasks", f"job:{event.row_key.value}"))

    def action_export(self) -> None:
        job_id = self.selected_id()
        if job_id is None:
            self.notify("no job selected", severity="warning")
            return

        def chosen(value: str | None) -> None:
            if value is not None:
                self.run_worker(
                    self._export(job_id, Path(value).expanduser()),
                    group="export",
                    exit_on_error=False,
                    description="export",
                )

        title = f"Export the results of job {job_id} to (JSONL)"
        self.app.push_screen(ValueForm(title, f"./job-{job_id}.jsonl"), chosen)

    async def _export(self, job_id: int, path: Path) -> None:
        try:
            count, written = await self.context.backend.call(write_export, job_id, path)
        except BitinglipError as exc:
            self.post_message(Reported("export", False, error_line(exc)))
            return
        except OSError as exc:
            why = f"cannot write {path}: {exc.strerror or exc}"
            self.post_message(Reported("export", False, why))
            return
        line = f"job {job_id}: wrote {count} results to {written}"
        self.post_message(Reported("export", True, line))


def write_export(plane: ControlPlane, job_id: int, path: Path) -> tuple[int, Path]:
    """The job's result lines to `path`, replaced whole (never half written); returns how many
    and where (the absolute path)."""
    count = write_lines(path, plane.export_job(job_id))
    return count, path.resolve()


def job_cells(line: JobLine, now: float) -> tuple[Any, ...]:
    job, counts = line.job, line.job.counts
    finished = job.done >= job.total
    rate = line.pace.tasks_per_min(job.done, now, finished)
    failed = counts["failed"] + counts["dead"]
    return (
        job.id,
        job.name,
        progress_bar(job.done, job.total, failed),
        f"{job.done}/{job.total}",
        "" if rate is None else f"{rate:.1f}",
        eta_text(job.total - job.done, rate, finished),
        Text(str(failed), style="bold red" if failed else "dim"),
        now_text(counts),
    )


def progress_bar(done: int, total: int, failed: int) -> Text:
    """`██████░░░░  60%`: done in green, the failed part of it in red."""
    share = done / total if total else 1.0
    filled = round(share * BAR)
    bad = min(filled, round(failed / total * BAR)) if total else 0
    bar = Text()
    bar.append("█" * (filled - bad), style="green")
    bar.append("█" * bad, style="red")
    bar.append("░" * (BAR - filled), style="dim")
    bar.append(f" {share:4.0%}")
    return bar


def eta_text(left: int, rate: float | None, finished: bool) -> str:
    if finished:
        return "done"
    if not rate:
        return ""
    return age(left / rate * 60)


def now_text(counts: dict[str, int]) -> str:
    busy = [f"{counts[s]} {s}" for s in ("running", "queued") if counts[s]]
    return ", ".join(busy) if busy else "finished"
