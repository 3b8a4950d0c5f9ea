"""`bitinglip hosts top`: every GPU of every host, live, from the telemetry the controller stores.

A frame is one read of the stored telemetry (`telemetry_ring.latest`): per host its snapshot and
how old it is, and who holds the controller. On a terminal each frame redraws the screen; with
--json each is one line of JSON. Registered on `bitinglip.cli.hosts.app`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from bitinglip.cli.common import age, emit_json, note, profile_of, table
from bitinglip.config import Profile
from bitinglip.control import ControlPlane, gpu_table, open_control_plane

CLEAR_HOME = "\x1b[H\x1b[2J"
NO_CONTROLLER = "no controller is running (start one with `bitinglip up`); showing what is stored"


def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one frame and exit.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (one object per line per refresh).")
    ] = False,
) -> None:
    """Every GPU of every host, from the telemetry the controller stores; until Ctrl-C."""
    profile = profile_of(ctx)
    redraw = sys.stdout.isatty() and not as_json and not once
    warned = False
    with open_control_plane(profile) as plane:
        try:
            while True:
                holder = plane.controller()
                alive = holder is not None and holder.alive
                if not alive and not warned:
                    note(f"bitinglip: {NO_CONTROLLER}")
                    warned = True
                frame = _frame(plane, profile, holder.to_dict() if alive and holder else None)
                if as_json:
                    emit_json(frame) if once else typer.echo(json.dumps(frame, default=str))
                else:
                    _print_frame(frame, redraw)
                if once:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def _frame(
    plane: ControlPlane, profile: Profile, controller: dict[str, Any] | None
) -> dict[str, Any]:
    now = time.time()
    hosts = []
    for name, snap in plane.fleet.latest().items():
        at = snap.get("at")
        seconds = None
        if isinstance(at, int | float) and not isinstance(at, bool):
            seconds = round(now - at, 1)
        hosts.append(snap | {"host": name, "age_s": seconds})
    return {"profile": profile.name, "at": now, "controller": controller, "hosts": hosts}


def _print_frame(frame: Mapping[str, Any], redraw: bool) -> None:
    if redraw:
        typer.echo(CLEAR_HOME, nl=False)
    holder = frame["controller"]
    who = "none" if holder is None else f"pid {holder['pid']} on {holder['hostname']}"
    stamp = time.strftime("%H:%M:%S", time.localtime(frame["at"]))
    typer.echo(f"profile {frame['profile']}  controller {who}  {stamp}")
    snapshots = {h["host"]: h for h in frame["hosts"]}
    if not snapshots:
        typer.echo("(no telemetry stored yet)")
        return
    headers, rows = gpu_table(snapshots)
    ages = {h["host"]: h["age_s"] for h in frame["hosts"]}
    for row in rows:  # the host's line (GPU "-") says how old its snapshot is
        seconds = ages.get(row[0]) if row[1] == "-" else None
        row.append("" if row[1] != "-" else "-" if seconds is None else age(seconds))
    table([*headers, "AGE"], rows)
