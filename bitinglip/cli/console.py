"""`bitinglip` with no command: the interactive console (bitinglip.tui), in this terminal."""

from __future__ import annotations

import sys

import typer

from bitinglip.cli.common import fail, note, profile_of

VIEWS = ("hosts", "gpus", "tasks", "jobs", "models", "pulls", "logs", "ps")


def open_console(ctx: typer.Context, *, readonly: bool, view: str) -> None:
    """Run the console until the user quits. Textual restores the terminal on the way out, also
    after a crash, which ends with exit code 1 and the path of a crash log."""
    if view not in VIEWS:
        fail(f"unknown view {view!r} for --view; use one of {', '.join(VIEWS)}", 2)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail(
            "the console needs a terminal (stdin and stdout are not one); "
            "run a command instead, see `bitinglip --help`",
            2,
        )
    profile = profile_of(ctx)
    from bitinglip.tui.app import ConsoleApp  # Textual loads only for the console
    from bitinglip.tui.backend import Backend

    backend = Backend(profile, readonly=readonly)
    backend.start()
    app = ConsoleApp(backend, start=view)
    try:
        app.run()
    finally:
        backend.close()
    if app.return_code:
        where = f"; the traceback is in {app.crash_log}" if app.crash_log else ""
        note(f"bitinglip: the console stopped on an error{where}")
        raise typer.Exit(app.return_code)
