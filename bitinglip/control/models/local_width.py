"""A model's embedding width (`{arch}.embedding_length`) from the GGUF header of a copy on this
machine: a `pypi:` alias's assembled file, or a ready registered copy on a local host. The
header is read with `gguf_header` (never the tensor data); no copy here, or none readable, is
None: the caller learns the width another way (the gateway: from the first answer).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bitinglip.config import Profile
from bitinglip.control.models import registry
from bitinglip.control.models.aliases import models_dir
from bitinglip.control.models.gguf_header import file_reads, read_header
from bitinglip.control.store.db import Store
from bitinglip.errors import BitinglipError

log = logging.getLogger(__name__)


def embedding_width(store: Store, profile: Profile, model: str) -> int | None:
    """The width read from the first local copy of `model` whose header says it, or None."""
    for path in local_copies(store, profile, model):
        found = file_width(path)
        if found is not None:
            return found
    return None


def local_copies(store: Store, profile: Profile, model: str) -> list[Path]:
    """Where the model alias `model` has a file on this machine (none for another name)."""
    alias = profile.models.get(model)
    if alias is None:
        return []
    if alias.source.startswith("pypi:"):
        return [models_dir(profile) / f"{model}.gguf"]
    local = {h.name for h in profile.hosts if h.kind == "local"}
    try:
        found = registry.find(store, model, profile)
    except BitinglipError:
        return []
    if found is None:
        return []
    return [
        Path(copy["path"])
        for host, copy in found["hosts"].items()
        if host in local and copy["state"] == "ready" and copy["path"]
    ]


def file_width(path: Path) -> int | None:
    """The embedding width a local GGUF file's header gives, or None (no file, no such key)."""
    try:
        with path.open("rb") as f:
            header = read_header(file_reads(f), path.stat().st_size, name=str(path))
        width = header.embedding_length
    except (OSError, ValueError, BitinglipError) as exc:
        log.debug("no embedding width from %s: %s", path, exc)
        return None
    return width if width is not None and width > 0 else None
