"""`bitinglip models fit REPO`: which quant of a hub repo fits on which GPU, from headers alone.

The repo's GGUF files are listed at one commit, each file's header is fetched with HTTP range
requests (8 at a time; no weights), and every quant is judged against each profile host's GPUs
(or, for a host without GPUs, its RAM) as the stored telemetry last saw them. The arithmetic is
the control plane's (`plan_fit`).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from bitinglip.cli.common import emit_json, note, plane_of, table
from bitinglip.config_serving import CACHE_TYPES
from bitinglip.control import GIB, Need, Verdict, list_gguf, needs_for_files, plan_fit, read_range
from bitinglip.errors import NotFoundError

# The KV cache types llama.cpp has (the profile's cache_type_k/v), as a choice of the CLI.
CacheType = StrEnum("CacheType", {name: name for name in CACHE_TYPES})  # type: ignore[misc]
F16 = CacheType("f16")


def fit(
    ctx: typer.Context,
    repo: Annotated[str, typer.Argument(help="The hub repo, owner/name.", show_default=False)],
    revision: Annotated[
        str, typer.Option("--revision", help="Branch, tag or commit sha of the repo.")
    ] = "main",
    ctx_len: Annotated[
        int, typer.Option("--ctx", min=1, help="Context length (tokens) to size the KV cache for.")
    ] = 4096,
    margin_gib: Annotated[
        float,
        typer.Option("--margin-gib", min=0.0, help="GiB kept free on each GPU (and in RAM)."),
    ] = 1.0,
    cache_type_k: Annotated[
        CacheType, typer.Option("--cache-type-k", help="The KV cache's K type.")
    ] = F16,
    cache_type_v: Annotated[
        CacheType, typer.Option("--cache-type-v", help="The KV cache's V type.")
    ] = F16,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say for each quant of REPO and each GPU: fits, N of M layers on the GPU, or does not fit.

    Reads only the GGUF headers (range requests, no weights): weights, per-layer bytes and the
    KV cache for --ctx tokens in the cache types (f16 unless --cache-type-k/v say), plus
    --margin-gib, against each GPU's free memory from the latest telemetry of the profile's
    hosts. Without telemetry it prints what each quant needs.
    """
    started = time.monotonic()
    commit, files = list_gguf(repo, revision)
    if not files:
        raise NotFoundError(f"{repo}@{commit[:12]} has no .gguf files")
    needs = needs_for_files(
        files, read_range, ctx_len, cache_k=cache_type_k.value, cache_v=cache_type_v.value
    )
    needs.sort(key=_smallest_first)
    with plane_of(ctx) as plane:
        stored = bool(plane.fleet.latest())
        devices, notes = plane.models.devices()
    margin = int(margin_gib * GIB)
    verdicts = [v for need in needs for v in plan_fit(need, devices, margin)]
    read, total = sum(n.bytes_read for n in needs), sum(f.size for f in files)
    if as_json:
        emit_json(_report(repo, commit, ctx_len, margin, needs, verdicts, notes, read, total))
    elif verdicts:
        table(
            ["quant", "host", "gpu", "device", "verdict", "layers", "need GiB", "free GiB"],
            [_verdict_row(v) for v in verdicts],
        )
    else:
        table(
            ["quant", "file", "size GiB", "weights GiB", "kv GiB", "need GiB", "layers"],
            [_need_row(n, margin) for n in needs],
        )
    if not stored:
        note("bitinglip: no telemetry stored yet (`bitinglip up` collects it); needs only")
    for line in notes:
        note(f"bitinglip: {line}")
    for need in needs:
        for line in need.notes:
            note(f"bitinglip: {need.file}: {line}")
    seconds = time.monotonic() - started
    note(f"read {read:,} of {total:,} bytes ({read / max(total, 1):.2%}) in {seconds:.2f} s")


def _smallest_first(need: Need) -> tuple[int, str]:
    return need.file_size, need.file


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def _verdict_row(v: Verdict) -> list[str]:
    layers = "-" if v.gpu is None else f"{v.layers_on_gpu}/{v.layers_total}"
    gpu = "cpu" if v.gpu is None else str(v.gpu)
    return [v.quant, v.host, gpu, v.device, str(v.verdict), layers, _gib(v.need), _gib(v.free)]


def _need_row(n: Need, margin: int) -> list[str]:
    return [
        n.quant,
        n.file,
        _gib(n.file_size),
        _gib(n.weights_bytes),
        _gib(n.kv_bytes),
        _gib(n.total(margin)),
        str(n.layers),
    ]


def _report(
    repo: str,
    commit: str,
    ctx_len: int,
    margin: int,
    needs: list[Need],
    verdicts: list[Verdict],
    notes: list[str],
    read: int,
    total: int,
) -> dict[str, Any]:
    return {
        "repo": repo,
        "commit": commit,
        "ctx": ctx_len,
        "margin_bytes": margin,
        "verdicts": [v.to_dict() for v in verdicts],
        "needs": [n.to_dict() | {"need_bytes": n.total(margin)} for n in needs],
        "notes": notes,
        "bytes_read": read,
        "bytes_total": total,
    }
