"""`bitinglip models pull`: a model file from the hub to hosts, verified, with live progress."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from bitinglip.cli.common import emit_json, fail, note, parse_labels, plane_of
from bitinglip.control import TERMINAL, ControlPlane, HubFile, TaskState, Ticket

REFRESH_S = 0.5


def pull(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(help="owner/repo, owner/repo:FILE or owner/repo:QUANT (e.g. :Q4_K_M)."),
    ],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Pull to this host (repeatable).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Pull to hosts with this label (k=v).")
    ] = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="Pull to every host.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: main, pinned now).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the pulls until they end.")
    ] = True,
    via_operator: Annotated[
        bool,
        typer.Option(
            "--via-operator",
            help="Download on this machine, then push to the hosts over SFTP (hosts with no "
            "internet); verified on both sides.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pull a GGUF file to hosts: pinned to a commit, size and sha256 before any byte moves,
    downloaded by each host's agent (resumable, hashed as it lands), ready only when verified.

    Concurrent pulls of one file to one host merge. Exit 1 if any host's pull failed.
    """
    if via_operator:
        _via_operator(ctx, ref, host or (), parse_labels(label), all_hosts, revision, as_json)
        return
    with plane_of(ctx) as plane:
        file, tickets = plane.models.pull(
            ref,
            hosts=host or (),
            labels=parse_labels(label),
            all_hosts=all_hosts,
            revision=revision,
        )
        size_gib = file.size / (1 << 30)
        note(
            f"bitinglip: {file.repo}@{file.commit[:12]} {file.name} ({size_gib:.2f} GiB, "
            f"sha256 {file.sha256[:12]}) to {', '.join(t.host for t in tickets)}"
        )
        if wait and any(t.task_id is not None for t in tickets):
            with plane.embedded():
                follow_pulls(plane, tickets, file.size)
        report = [_outcome(plane, t) for t in tickets]
    _report(file, report, as_json)
    failed = [r for r in report if r["state"] not in ("ready", "queued", "running")]
    if failed:
        fail(f"pull failed on {', '.join(r['host'] for r in failed)}: {failed[0].get('error')}")


def _via_operator(
    ctx: typer.Context,
    ref: str,
    hosts: list[str] | tuple[str, ...],
    labels: dict[str, str] | None,
    all_hosts: bool,
    revision: str | None,
    as_json: bool,
) -> None:
    with plane_of(ctx) as plane:
        file, placed = plane.models.pull_via_operator(
            ref,
            hosts=hosts,
            labels=labels,
            all_hosts=all_hosts,
            revision=revision,
            progress=lambda s: note(f"bitinglip: {s}"),
        )
    rows = [
        {"host": h, "state": "failed", "error": p[len("error: ") :]}
        if p.startswith("error: ")
        else {"host": h, "state": "ready", "path": p}
        for h, p in placed.items()
    ]
    _report(file, rows, as_json)
    failed = [r for r in rows if r["state"] != "ready"]
    if failed:
        fail(f"push failed on {', '.join(r['host'] for r in failed)}: {failed[0]['error']}")


def _report(file: HubFile, rows: list[dict[str, Any]], as_json: bool) -> None:
    """What happened on each host: JSON, or one line per host."""
    if as_json:
        keys = {"repo": file.repo, "commit": file.commit, "file": file.name, "quant": file.quant}
        emit_json(keys | {"size": file.size, "sha256": file.sha256, "hosts": rows})
        return
    for row in rows:
        typer.echo(f"{row['host']:<16} {row['state']:<10} {row.get('path') or row.get('error')}")


def follow_pulls(plane: ControlPlane, tickets: list[Ticket], size: int) -> None:
    """Progress per host on stderr until every pull ends (one line per host when redrawn)."""
    ids = {t.host: t.task_id for t in tickets if t.task_id is not None}
    tty = sys.stderr.isatty()
    shown = 0
    last_print = 0.0
    while True:
        tasks = {h: plane.task(i) for h, i in ids.items()}
        lines = [_bar(h, t.state, t.progress, size) for h, t in tasks.items()]
        now = time.monotonic()
        if tty:
            sys.stderr.write(("\x1b[F" * shown) + "".join(f"\x1b[K{line}\n" for line in lines))
            shown = len(lines)
        elif now - last_print >= 5.0 or all(t.state in TERMINAL for t in tasks.values()):
            sys.stderr.write("".join(f"{line}\n" for line in lines))
            last_print = now
        sys.stderr.flush()
        if all(t.state in TERMINAL for t in tasks.values()):
            return
        plane.wait_change(REFRESH_S)


def _bar(host: str, state: str, progress: Any, size: int) -> str:
    done = int(progress.get("bytes", 0)) if isinstance(progress, dict) else 0
    if state == TaskState.SUCCEEDED:
        done = size
    frac = min(done / size, 1.0) if size else 1.0
    width = 24
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    rate = eta = ""
    if isinstance(progress, dict) and state == TaskState.RUNNING:
        rate = f" {float(progress.get('bytes_per_s') or 0) / (1 << 20):6.1f} MiB/s"
        if progress.get("eta_s") is not None:
            eta = f" eta {float(progress['eta_s']):.0f}s"
    return f"{host:<16} [{bar}] {frac * 100:5.1f}% {state}{rate}{eta}"


def _outcome(plane: ControlPlane, ticket: Ticket) -> dict[str, Any]:
    row: dict[str, Any] = {"host": ticket.host, "action": ticket.action, "task": ticket.task_id}
    if ticket.task_id is None:
        path = plane.models.copy_path(ticket.host, ticket.model_id)
        return row | {"state": "ready", "path": path}
    task = plane.task(ticket.task_id)
    if task.state == TaskState.SUCCEEDED and isinstance(task.result, dict):
        return row | {"state": "ready", "path": task.result.get("path")}
    return row | {"state": str(task.state), "error": task.error}
