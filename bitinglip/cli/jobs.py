"""`bitinglip jobs`: batches from JSONL files, their progress and their results."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bitinglip.cli.common import emit_json, fail, note, plane_of, table
from bitinglip.control import Job, write_lines

app = typer.Typer(help="Jobs: a JSONL file of tasks, run as one batch.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("submit")
def submit(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A JSONL file: BitingLip task lines or OpenAI Batch API lines.")
    ],
    name: Annotated[
        str | None, typer.Option(help="A name for the job (default: the file name).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every line, then queue them all as one job (nothing is queued if a line is bad).

    The file is read one line at a time (memory stays flat however long it is); progress goes
    to stderr while it is read."""
    progress = _Progress(path)
    with plane_of(ctx) as plane:
        try:
            job = plane.submit_job(path, name, progress=progress)
        finally:
            progress.clear()
    if as_json:
        emit_json(job.to_dict())
    else:
        typer.echo(job.id)
        note(f"bitinglip: job {job.id}: {job.total} {job.format} tasks queued from {path}")


class _Progress:
    """How far the check of a file has read, on stderr, once the submit has run a while: redrawn
    in place on a terminal (a few times a second), else a line every PROGRESS_EVERY_S; then
    "queueing" while the checked lines are copied into the queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, lines: int, done: int, size: int) -> None:
        now = time.monotonic()
        end = done >= size  # read through: the copy into the queue is what remains
        due = now - self.last >= (REDRAW_S if self.tty else PROGRESS_EVERY_S)
        if not (due or (end and self.shown)):
            return
        self.last = now
        share = f"{done * 100 // size}%" if size else "?"
        what = "queueing" if end else "checking"
        line = f"bitinglip: {what} {self.path}: {share}, {lines:,} lines, {now - self.start:.0f}s"
        sys.stderr.write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


REDRAW_S = 0.2
PROGRESS_EVERY_S = 5.0


@app.command("ls")
def ls(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs with their progress."""
    with plane_of(ctx) as plane:
        found = plane.jobs(limit)
    if as_json:
        emit_json([j.to_dict() for j in found])
        return
    table(["id", "name", "format", "done", "total", *_STATES], [_row(j) for j in found])


_STATES = ("queued", "running", "succeeded", "failed", "canceled", "dead")


def _row(job: Job) -> list[object]:
    return [job.id, job.name, job.format, job.done, job.total, *(job.counts[s] for s in _STATES)]


@app.command("show")
def show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    as_json: JsonOpt = False,
) -> None:
    """One job: source, format and task counts by state."""
    with plane_of(ctx) as plane:
        job = plane.job(job_id)
    if as_json:
        emit_json(job.to_dict())
        return
    for key, value in job.to_dict().items():
        if key != "counts":
            typer.echo(f"{key:<11} {value}")
    table(["state", "tasks"], list(job.counts.items()))


@app.command("export")
def export(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file, replaced whole, mode 0600 (default: stdout).",
        ),
    ] = None,
) -> None:
    """Write the job's results as JSONL, one line per input line, in the input's format."""
    with plane_of(ctx) as plane:
        lines = plane.export_job(job_id)
        if output is None:
            sys.stdout.writelines(line + "\n" for line in lines)
            return
        try:
            count = write_lines(output, lines)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}; check the folder and its space")
        except KeyboardInterrupt:
            fail(f"interrupted; {output} is as it was before", 130)
    note(f"bitinglip: wrote {count} results to {output}")
