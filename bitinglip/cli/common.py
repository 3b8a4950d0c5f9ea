"""What every command shares: the profile from the global options, output, and errors.

Results go to stdout, diagnostics to stderr. A `BitinglipError` ends the command with its one-line
message on stderr and exit code 1 (runtime) or 2 (usage or configuration).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from typer._click.exceptions import UsageError  # typer vendors click
from typer.core import TyperGroup

from bitinglip.config import Profile, load_profile
from bitinglip.control import ControlPlane, open_control_plane
from bitinglip.errors import BitinglipError
from bitinglip.readable import age as age


class ErrorsToExit(TyperGroup):
    """The root group: turns errors below it into one line on stderr and an exit code.

    BitinglipError: its own code. A usage error of a sub-command: 2. A database that SQLite
    finds damaged past its header: 1, with what to do.
    """

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except BitinglipError as exc:
            fail(str(exc), exc.exit_code)
        except UsageError as exc:
            path = exc.ctx.command_path.split()[1:] if exc.ctx is not None else []
            where = " ".join(["bitinglip", *path])
            message = one_line(exc.format_message()).rstrip(".")
            fail(f"{where}: {message}; see `{where} --help`", 2)
        except sqlite3.DatabaseError as exc:
            fail(
                f"the state database is damaged ({exc}); restore it from a backup "
                "(`bitinglip db backup` makes them) or point --data-dir elsewhere"
            )


def one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Options:
    profile: str | None = None
    data_dir: str | None = None


def options(ctx: typer.Context) -> Options:
    found = ctx.find_object(Options)
    return found if found is not None else Options()


def profile_of(ctx: typer.Context) -> Profile:
    opts = options(ctx)
    return load_profile(opts.profile, data_dir=opts.data_dir)


@contextmanager
def plane_of(ctx: typer.Context) -> Iterator[ControlPlane]:
    plane = open_control_plane(profile_of(ctx))
    try:
        yield plane
    finally:
        plane.close()


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"bitinglip: {message}", err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    typer.echo(message, err=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns on stdout."""
    cells = [[str(h).upper() for h in headers]] + [
        ["" if c is None else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def parse_labels(labels: Sequence[str] | None) -> dict[str, str] | None:
    if not labels:
        return None
    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label {item!r}: write labels as key=value", 2)
        parsed[key] = value
    return parsed
