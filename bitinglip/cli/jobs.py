"""`bitinglip jobs`: batches from JSONL files, their progress and their results."""

from __future__ import annotations

import sys
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
    """Check every line, then queue them all as one job (nothing is queued if a line is bad)."""
    with plane_of(ctx) as plane:
        job = plane.submit_job(path, name)
    if as_json:
        emit_json(job.to_dict())
    else:
        typer.echo(job.id)
        note(f"bitinglip: job {job.id}: {job.total} {job.format} tasks queued from {path}")


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
