"""GET /v1/models, and which model a request means and whether it can run.

The models are the profile's aliases (`[models.NAME]`) and every registered model (a file pinned
by `bitinglip models pull`): an alias by its name, a registered model without one by its
shortest unambiguous name (`qwen2.5-0.5b-instruct:q4_k_m`, else `owner/repo:QUANT`, else
`owner/repo:FILE`); every name a model answers to is in its `names`. For a caller with an API key
each lists, per host, its copy (ready, pulling, ...) and whether the host's agent has it loaded
(`loaded_on`, from the latest telemetry). A `.gguf` path is not accepted over HTTP (it would let
any client open files on this machine).

A request for a hub alias or a registered model that no host has is pulled first, where it fits
(`to_place`, then `pull`: the request waits, as `bitinglip run` does), unless the profile's
`[gateway] auto_pull = false`, which answers 503 `model_not_pulled`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from bitinglip.control import ControlPlane, HubFile, models_dir, read_need, short_name
from bitinglip.errors import BitinglipError, InputError
from bitinglip.gateway.bridge import Bridge
from bitinglip.gateway.errors import ApiError

log = logging.getLogger(__name__)
FIT_CTX = 4096  # the context a pull's placement plans for (as `bitinglip run`)

Target = HubFile | tuple[str, str | None]


def list_models(plane: ControlPlane, per_host: bool = True) -> list[dict[str, Any]]:
    profile = plane.profile
    loaded: dict[str, set[str]] = {}
    for model in plane.fleet.loaded().models:
        loaded.setdefault(model.name, set()).add(model.host)
    rows = plane.models.rows()
    registered = {row["alias"]: row for row in rows if row["alias"]}
    listed = []
    for name, alias in profile.models.items():
        row = registered.get(name)
        copies = _copies(row, loaded.get(name, set())) if row is not None else {}
        if alias.source.startswith("pypi:"):
            path = models_dir(profile) / f"{name}.gguf"
            for host in profile.hosts:
                if host.kind == "local":
                    state = "ready" if path.is_file() else "assembled on first use"
                    copies[host.name] = {
                        "state": state,
                        "loaded": host.name in loaded.get(name, ()),
                    }
        created = int(row["created_at"]) if row is not None else 0
        listed.append(_model(name, [name], alias.source, created, copies, per_host))
    for row in rows:
        if row["alias"]:
            continue
        canonical = f"{row['repo']}:{row['file']}"
        names = _names(row, rows)
        copies = _copies(row, loaded.get(canonical, set()))
        source = f"hf:{row['repo']}"
        listed.append(_model(names[0], names, source, int(row["created_at"]), copies, per_host))
    return listed


def _model(
    model_id: str,
    names: list[str],
    source: str,
    created: int,
    copies: dict[str, dict[str, Any]],
    per_host: bool,
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "bitinglip",
        "source": source,
        "names": names,
    }
    if per_host:
        model["hosts"] = copies
        model["loaded_on"] = sorted(h for h, c in copies.items() if c["loaded"])
    return model


def _copies(row: Mapping[str, Any], loaded_on: set[str]) -> dict[str, dict[str, Any]]:
    return {
        host: {"state": copy["state"], "loaded": host in loaded_on}
        for host, copy in row["hosts"].items()
    }


def _names(row: Mapping[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The names a registered model without an alias answers to, shortest unambiguous first."""
    repo, file, quant = row["repo"], row["file"], row["quant"]
    candidates = [short_name(repo, quant), f"{repo}:{quant}" if quant else None, f"{repo}:{file}"]
    unique = []
    for name in candidates:
        if name is None:
            continue
        files = {
            (r["repo"], r["file"])
            for r in rows
            if name.lower()
            in (short_name(r["repo"], r["quant"]), f"{r['repo']}:{r['quant']}".lower())
        }
        if name == f"{repo}:{file}" or files == {(repo, file)}:
            unique.append(name)
    return unique


def resolve(plane: ControlPlane, model: str, kind: str) -> tuple[str, Target | None]:
    """In the bridge's thread: the request's model by its canonical name, and what must be
    pulled before any host can run it (None: nothing). 400 for a name that means no model, 503
    when no host could run the request."""
    reason = plane.cannot_run(kind)
    if reason is not None:  # it may name hosts: the operator's to read, in the gateway's log
        log.warning("a %s request cannot run: %s", kind, reason)
        raise ApiError(
            503,
            f"no host of this fleet can run {kind} requests now; the gateway's log says why",
            code="no_runner",
        )
    try:
        name = plane.models.resolve_name(model, paths=False)
    except InputError as exc:
        several = "matches" in str(exc)
        raise ApiError(
            400,
            str(exc)
            if several
            else f"the model {model!r} does not exist here; GET /v1/models lists them",
            param="model",
            code="model_not_found",
        ) from None
    return name, plane.models.to_place(name)


async def pull(bridge: Bridge, name: str, target: Target) -> None:
    """Pull a model no host has to where it fits: its header read off the bridge's thread (the
    hub), the pull queued on it. 503 when it cannot be pulled (the reason in the log)."""
    try:
        file, need = await asyncio.to_thread(read_need, target, FIT_CTX)
        tickets = await bridge.call(
            lambda plane: plane.models.place_file(file, need, FIT_CTX, name)
        )
    except BitinglipError as exc:
        log.warning("model %s could not be pulled for a request: %s", name, exc)
        raise ApiError(
            503,
            f"model {name} is on no host and could not be pulled; the gateway's log says why",
            param="model",
            code="model_not_pulled",
        ) from None
    log.info("model %s is on no host: pulling %s to %s", name, file.name, tickets[0].host)


def not_pulled(name: str) -> ApiError:
    """With `[gateway] auto_pull = false`: today's answer for a model on no host."""
    return ApiError(
        503,
        f"model {name} is on no host yet; pull it with `bitinglip models pull {name}` "
        f"(or `bitinglip run {name} ...` once)",
        param="model",
        code="model_not_pulled",
    )
