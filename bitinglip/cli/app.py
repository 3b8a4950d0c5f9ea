"""The root command: global options, `up`, `status`, and the noun sub-commands."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

from bitinglip import __version__
from bitinglip.cli import (
    bench,
    console,
    db,
    hosts,
    infer,
    jobs,
    models,
    models_fit,
    models_load,
    models_pull,
    profiles,
    ps,
    serve,
    tasks,
)
from bitinglip.cli.common import ErrorsToExit, Options, emit_json, note, plane_of, profile_of, table
from bitinglip.control import ControlLoop

app = typer.Typer(
    cls=ErrorsToExit,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="BitingLip: run LLM work on your own GPU hosts.",
)
app.add_typer(tasks.app, name="tasks")
app.add_typer(jobs.app, name="jobs")
app.add_typer(profiles.app, name="profiles")
app.add_typer(hosts.app, name="hosts")
app.add_typer(bench.app, name="bench")
models.app.command("pull")(models_pull.pull)
models.app.command("fit")(models_fit.fit)
models.app.command("load")(models_load.load)
models.app.command("unload")(models_load.unload)
app.add_typer(models.app, name="models")
app.command("run")(infer.run)
app.command("chat")(infer.chat)
app.command("serve")(serve.serve)
app.command("ps")(ps.ps)
app.add_typer(db.app, name="db")


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help="Profile NAME or PATH (default: $BITINGLIP_PROFILE or 'default').",
        ),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            help="Where the state database lives (overrides $BITINGLIP_DATA_DIR and the profile).",
        ),
    ] = None,
    readonly: Annotated[
        bool,
        typer.Option(
            "--readonly",
            help="Console only: watch without taking the controller role or changing anything.",
        ),
    ] = False,
    view: Annotated[
        str, typer.Option("--view", help="Console only: the view to open with (hosts, tasks, ...).")
    ] = "hosts",
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """BitingLip: one view of every GPU, models where they should be, prompts through the fleet.

    With no command, `bitinglip` opens the interactive console in this terminal.
    """
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)
    ctx.obj = Options(profile=profile, data_dir=data_dir)
    if ctx.invoked_subcommand is None:
        console.open_console(ctx, readonly=readonly, view=view)


@app.command()
def up(ctx: typer.Context) -> None:
    """Run the control plane headless in the foreground until Ctrl-C or SIGTERM.

    When another process already holds the controller lease, wait as an observer and take over
    when its lease expires.
    """
    profile = profile_of(ctx)
    loop = ControlLoop(profile)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        note(f"bitinglip: {signal.Signals(signum).name}: stopping")
        loop.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def on_state(state: str) -> None:
        note(
            f"bitinglip: {state} of {profile.db_path} (profile {profile.name}, owner {loop.owner})"
        )

    note(f"bitinglip: up, profile {profile.name}, waiting for the controller lease")
    loop.run(on_state=on_state)  # in the main thread: signals interrupt its waits
    note("bitinglip: stopped")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Who holds the controller lease, and how many tasks are in each state."""
    with plane_of(ctx) as plane:
        info = plane.status()
    if as_json:
        emit_json(info)
        return
    typer.echo(f"profile     {info['profile']}")
    typer.echo(f"database    {info['database']} (durability {info['durability']})")
    holder = info["controller"]
    if holder is None:
        typer.echo("controller  none (start one with `bitinglip up`)")
    else:
        typer.echo(f"controller  {holder['owner']} (pid {holder['pid']} on {holder['hostname']})")
    typer.echo(f"hosts       {', '.join(info['hosts']) or '(none)'}")
    table(["state", "tasks"], list(info["tasks"].items()))


def main() -> None:
    app()
