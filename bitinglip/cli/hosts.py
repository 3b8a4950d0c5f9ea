"""`bitinglip hosts`: add, remove, list, trust, set up, check and watch the profile's hosts.

The SSH work is the façade's (`check_host`, `setup_host`, ...) (asyncssh loads only for the commands
that connect); this module parses, confirms and prints.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bitinglip.cli import hosts_top
from bitinglip.cli.common import age, emit_json, fail, note, parse_labels, profile_of, table
from bitinglip.config import HostConfig, Profile
from bitinglip.control import ControlPlane, open_control_plane, record_host_key
from bitinglip.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from bitinglip.control import CheckReport

app = typer.Typer(help="Hosts: the machines the profile runs work on.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NameArg = Annotated[str, typer.Argument(help="The host's name in the profile.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; go ahead.")]
NOT_SEEN = "unknown — no controller has seen it"


def _stdin_is_tty() -> bool:
    """Whether a question can be asked (tests patch this to answer through stdin)."""
    return sys.stdin.isatty()


def _find(profile: Profile, name: str) -> HostConfig:
    for host in profile.hosts:
        if host.name == name:
            return host
    where = profile.path or "the built-in default"
    raise NotFoundError(
        f"no host {name} in profile {profile.name} ({where}); `bitinglip hosts ls` lists them"
    )


def _ssh_host(profile: Profile, name: str, verb: str) -> HostConfig:
    host = _find(profile, name)
    if host.kind != "ssh":
        raise UsageError(f"host {name} is {host.kind}: local hosts need no {verb}")
    return host


@contextmanager
def _plane(profile: Profile) -> Iterator[ControlPlane]:
    plane = open_control_plane(profile)
    try:
        yield plane
    finally:
        plane.close()


def _stored(profile: Profile) -> dict[str, dict[str, Any]]:
    with _plane(profile) as plane:
        return plane.fleet.hosts()


# -- editing the profile ----------------------------------------------------------------------


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A new host name (letters, digits, _ . -).")],
    address: Annotated[str, typer.Option(help="Hostname or IP address to reach it at.")],
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="SSH port (22).")] = None,
    user: Annotated[str | None, typer.Option(help="SSH user (default: ~/.ssh/config's).")] = None,
    identity_file: Annotated[
        Path | None, typer.Option(help="Private key file (default: the ssh-agent).")
    ] = None,
    proxy_jump: Annotated[str | None, typer.Option(help="Jump host, [user@]host[:port].")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="A label k=v for task placement (repeatable).")
    ] = None,
    python: Annotated[str | None, typer.Option(help="Python on the host (python3).")] = None,
    workdir: Annotated[str | None, typer.Option(help="Folder on the host (~/.bitinglip).")] = None,
    model_dir: Annotated[str | None, typer.Option(help="Model cache on the host.")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once on the host (4).")
    ] = None,
) -> None:
    """Add an SSH host to the active profile's file (comments and formatting are kept)."""
    from bitinglip.config_edit import add_host, render_host

    profile = profile_of(ctx)
    key = None if identity_file is None else identity_file.expanduser().absolute()
    if key is not None and not key.is_file():
        raise UsageError(f"--identity-file {key}: no such file; give the path of a private key")
    entry: dict[str, Any] = {
        "name": name,
        "kind": "ssh",
        "address": address,
        "port": port,
        "user": user,
        "identity_file": key,
        "proxy_jump": proxy_jump,
        "python": python,
        "workdir": workdir,
        "model_dir": model_dir,
        "max_concurrency": max_concurrency,
        "labels": parse_labels(label),
    }
    path = add_host(profile, entry)
    note(f"bitinglip: added host {name} to {path}:")
    note(render_host(entry).rstrip("\n"))
    note(f"bitinglip: next, check and trust its host key: `bitinglip hosts trust {name}`")


@app.command("rm")
def rm(ctx: typer.Context, name: NameArg, yes: YesOpt = False) -> None:
    """Remove a host from the active profile's file (asks first unless --yes)."""
    from bitinglip.config_edit import remove_host

    profile = profile_of(ctx)
    _find(profile, name)
    where = profile.path or "the built-in default profile"
    if not yes:
        if not _stdin_is_tty():
            raise UsageError(f"hosts rm {name}: not asking without a terminal; pass --yes")
        if not typer.confirm(f"Remove host {name} from {where}?", default=False):
            fail(f"host {name} kept; nothing written")
    path = remove_host(profile, name)
    note(f"bitinglip: removed host {name} from {path}")


# -- reading ----------------------------------------------------------------------------------


def _address(host: HostConfig) -> str:
    return "-" if host.address is None else f"{host.address}:{host.port}"


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "-"


def _summary(state: Mapping[str, Any] | None) -> str:
    if state is None:
        return NOT_SEEN
    return "healthy" if state["healthy"] else "unhealthy"


def _seen(state: Mapping[str, Any] | None, now: float) -> str:
    last = None if state is None else state["last_seen"]
    return "-" if last is None else f"{age(now - last)} ago"


@app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every host of the profile, with the health a controller last stored for it."""
    profile = profile_of(ctx)
    stored = _stored(profile)
    if as_json:
        emit_json(
            [
                {
                    "name": h.name,
                    "kind": h.kind,
                    "address": h.address,
                    "port": h.port if h.kind == "ssh" else None,
                    "labels": dict(h.labels),
                    "state": stored.get(h.name),
                }
                for h in profile.hosts
            ]
        )
        return
    now = time.time()
    rows = []
    for h in profile.hosts:
        state = stored.get(h.name)
        connected = "-" if state is None else ("yes" if state["connected"] else "no")
        seen = _seen(state, now)
        rows.append(
            (h.name, h.kind, _address(h), _labels(h.labels), _summary(state), connected, seen)
        )
    table(["name", "kind", "address", "labels", "health", "connected", "last seen"], rows)
    for h in profile.hosts:
        for warning in (stored.get(h.name) or {}).get("warnings", []):
            typer.echo(f"  {h.name}  {warning}")


@app.command("show")
def show(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """One host: its configuration and everything a controller stored about it."""
    profile = profile_of(ctx)
    host = _find(profile, name)
    state = _stored(profile).get(name)
    if as_json:
        path = None if profile.path is None else str(profile.path)
        emit_json({"name": name, "profile": path, "config": host.to_dict(), "state": state})
        return
    for key, value in host.to_dict().items():
        if value is not None and value != {}:
            typer.echo(f"{key:<16} {value}")
    typer.echo(f"{'health':<16} {_summary(state)}")
    if state is None:
        return
    now = time.time()
    typer.echo(f"{'connected':<16} {'yes' if state['connected'] else 'no'}")
    typer.echo(f"{'last seen':<16} {_seen(state, now)}")
    typer.echo(f"{'updated':<16} {age(now - state['updated_at'])} ago")
    _signals({k: (v["state"], v["why"]) for k, v in state["health"].items()})
    for key, value in (state.get("facts") or {}).items():
        typer.echo(f"{key:<16} {json.dumps(value, ensure_ascii=False)}")


def _signals(signals: Mapping[str, tuple[str, str]]) -> None:
    table(["signal", "state", "why"], [(n, s, w) for n, (s, w) in signals.items()])


# -- the host key --------------------------------------------------------------------------------


@app.command("trust")
def trust(
    ctx: typer.Context,
    name: NameArg,
    fingerprint: Annotated[
        str | None,
        typer.Option(help="The key's SHA256:... fingerprint, from the host's owner or console."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Trust the offered key without asking.")
    ] = False,
) -> None:
    """Show the host's key and record it in BitingLip's known_hosts after you confirm it.

    A key already on record is left alone; a recorded key that differs is a hard error.
    """
    from bitinglip.control import changed_key_error, host_key

    host = _ssh_host(profile_of(ctx), name, "trust")
    key = asyncio.run(host_key(host))
    typer.echo(f"host         {name} ({key.pattern})")
    typer.echo(f"fingerprint  {key.fingerprint}")
    if key.state == "changed":
        raise changed_key_error(host, key)
    if fingerprint is not None and fingerprint.strip() not in key.fingerprints:
        fail(
            f"host {name} offers {key.fingerprint}, not {fingerprint.strip()}; nothing written. "
            "Check the fingerprint with the host's owner (`ssh-keygen -lf` of its host key)"
        )
    if key.state == "trusted":
        note(f"bitinglip: the key of {name} is already trusted; nothing written")
        return
    if fingerprint is None and not yes:
        if not _stdin_is_tty():
            raise UsageError(
                f"hosts trust {name}: not asking without a terminal; pass "
                f"--fingerprint {key.fingerprint} once you have checked it"
            )
        if not typer.confirm("Trust this key?", default=False):
            fail(f"the key of {name} is not trusted; nothing written")
    path = record_host_key(key)
    note(f"bitinglip: trusted {key.pattern} {key.fingerprint} in {path}")


# -- the agent ------------------------------------------------------------------------------------


@app.command("setup")
def setup(
    ctx: typer.Context,
    name: NameArg,
    runtime: Annotated[
        bool,
        typer.Option(help="Also build a venv with llama-cpp-python (CUDA when nvidia-smi exists)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put this version's agent on the host (and with --runtime the inference runtime)."""
    from bitinglip.control import setup_host

    profile = profile_of(ctx)
    host = _ssh_host(profile, name, "setup")
    started = time.monotonic()

    def progress(line: str) -> None:
        note(f"  {name} {time.monotonic() - started:6.1f}s | {line}")

    if runtime:
        note(f"bitinglip: {name}: installing the runtime; pip's output follows")
    report = asyncio.run(setup_host(profile, host, runtime=runtime, on_output=progress))
    data = report.to_dict()
    if as_json:
        emit_json(data)
        return
    typer.echo(f"host      {name}")
    typer.echo(f"agent     {data['agent']} ({'uploaded' if data['uploaded'] else 'in place'})")
    typer.echo(f"sha256    {data['sha256']}")
    typer.echo(f"python    {data['python']} ({report.probe.agent_python})")
    typer.echo(f"runtime   {'installed' if data['runtime'] else 'none (add --runtime)'}")


@app.command("check")
def check(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """Check a host now: connect, probe, run the agent once; print each health signal.

    A running controller is left alone (the agent runs once on a channel of its own). Exit 1
    unless ssh and the agent are ok.
    """
    from bitinglip.control import check_host

    profile = profile_of(ctx)
    host = _ssh_host(profile, name, "check (the controller runs the local agent)")
    report = asyncio.run(check_host(profile, host))
    with _plane(profile) as plane:
        stored = plane.fleet.stored_check(name)
    if as_json:
        emit_json({**report.to_dict(), "stored": stored})
    else:
        _print_check(report, stored)
    if not report.ok:
        fail(report.problem or f"host {name} is not ok")


def _print_check(report: CheckReport, stored: Mapping[str, Any] | None) -> None:
    typer.echo(f"host     {report.host} ({report.address})")
    if report.probe is not None:
        found = report.probe
        installed = "installed" if report.agent_installed else "not installed"
        typer.echo(f"python   {'.'.join(map(str, found.python))} ({found.agent_python})")
        typer.echo(f"agent    {found.agent} ({installed})")
    _signals({n: (s.value, w) for n, (s, w) in report.signals.items()})
    if stored is None:
        typer.echo(f"controller's view: {NOT_SEEN}")
    else:
        seen = _seen(stored, time.time())
        typer.echo(f"controller's view: {_summary(stored)}, last seen {seen}")
        for warning in stored["warnings"]:
            typer.echo(f"  {warning}")


# -- live telemetry: `hosts top`, in hosts_top.py ------------------------------------------------

app.command("top")(hosts_top.top)
CLEAR_HOME, NO_CONTROLLER = hosts_top.CLEAR_HOME, hosts_top.NO_CONTROLLER  # read here by callers
