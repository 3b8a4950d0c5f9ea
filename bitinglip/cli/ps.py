"""`bitinglip ps`: what is loaded where, from the telemetry the controller stores: every loaded
model per host with its GPUs, memory, requests, idle time and when it unloads, and the replicas
of models that ask for `min_replicas`."""

from __future__ import annotations

from typing import Annotated

import typer

from bitinglip.cli.common import age, emit_json, note, plane_of, table
from bitinglip.control import LOADED_COLUMNS, LoadedReport


def ps(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every loaded model per host: GPU(s), memory used, running and queued requests, idle for,
    unloads in; then desired vs ready replicas of models with min_replicas."""
    with plane_of(ctx) as plane:
        report = plane.fleet.loaded()
        holder = plane.controller()
    if as_json:
        emit_json(report.to_dict() | {"controller": holder is not None and holder.alive})
        return
    if holder is None or not holder.alive:
        note("bitinglip: no controller running; nothing is loaded (`bitinglip up` starts one)")
    for host, seconds in sorted(report.stale.items()):
        note(f"bitinglip: host {host} last reported {age(seconds)} ago; not shown")
    if report.models:
        table(list(LOADED_COLUMNS), [list(m.cells()) for m in report.models])
    elif holder is not None and holder.alive:
        note("bitinglip: no model is loaded; `bitinglip models load MODEL` loads one")
    if report.replicas:
        typer.echo("")
        table(["model", "desired", "ready", "hosts"], replica_rows(report))


def replica_rows(report: LoadedReport) -> list[list[str]]:
    return [
        [r.model, str(r.desired), str(len(r.ready)), ", ".join(r.ready) or "-"]
        for r in report.replicas
    ]
