"""GET /v1/models, and whether a model can take a request now.

The models are the profile's aliases (`[models.NAME]`): each listed with its source and, per
host, its copy (ready, pulling, ...) and whether the host's agent has it loaded (from the latest
telemetry); the per-host part only for a caller with an API key. A registered hub model is
used through an alias naming it; a `.gguf` path is not accepted over HTTP (it would let any
client open files on this machine).
"""

from __future__ import annotations

import logging
from typing import Any

from bitinglip.control import ControlPlane, models_dir
from bitinglip.gateway.errors import ApiError

log = logging.getLogger(__name__)


def list_models(plane: ControlPlane, per_host: bool = True) -> list[dict[str, Any]]:
    profile = plane.profile
    loaded = {
        host: {str(p) for p in snapshot.get("models_loaded") or []}
        for host, snapshot in plane.fleet.latest().items()
    }
    registered = {row["alias"]: row for row in plane.models.rows() if row["alias"]}
    listed = []
    for name, alias in profile.models.items():
        row = registered.get(name)
        copies: dict[str, dict[str, Any]] = {}
        if row is not None:
            for host, copy in row["hosts"].items():
                copies[host] = {
                    "state": copy["state"],
                    "loaded": copy["path"] in loaded.get(host, ()),
                }
        if alias.source.startswith("pypi:"):
            path = models_dir(profile) / f"{name}.gguf"
            for host in profile.hosts:
                if host.kind == "local":
                    state = "ready" if path.is_file() else "assembled on first use"
                    copies[host.name] = {
                        "state": state,
                        "loaded": str(path) in loaded.get(host.name, ()),
                    }
        model: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": int(row["created_at"]) if row is not None else 0,
            "owned_by": "bitinglip",
            "source": alias.source,
        }
        if per_host:
            model["hosts"] = copies
            model["loaded_on"] = sorted(h for h, c in copies.items() if c["loaded"])
        listed.append(model)
    return listed


def check_runnable(plane: ControlPlane, model: str, kind: str) -> None:
    """503 when no host of the profile could run the request (nothing would ever take it)."""
    reason = plane.cannot_run(kind)
    if reason is not None:  # it may name hosts: the operator's to read, in the gateway's log
        log.warning("a %s request cannot run: %s", kind, reason)
        raise ApiError(
            503,
            f"no host of this fleet can run {kind} requests now; the gateway's log says why",
            code="no_runner",
        )
    alias = plane.profile.models[model]
    if not alias.source.startswith("hf:"):
        return
    found = plane.models.find(model)
    states = [] if found is None else [c["state"] for c in found["hosts"].values()]
    if not any(s in ("ready", "pulling") for s in states):
        raise ApiError(
            503,
            f"model {model} is on no host yet; pull it with `bitinglip models pull {model}` "
            f"(or `bitinglip run {model} ...` once)",
            param="model",
            code="model_not_pulled",
        )
