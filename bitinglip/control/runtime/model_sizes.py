"""What placement knows of a model's size: its registry row (a registered model: its size and
where its copies are; read again after ROW_TTL_S) and its memory estimate, the file's size times
LOAD_FACTOR (the registry's size, else the size of its file on this machine: a PyPI-packaged
alias once assembled, a `.gguf` path). The agent adds the KV cache to its own estimate when it
loads (contract 3); placement only needs to know where a model cannot go.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from bitinglip.config import Profile
from bitinglip.control.models import aliases, registry
from bitinglip.control.store.db import Store
from bitinglip.errors import BitinglipError

LOAD_FACTOR = 1.2  # a model's memory: its file size times this (weights and buffers)
ROW_TTL_S = 2.0  # a model's registry row is read again after this


class ModelSizes:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._rows: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._files: dict[str, int] = {}

    def row(self, store: Store, model: str) -> dict[str, Any] | None:
        """The registered model `model` names (`registry.find`), or None (a PyPI alias, a
        path, a name nothing is registered under)."""
        at, row = self._rows.get(model, (-math.inf, None))
        now = time.monotonic()
        if now - at < ROW_TTL_S:
            return row
        alias = self.profile.models.get(model)
        row = None
        if (alias is None or alias.source.startswith("hf:")) and not model.endswith(".gguf"):
            try:
                row = registry.find(store, model, self.profile)
            except BitinglipError:
                row = None
        self._rows[model] = (now, row)
        return row

    def forget(self, model: str) -> None:
        """Read its row again next time (a pull started or ended)."""
        self._rows.pop(model, None)

    def need(self, model: str) -> int | None:
        """The model's memory estimate (from its row as last read), or None when its size is
        not known here."""
        row = self._rows.get(model, (0.0, None))[1]
        if row is not None:
            return int(int(row["size"]) * LOAD_FACTOR)
        if model.endswith(".gguf"):
            path = os.path.expanduser(model)
        else:
            path = str(aliases.models_dir(self.profile) / f"{model}.gguf")
        if path not in self._files:
            try:
                self._files[path] = os.stat(path).st_size
            except OSError:
                return None  # not assembled yet: asked again next time
        return int(self._files[path] * LOAD_FACTOR)
