"""`bitinglip bench pull`: a file from the hub through BitingLip's pull (a `pull` task, the
agent's resumable download with its sha256 check, the registry) against a bare
`hf_hub_download` of the same file, in the same run; and `models fit` over a repo's headers.

Both downloads start from nothing, on a temporary data dir with this machine's agent as the
only host, so nothing the profile has pulled is touched or reused.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip.config import HostConfig, Profile
from bitinglip.control import (
    HubFile,
    TaskSpec,
    TaskState,
    download_bare,
    list_gguf,
    needs_for_files,
    open_control_plane,
    read_range,
    resolve_ref,
)
from bitinglip.errors import StateError

MIB = 1 << 20


def run(
    profile: Profile,
    ref: str,
    fit_repo: str | None,
    rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    file = resolve_ref(ref)
    ours, bare = [], []
    for round_no in range(rounds):
        progress(f"round {round_no + 1}/{rounds}: {file.name} ({file.size / MIB:.0f} MiB)")
        ours.append(_ours(profile, ref))
        bare.append(_bare(file))
    result: dict[str, Any] = {
        "file": f"{file.repo}:{file.name}",
        "size_mb": round(file.size / 1e6, 1),
        "bitinglip_mb_per_s": round(file.size / 1e6 / _median(ours), 1),
        "bare_mb_per_s": round(file.size / 1e6 / _median(bare), 1),
    }
    result["ratio"] = round(result["bitinglip_mb_per_s"] / result["bare_mb_per_s"], 3)
    result["rounds_s"] = {
        "bitinglip": [round(s, 3) for s in ours],
        "bare": [round(s, 3) for s in bare],
    }
    if fit_repo is not None:
        result |= _fit(fit_repo)
    return result


def _ours(profile: Profile, ref: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bl-bench-pull-") as tmp:
        local = replace(profile, data_dir=Path(tmp), hosts=(HostConfig("local", "local"),))
        with open_control_plane(local) as plane, plane.embedded():
            plane.wait(plane.submit(TaskSpec(kind="echo", payload={})), 60)  # the agent is up
            started = time.perf_counter()
            _, [ticket] = plane.models.pull(ref)
            assert ticket.task_id is not None
            task = plane.wait(ticket.task_id, 3600)
            elapsed = time.perf_counter() - started
        if task.state != TaskState.SUCCEEDED:
            raise StateError(f"bench pull: the pull failed: {task.error}")
    return elapsed


def _bare(file: HubFile) -> float:
    with tempfile.TemporaryDirectory(prefix="bl-bench-bare-") as tmp:
        started = time.perf_counter()
        download_bare(file, tmp)
        return time.perf_counter() - started


def _fit(repo: str) -> dict[str, Any]:
    commit, files = list_gguf(repo)
    read = [0]

    def counted(url: str, start: int, length: int) -> bytes:
        data = read_range(url, start, length)
        read[0] += len(data)
        return data

    started = time.perf_counter()
    needs_for_files(files, counted, 4096)
    elapsed = time.perf_counter() - started
    total = sum(f.size for f in files)
    return {
        "fit_repo": f"{repo}@{commit[:12]}",
        "fit_files": len(files),
        "fit_s": round(elapsed, 3),
        "fit_bytes_read": read[0],
        "fit_read_percent": round(100 * read[0] / total, 3) if total else 0.0,
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
