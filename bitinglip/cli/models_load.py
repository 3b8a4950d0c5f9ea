"""`bitinglip models load` and `models unload`: a model loaded (kept warm) or unloaded on purpose.

Both are tasks (`load`, `unload`: the agent starts or stops the model's inference child), so they
show in `tasks ls` and wait in the queue like any task; with no controller running they embed
one for the duration, as `run` does. A load of a model no host has pulls it first, where it fits.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from bitinglip.cli.common import emit_json, fail, note, parse_labels, plane_of
from bitinglip.cli.infer import KeepAlive, keep_alive_seconds, place, prepare
from bitinglip.control import TERMINAL, ControlPlane, Task, TaskSpec, TaskState

REFRESH_S = 0.5

HostOpt = Annotated[str | None, typer.Option("--host", help="On this host.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TimeoutOpt = Annotated[
    float | None, typer.Option(min=0.0, help="Give up waiting after this many seconds (exit 1).")
]


def load(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="An alias, a registered model (ref or short name), a .gguf path.")
    ],
    host: HostOpt = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="On a host with this label (k=v; repeatable)."),
    ] = None,
    keep_alive: KeepAlive = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a model into an inference child and keep it warm (as its keep-alive says).

    Without --host or --label the control plane chooses the host, as for a request: where it is
    loaded already, else where a copy is ready and it fits, else where it fits (pulled there
    first). Prints where it loaded and how long that took.
    """
    if host is not None and label:
        fail("models load: pass --host or --label, not both", 2)
    payload = {"keep_alive_s": keep_alive_seconds(keep_alive)}
    with plane_of(ctx) as plane:
        if host is not None or label:  # unknown hosts and labels no host has: before any work
            plane.models.pull_targets([host] if host else [], parse_labels(label), False)
        name = prepare(plane, model, "load")
        spec = TaskSpec(
            kind="load", model=name, host=host, labels=parse_labels(label), payload=payload
        )
        with plane.embedded() as loop:
            if loop is not None:
                note(
                    "bitinglip: no controller running: the model stays loaded only while this "
                    "command runs; start `bitinglip up` (or `serve`) to keep it loaded"
                )
            place(plane, name)
            task = follow(plane, plane.submit(spec), f"loading {name}", timeout)
    result = task.result if isinstance(task.result, dict) else {}
    if as_json:
        emit_json({"model": name, "host": task.ran_on, "task": task.id, **result})
        return
    if result.get("already"):
        typer.echo(f"{name} was already loaded on {task.ran_on}")
    else:
        typer.echo(f"{name} loaded on {task.ran_on} in {float(result.get('load_s') or 0):.2f} s")


def unload(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="An alias, a registered model, a .gguf path.")],
    host: HostOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Unload a model: from --host, else from every host that has it loaded (from the stored
    telemetry). Its running requests finish first; requests after it load it again."""
    with plane_of(ctx) as plane:
        name = plane.models.resolve_name(model)
        if host is not None:
            hosts = [host]
        else:
            hosts = sorted({m.host for m in plane.fleet.loaded().models if m.name == name})
        if not hosts:
            if as_json:
                emit_json({"model": name, "hosts": []})
            note(f"bitinglip: {name} is not loaded on any host; nothing to unload")
            return
        reason = plane.cannot_run("unload")
        if reason is not None:
            fail(reason)
        with plane.embedded():
            ids = {h: plane.submit(TaskSpec(kind="unload", model=name, host=h)) for h in hosts}
            tasks = {
                h: follow(plane, i, f"unloading {name} from {h}", timeout) for h, i in ids.items()
            }
    rows = [_unloaded(h, t) for h, t in tasks.items()]
    if as_json:
        emit_json({"model": name, "hosts": rows})
        return
    for row in rows:
        count = row["unloaded"]
        typer.echo(
            f"{name} unloaded from {row['host']}"
            if count
            else f"{name} was not loaded on {row['host']}"
        )


def _unloaded(host: str, task: Task) -> dict[str, Any]:
    result = task.result if isinstance(task.result, dict) else {}
    return {"host": host, "task": task.id, "unloaded": int(result.get("unloaded") or 0)}


def follow(plane: ControlPlane, task_id: int, what: str, timeout: float | None) -> Task:
    """Wait for the task with one progress line on stderr (why it waits, where it runs, for how
    long); its end, or exit 1 with one line when it fails or the timeout passes."""
    start = time.monotonic()
    tty = sys.stderr.isatty()
    shown = said = ""
    while True:
        task = plane.task(task_id)
        if task.state in TERMINAL:
            break
        elapsed = time.monotonic() - start
        if timeout is not None and elapsed >= timeout:
            _clear(tty, shown)
            fail(f"{what}: still {task.state} after {timeout:g} s (task {task_id})")
        status = _status(task)
        line = f"bitinglip: {what}: {status} {elapsed:.0f}s"
        if tty and line != shown:  # redrawn in place
            sys.stderr.write(f"\r\x1b[K{line}")
            shown = line
        elif not tty and status != said:  # a line per new state or reason
            sys.stderr.write(f"{line}\n")
        said = status
        sys.stderr.flush()
        plane.wait_change(REFRESH_S)
    _clear(tty, shown)
    if task.state != TaskState.SUCCEEDED:
        fail(f"{what}: task {task.id} {task.state}: {task.error or 'no error recorded'}")
    return task


def _status(task: Task) -> str:
    if task.state == TaskState.RUNNING:
        return f"on {task.ran_on}"
    reason = getattr(task, "wait_reason", None)
    return str(reason) if reason else str(task.state)


def _clear(tty: bool, shown: str) -> None:
    if tty and shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
