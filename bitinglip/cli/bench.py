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
    _print(result, as_json)


@app.command("dispatch")
def dispatch(
    ctx: typer.Context,
    tasks: Annotated[
        int, typer.Option(min=100, help="Echo tasks for the end-to-end measurement.")
    ] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """Echo tasks through the local agent (end to end, round trip) and the agent's footprint."""
    from bitinglip.bench import dispatch as bench_dispatch

    result = bench_dispatch.run(
        profile_of(ctx), tasks, progress=lambda s: note(f"bench dispatch {s}")
    )
    _print(result, as_json)


@app.command("infer")
def infer(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model alias or .gguf path.")] = "gemma-3-270m",
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per prompt.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Times the prompt set is run.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """The same prompts direct through llama-cpp-python and through BitingLip, in one run."""
    from bitinglip.bench import infer as bench_infer

    profile = profile_of(ctx)
    result = bench_infer.run(
        profile, model, max_tokens, rounds, progress=lambda s: note(f"bench infer {s}")
    )
    _print(result, as_json)


def _print(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:<28} {value}")
