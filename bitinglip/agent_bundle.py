"""The host agent as one reproducible zipapp: the file the SSH transport ships to each host.

Same sources give the same bytes: entries sorted, timestamps fixed at 1980-01-01, permissions
fixed, one compression level, so the sha256 names the agent a host runs. Standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bitinglip_agent import __version__

from bitinglip.errors import BitinglipError

AGENT_PACKAGE = "bitinglip_agent"
SHEBANG = b"#!/usr/bin/env python3\n"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 9
FILE_MODE = 0o644
# The zipapp's own entry point; the agent's __main__ may not exist yet when this is built.
ZIPAPP_MAIN = b'import runpy\n\nrunpy.run_module("bitinglip_agent", run_name="__main__")\n'


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str
    version: str


def agent_sources() -> dict[str, bytes]:
    """The agent package's .py files, keyed by their path inside the zip (sorted)."""
    spec = importlib.util.find_spec(AGENT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BitinglipError(f"cannot bundle the agent: {AGENT_PACKAGE} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    sources = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        sources[f"{AGENT_PACKAGE}/{rel.as_posix()}"] = path.read_bytes()
    if f"{AGENT_PACKAGE}/__init__.py" not in sources:
        raise BitinglipError(f"cannot bundle the agent: {root} has no __init__.py")
    return sources


def zipapp_bytes(sources: dict[str, bytes]) -> bytes:
    """Shebang + a deterministic zip of `sources` plus the zipapp's __main__.py."""
    entries = dict(sources)
    entries["__main__.py"] = ZIPAPP_MAIN
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | FILE_MODE) << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, whatever the building machine
            zf.writestr(info, entries[name], compresslevel=COMPRESS_LEVEL)
    return buf.getvalue()


def build_zipapp(dest_dir: Path) -> Bundle:
    """Write `bitinglip-agent-<version>.pyz` into `dest_dir` atomically; return its digest."""
    data = zipapp_bytes(agent_sources())
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"bitinglip-agent-{__version__}.pyz"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Bundle(path=path, sha256=hashlib.sha256(data).hexdigest(), version=__version__)
