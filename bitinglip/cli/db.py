"""`bitinglip db`: the state database: a backup, pruning by hand, what it holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from bitinglip.cli.common import emit_json, note, plane_of, table
from bitinglip.config_retention import retention_seconds
from bitinglip.control import DbStats, Pruned, PruneReport
from bitinglip.errors import UsageError
from bitinglip.readable import human_size

app = typer.Typer(help="The state database: backup, prune, stats.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
PROGRESS_EVERY = 100_000  # tasks between progress lines on stderr


@app.command("backup")
def backup(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to write the copy to (replaced atomically).")],
) -> None:
    """Copy the state database with SQLite's online backup API (safe while it is in use)."""
    with plane_of(ctx) as plane:
        plane.backup(path)
    note(f"bitinglip: backed up {plane.profile.db_path} to {path}")


@app.command("prune")
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help='Prune tasks finished longer ago than this ("7d", "12h", "30m", 0 for all), '
            "outputs and rows alike (default: the profile's [retention]).",
        ),
    ] = None,
    outputs_only: Annotated[
        bool,
        typer.Option(
            "--outputs-only",
            help="Prune outputs, events, results and payloads only; keep every task's row.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; change nothing.")
    ] = False,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="Then a full VACUUM (rewrites the file, holding the queue while it runs): "
            "gives the space of a database made without incremental vacuum back, and turns "
            "incremental vacuum on.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prune finished tasks now, as the controller does on its own, and give the space back.

    Only tasks in a final state (succeeded, failed, dead, canceled) finished before the
    cut-off; never queued or running ones. Prints what it removed.
    """
    seconds = None if older_than is None else _duration(older_than)
    with plane_of(ctx) as plane:
        report = plane.db.prune(
            older_than_s=seconds,
            outputs_only=outputs_only,
            dry_run=dry_run,
            vacuum=vacuum,
            on_batch=_progress(dry_run),
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    if report.hint and not report.dry_run and not report.vacuumed:
        note(f"bitinglip: {report.hint}")


def _duration(text: str) -> float:
    seconds = retention_seconds(text)
    if seconds is None or math.isinf(seconds):
        raise UsageError(
            f"db prune: --older-than {text!r} is not a duration; use seconds or a string like "
            '"7d", "12h", "30m", "1d12h" (0: every finished task)'
        )
    return seconds


def _progress(dry_run: bool) -> Callable[[Pruned], None]:
    shown = [0]

    def on_batch(so_far: Pruned) -> None:
        if so_far.tasks >= shown[0] + PROGRESS_EVERY:
            shown[0] = so_far.tasks - so_far.tasks % PROGRESS_EVERY
            verb = "would prune" if dry_run else "pruned"
            note(f"bitinglip: {verb} {so_far.tasks:,} tasks so far")

    return on_batch


def _print_report(report: PruneReport) -> None:
    done = report.pruned
    would = "would " if report.dry_run else ""
    typer.echo(
        f"{would}prune the outputs of {done.outputs_pruned:,} tasks and delete "
        f"{done.tasks_deleted:,} tasks (outputs kept {report.outputs_kept}, "
        f"rows {report.tasks_kept})"
    )
    typer.echo(
        f"{done.output_chunks:,} output chunks, {done.events:,} events, "
        f"{human_size(done.bytes)} of text; {len(done.job_ids):,} jobs touched"
    )
    if report.dry_run:
        return
    size = f"{human_size(report.file_bytes_before)} -> {human_size(report.file_bytes_after)}"
    how = " (full VACUUM)" if report.vacuumed else ""
    typer.echo(
        f"file {size}: gave back {human_size(report.bytes_given_back)}{how}"
        f" in {report.seconds:.1f} s"
    )


@app.command("stats")
def stats(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Rows and bytes per table and index, the file's size with its WAL, its free pages."""
    with plane_of(ctx) as plane:
        found = plane.db.stats()
    if as_json:
        emit_json(found.to_dict())
        return
    _print_stats(found)


def _print_stats(found: DbStats) -> None:
    typer.echo(f"database     {found.path}")
    typer.echo(
        f"file         {human_size(found.file_bytes)} + WAL {human_size(found.wal_bytes)}"
        f" ({found.page_count:,} pages of {found.page_size} B)"
    )
    typer.echo(f"free         {found.freelist_pages:,} pages ({human_size(found.free_bytes)})")
    typer.echo(f"auto_vacuum  {found.auto_vacuum}")
    rows = [
        [t.name, t.kind, t.table, "-" if t.rows is None else f"{t.rows:,}", human_size(t.bytes)]
        for t in found.tables
    ]
    table(["name", "kind", "table", "rows", "size"], rows)
    if found.source != "dbstat":
        note("bitinglip: this SQLite has no dbstat table: rows per table only, no sizes")
