"""`bitinglip bench`: benchmarks that print one JSON object."""

from __future__ import annotations

from typing import Annotated

import typer

from bitinglip.cli.common import emit_json, note, profile_of, table

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


@app.command("pull")
def pull(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="owner/repo[:FILE|:QUANT] on the hub to download.")],
    fit_repo: Annotated[
        str | None, typer.Option(help="Also time `models fit` over this repo's headers.")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Downloads each way; medians.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """BitingLip's verified pull (agent, sha256, registry) vs a bare hf_hub_download of the
    same file, in the same run; with --fit-repo, fit planning from the headers alone."""
    from bitinglip.bench import pull as bench_pull

    result = bench_pull.run(
        profile_of(ctx), ref, fit_repo, rounds, progress=lambda s: note(f"bench pull {s}")
    )
    _print(result, as_json)


@app.command("gateway")
def gateway(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model alias of the profile.")] = "gemma-3-270m",
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per prompt.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Times the prompt set is run.")] = 2,
    health_s: Annotated[
        float, typer.Option(min=0.5, help="Seconds of GET /health from 16 clients.")
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """The same prompts direct through llama-cpp-python, as `bitinglip run`, and streamed
    through the HTTP gateway, in one run; then GET /health from 16 concurrent clients."""
    from bitinglip.bench import gateway as bench_gateway

    result = bench_gateway.run(
        profile_of(ctx),
        model,
        max_tokens,
        rounds,
        health_s,
        progress=lambda s: note(f"bench gateway {s}"),
    )
    _print(result, as_json)


@app.command("serve")
def serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Model alias of the profile.")] = "gemma-3-270m",
    requests: Annotated[int, typer.Option(min=3, help="Requests of the placement part.")] = 300,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent streaming clients.")] = 8,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens per request of the placement part.")
    ] = 16,
    peer_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens per stream against llama_cpp.server.")
    ] = 64,
    parallel: Annotated[int, typer.Option(min=2, max=64, help="parallel for batching.")] = 8,
    threads: Annotated[int, typer.Option(min=1, help="llama.cpp threads, both sides.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """Model-aware placement against rotation (3 hosts, 3 models), the gateway against
    llama_cpp.server, and parallel = N against 1, in one run."""
    from bitinglip.bench import serve as bench_serve

    result = bench_serve.run(
        profile_of(ctx),
        model,
        requests,
        clients,
        max_tokens,
        peer_tokens,
        parallel,
        threads,
        progress=lambda s: note(f"bench serve {s}"),
    )
    _print(result, as_json)


@app.command("fleet")
def fleet(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(help="Model alias or .gguf path for tokens/s (hosts that have it)."),
    ] = None,
    echo: Annotated[
        int, typer.Option(min=10, help="Echo tasks end to end, and pipelined echoes.")
    ] = 10000,
    window: Annotated[
        int,
        typer.Option(
            min=1, help="Pipelined echoes unanswered at most (a dispatcher keeps 256 a host)."
        ),
    ] = 256,
    telemetry_s: Annotated[
        float, typer.Option(min=1.0, help="Seconds of idle control-plane CPU measured.")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """Worker challenges on every host at once: connect, round trip, tokens/s, GPU; then
    pipelined echo vs raw asyncssh, end to end over the fleet, and the control plane's CPU."""
    from bitinglip.bench import fleet as bench_fleet

    result = bench_fleet.run(
        profile_of(ctx),
        model,
        echo,
        window,
        telemetry_s,
        progress=lambda s: note(f"bench fleet {s}"),
    )
    if as_json:
        emit_json(result)
        return
    columns = list(FLEET_COLUMNS)
    table(columns, [[row[c] for c in columns] for row in result["hosts"]])
    typer.echo("")
    _print({k: v for k, v in result.items() if k != "hosts"}, False)


@app.command("tui")
def tui(
    ctx: typer.Context,
    hosts: Annotated[int, typer.Option(min=1, help="Generated SSH hosts.")] = 64,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs per generated host.")] = 8,
    tasks: Annotated[int, typer.Option(min=1, help="Queued tasks in the Tasks view.")] = 10000,
    idle_s: Annotated[
        float, typer.Option("--idle-s", min=1.0, help="Seconds of idle CPU measured.")
    ] = 30.0,
    minutes: Annotated[
        float, typer.Option(min=0.1, help="Minutes of 1 Hz telemetry for the RSS growth.")
    ] = 1.0,
    samples: Annotated[int, typer.Option(min=1, help="Refreshes measured per view.")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """The console headless: Tasks and Hosts refresh times with 10,000 tasks and 64x8 GPUs of
    1 Hz telemetry, idle CPU with the local agent, RSS growth over --minutes (target: 10)."""
    from bitinglip.bench import tui as bench_tui

    result = bench_tui.run(
        profile_of(ctx),
        hosts,
        gpus,
        tasks,
        idle_s,
        minutes,
        samples,
        progress=lambda s: note(f"bench tui {s}"),
    )
    _print(result, as_json)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("growth")
def growth(
    ctx: typer.Context,
    small: Annotated[int, typer.Option(min=100, help="Tasks at the small size.")] = 10_000,
    large: Annotated[int, typer.Option(min=100, help="Tasks at the large size.")] = 1_000_000,
    drain: Annotated[int, typer.Option(min=10, help="Echo tasks timed end to end.")] = 5_000,
    samples: Annotated[int, typer.Option(min=1, help="Samples per median.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON object.")] = False,
) -> None:
    """Cost as the queue and the history grow: end to end, the Tasks view, status, /health,
    jobs submit and the database after a prune, at --small and --large tasks (several minutes
    and ~3 GB of temporary disk at a million)."""
    from bitinglip.bench import growth as bench_growth

    result = bench_growth.run(
        profile_of(ctx), small, large, drain, samples, progress=lambda s: note(f"bench growth {s}")
    )
    _print(result, as_json)
    if not result["ok"]:
        raise typer.Exit(1)


FLEET_COLUMNS = (
    "host",
    "status",
    "connect_ready_ms",
    "rtt_p50_ms",
    "rtt_p99_ms",
    "tokens_per_s",
    "gpu",
    "tokens_note",
)


def _print(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:<28} {value}")
