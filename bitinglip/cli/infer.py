"""`bitinglip run` and `bitinglip chat`: a model's answer streamed to the terminal.

Both go through the queue like any task (so they show in `tasks ls` and are retried like any
task); with no controller running they embed one for the duration.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from bitinglip.cli.common import fail, note, plane_of
from bitinglip.cli.models_pull import follow_pulls
from bitinglip.control import ControlPlane, TaskSpec, TaskState, ensure_local, parse_duration

MaxTokens = Annotated[int, typer.Option(min=1, help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option(min=0.0, help="0 = greedy (deterministic).")]
Seed = Annotated[int | None, typer.Option(help="Sampling seed, for repeatable output.")]
KeepAlive = Annotated[
    str | None,
    typer.Option(
        "--keep-alive",
        help="How long the model stays loaded once idle: 90s, 5m, 1h, a number of seconds; "
        "-1 for ever, 0 unload after this (default: the model's keep_alive in the profile).",
    ),
]
Immediate = Annotated[
    bool,
    typer.Option(
        "--immediate",
        help="Fail at once when the model fits on no host or no host has it, instead of "
        "waiting queued until one has room (like sbatch --immediate).",
    ),
]
ModelArg = Annotated[
    str,
    typer.Argument(
        help="An alias from the profile, a registered model (owner/repo:QUANT or its short "
        "name), or a .gguf path."
    ),
]


def keep_alive_seconds(text: str | None) -> float | None:
    """`--keep-alive` in seconds (-1 for ever), or None when not given; a bad value exits 2."""
    return None if text is None else parse_duration(text)


def _params(
    max_tokens: int,
    temperature: float,
    seed: int | None,
    keep_alive: str | None = None,
    immediate: bool = False,
) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if immediate:
        params["immediate"] = True
    if seed is not None:
        params["seed"] = seed
    seconds = keep_alive_seconds(keep_alive)
    if seconds is not None:
        params["keep_alive_s"] = seconds
    return params


def _stream(plane: ControlPlane, spec: TaskSpec) -> str:
    """Submit, print the output as it arrives, and return the full text (exit 1 on failure).
    Ctrl-C cancels the task."""
    task_id = plane.submit(spec)
    try:
        for chunk in plane.follow(task_id, on_rerun=lambda: _rerun(task_id)):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        plane.cancel([task_id])
        plane.wait(task_id, timeout=5)
        sys.stdout.write("\n")
        fail(f"task {task_id} canceled", 130)
    task = plane.wait(task_id)
    sys.stdout.write("\n")
    if task.state != TaskState.SUCCEEDED:
        fail(f"task {task.id} {task.state}: {task.error or 'no error recorded'}")
    result = task.result if isinstance(task.result, dict) else {}
    return str(result.get("text", ""))


def _rerun(task_id: int) -> None:
    sys.stdout.write("\n")
    note(f"bitinglip: task {task_id} is running again (retry); its output starts over")


def prepare(plane: ControlPlane, model: str, kind: str) -> str:
    """The model's canonical name, once it can run: a PyPI alias assembled here (for the local
    host), a name that means nothing refused (exit 2)."""
    name = plane.models.resolve_name(model)
    reason = plane.cannot_run(kind)
    if reason is not None:
        fail(reason)
    alias = plane.profile.models.get(name)
    if alias is None or alias.source.startswith("hf:"):
        return name  # a registered model or a path; a hub alias is pulled where it fits (`place`)
    if any(h.kind == "local" for h in plane.profile.hosts):  # SSH hosts have their own copies
        ensure_local(plane.profile, name, progress=lambda s: note(f"bitinglip: {s}"))
    return name


def place(plane: ControlPlane, model: str) -> None:
    """A hub alias or registered model that no host has yet is pulled first, where it fits,
    with progress."""
    placed = plane.models.place(model)
    if placed is None:
        return
    file, tickets = placed
    note(f"bitinglip: {model} is on no host yet: pulling {file.name} to {tickets[0].host}")
    follow_pulls(plane, tickets, file.size)
    task = plane.task(tickets[0].task_id) if tickets[0].task_id is not None else None
    if task is not None and task.state != TaskState.SUCCEEDED:
        fail(f"pulling {model} to {tickets[0].host} failed: {task.error}")


def run(
    ctx: typer.Context,
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.8,
    seed: Seed = None,
    keep_alive: KeepAlive = None,
    immediate: Immediate = False,
) -> None:
    """Generate from a prompt and stream the tokens to stdout."""
    params = _params(max_tokens, temperature, seed, keep_alive, immediate)
    with plane_of(ctx) as plane:
        name = prepare(plane, model, "generate")
        payload = {"prompt": prompt, **params}
        with plane.embedded():
            place(plane, name)
            _stream(plane, TaskSpec(kind="generate", model=name, payload=payload))


def chat(
    ctx: typer.Context,
    model: ModelArg,
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.8,
    seed: Seed = None,
    keep_alive: KeepAlive = None,
    immediate: Immediate = False,
) -> None:
    """An interactive chat: one line per turn; an empty line, /exit or Ctrl-D ends it."""
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    interactive = sys.stdin.isatty()
    params = _params(max_tokens, temperature, seed, keep_alive, immediate)
    with plane_of(ctx) as plane:
        name = prepare(plane, model, "chat")
        with plane.embedded():
            place(plane, name)
            while True:
                if interactive:
                    sys.stderr.write("you> ")
                    sys.stderr.flush()
                line = sys.stdin.readline()
                if not line or line.strip() in ("", "/exit", "/quit"):
                    return
                messages.append({"role": "user", "content": line.rstrip("\n")})
                payload = {"messages": list(messages), **params}
                answer = _stream(plane, TaskSpec(kind="chat", model=name, payload=payload))
                messages.append({"role": "assistant", "content": answer})
