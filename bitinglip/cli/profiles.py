"""`bitinglip profiles`: find, show and check profiles."""

from __future__ import annotations

from typing import Annotated

import typer

from bitinglip.cli.common import emit_json, fail, options, table
from bitinglip.config import list_profiles, load_profile
from bitinglip.errors import ConfigError

app = typer.Typer(
    help="Profiles: where they are, what they say, whether they are valid.", no_args_is_help=True
)


@app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every profile BitingLip can find, in discovery order."""
    refs = list_profiles()
    if as_json:
        emit_json(
            [
                {"name": r.name, "path": str(r.path) if r.path else None, "origin": r.origin}
                for r in refs
            ]
        )
        return
    table(["name", "origin", "path"], [(r.name, r.origin, r.path or "(built in)") for r in refs])


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Profile NAME or PATH (default: the active one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The profile as BitingLip reads it, after the precedence ladder."""
    opts = options(ctx)
    profile = load_profile(name or opts.profile, data_dir=opts.data_dir)
    data = profile.to_dict()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        typer.echo(f"{key:<20} {value}")


@app.command("check")
def check(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Profile NAMEs or PATHs (default: every profile found)."),
    ] = None,
) -> None:
    """Validate profiles; print one line per problem and exit 2 if any is invalid."""
    refs = names or [str(r.path) if r.path else r.name for r in list_profiles()]
    bad = 0
    for ref in refs:
        try:
            profile = load_profile(ref)
        except ConfigError as exc:
            typer.echo(f"bitinglip: {exc}", err=True)
            bad += 1
        else:
            typer.echo(f"ok  {profile.name}  {profile.path or '(built in)'}")
    if bad:
        fail(f"{bad} of {len(refs)} profiles invalid", 2)
