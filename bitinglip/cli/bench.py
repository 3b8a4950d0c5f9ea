"""`bitinglip bench`: benchmarks that print one JSON object."""

from __future__ import annotations

from typing import Annotated

import typer

from bitinglip.cli.common import emit_json, note, profile_of

app = typer.Typer(
    help="Benchmarks (each runs on a fresh temporary database).", no_args_is_help=True
)


@app.command("queue")
def queue(
    ctx: typer.Context,
    tasks: Annotated[int, typer.Option(min=100, help="Tasks per measurement.")] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """The durable queue: enqueue, bulk enqueue, claim+complete, end to end, round trip."""
    from bitinglip.bench import queue as bench_queue

    result = bench_queue.run(profile_of(ctx), tasks, progress=lambda s: note(f"bench queue {s}"))
    if not as_json:
        for key, value in result.items():
            typer.echo(f"{key:<28} {value}")
        return
    emit_json(result)
