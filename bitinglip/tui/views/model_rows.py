"""What the Models view shows, read on the backend thread: one row per registered model file
(`plane.models.rows`) and one per profile alias that no registered model answers yet, with each
host's copy state as a cell (`ready`, `loaded`, `pulling 42%`, `quarantined`, `failed`).

A pull's percentage comes from its task's progress (the agent reports bytes as they land); the
registry's `bytes_done` is only final once the copy is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bitinglip.config import ModelAlias
from bitinglip.control import ControlPlane, CopyState, models_dir, parse_quant
from bitinglip.errors import BitinglipError
from bitinglip.readable import age, human_size

NOT_PULLED = "not pulled"
PROBLEMS = (CopyState.QUARANTINED, CopyState.FAILED)


@dataclass(frozen=True)
class Copy:
    """One host's copy of a model: its state word, the cell text, and why when it is broken."""

    state: str  # a registry CopyState, or "loaded"
    text: str
    error: str | None = None
    task_id: int | None = None
    path: str | None = None
    last_used_at: float | None = None

    def describe(self, now: float) -> str:
        """`ready at /models/x.gguf, used 3m ago`, or `pulling 42% (task 7)`."""
        words = self.text.removesuffix(" ✗")
        if self.task_id is not None and self.state == CopyState.PULLING:
            words += f" (task {self.task_id})"
        if self.path and self.state in (CopyState.READY, "loaded"):
            words += f" at {self.path}"
        if self.last_used_at is not None:
            words += f", used {age(now - self.last_used_at)} ago"
        return words


@dataclass(frozen=True)
class ModelRow:
    key: str  # "model:<id>" or "alias:<name>": the table's row key
    name: str  # the alias, else the repo
    ref: str  # repo@commit (7 hex), or the alias's source
    file: str
    quant: str
    size: int | None
    sha256: str | None = None
    model_id: int | None = None
    repo: str | None = None  # the hub repo, for `fit` (None for a PyPI alias)
    pull_ref: str = ""  # what the pull form starts with: an alias, or repo:file
    copies: dict[str, Copy] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.repo or self.name}:{self.file}"

    def cell(self, host: str) -> str:
        copy = self.copies.get(host)
        if copy is not None:
            return copy.text
        return NOT_PULLED if self.model_id is None else "-"

    def detail(self, now: float) -> str:
        """The line under the table for the highlighted row: identity, then every copy."""
        if self.model_id is None and not self.copies:
            return f"{self.name}: {self.ref}, not pulled yet; the pull key fetches it"
        head = [self.ref, self.file, human_size(self.size)]
        if self.sha256:
            head.append(f"sha256 {self.sha256[:12]}")
        copies = [f"{host}: {c.describe(now)}" for host, c in sorted(self.copies.items())]
        return " · ".join(head + (copies or ["no copy on any host"]))


@dataclass(frozen=True)
class ModelsData:
    hosts: list[str]
    rows: list[ModelRow]


def read_models(plane: ControlPlane) -> ModelsData:
    """The registry and the profile's aliases, as rows (backend thread)."""
    profile = plane.profile
    rows = [_registered(m, _pull_progress(plane, m)) for m in plane.models.rows()]
    rows += [
        _alias_row(plane, alias) for alias in profile.models.values() if _unpulled(plane, alias)
    ]
    hosts = [h.name for h in profile.hosts]
    hosts += sorted({h for r in rows for h in r.copies} - set(hosts))
    return ModelsData(hosts, rows)


def _pull_progress(plane: ControlPlane, model: Mapping[str, Any]) -> dict[str, float]:
    """Host -> fraction done, for the model's copies being pulled whose task has reported
    progress (none yet: queued, or connecting)."""
    done: dict[str, float] = {}
    for host, copy in model["hosts"].items():
        if copy["state"] != CopyState.PULLING or copy["task_id"] is None:
            continue
        try:
            progress = plane.task(int(copy["task_id"])).progress
        except BitinglipError:
            continue
        if not isinstance(progress, dict):
            continue
        total = int(progress.get("total") or model["size"] or 0)
        got = int(progress.get("bytes") or 0)
        done[host] = min(got / total, 1.0) if total else 0.0
    return done


def _registered(model: Mapping[str, Any], progress: Mapping[str, float]) -> ModelRow:
    return ModelRow(
        key=f"model:{model['id']}",
        name=model["alias"] or model["repo"].split("/", 1)[-1],
        ref=f"{model['repo']}@{model['commit'][:7]}",
        file=model["file"],
        quant=model["quant"] or "-",
        size=model["size"],
        sha256=model["sha256"],
        model_id=int(model["id"]),
        repo=model["repo"],
        pull_ref=model["alias"] or f"{model['repo']}:{model['file']}",
        copies={h: _copy(c, progress.get(h)) for h, c in model["hosts"].items()},
    )


def _copy(copy: Mapping[str, Any], fraction: float | None) -> Copy:
    state = str(copy["state"])
    text = state
    if state == CopyState.READY and copy["loaded"]:
        state = text = "loaded"
    elif state == CopyState.PULLING:
        text = "pulling" if fraction is None else f"pulling {percent(fraction)}"
    elif state in PROBLEMS:
        text = f"{state} ✗"
    return Copy(state, text, copy["error"], copy["task_id"], copy["path"], copy["last_used_at"])


def _unpulled(plane: ControlPlane, alias: ModelAlias) -> bool:
    """An alias no registered model answers (a PyPI alias always gets its own row)."""
    if not alias.source.startswith("hf:"):
        return True
    try:
        return plane.models.find(alias.name) is None
    except BitinglipError:  # several registered files match: they are listed already
        return False


def _alias_row(plane: ControlPlane, alias: ModelAlias) -> ModelRow:
    kind, _, where = alias.source.partition(":")
    copies: dict[str, Copy] = {}
    if kind == "pypi" and (models_dir(plane.profile) / f"{alias.name}.gguf").is_file():
        local = [h.name for h in plane.profile.hosts if h.kind == "local"]
        copies = {host: Copy(CopyState.READY, "ready") for host in local}
    file = alias.file or ("-" if kind == "hf" else f"{alias.name}.gguf")
    return ModelRow(
        key=f"alias:{alias.name}",
        name=alias.name,
        ref=alias.source + (f"@{alias.revision[:7]}" if alias.revision else ""),
        file=file,
        quant=parse_quant(file) or "-",
        size=None,
        repo=where if kind == "hf" else None,
        pull_ref=alias.name,
        copies=copies,
    )


def percent(fraction: float) -> str:
    """`0.4%` below 10% (a big file's first megabytes show), `42%` above; never rounded up."""
    value = 100 * fraction
    return f"{int(value * 10) / 10:.1f}%" if value < 10 else f"{int(value)}%"


def problems(data: ModelsData) -> list[str]:
    """One line per quarantined or failed copy, with why."""
    lines = []
    for row in data.rows:
        for host, copy in row.copies.items():
            if copy.state in PROBLEMS:
                why = copy.error or "no reason recorded"
                lines.append(f"✗ {row.label} on {host}: {copy.state}: {why}")
    return lines


def keep(filter_text: str, text: str, tags: Mapping[str, set[str]]) -> bool:
    """Whether an item passes a `/` filter: every word must match (AND); `key:value` matches a
    tag (`state:ready`, `host:local`), any other word the text; `-word` excludes."""
    lowered = text.lower()
    for word in filter_text.lower().split():
        negate = word.startswith("-") and len(word) > 1
        word = word[1:] if negate else word
        key, sep, value = word.partition(":")
        if sep and key in tags:
            hit = any(value == t.lower() or t.lower().startswith(value) for t in tags[key])
        else:
            hit = word in lowered
        if hit == negate:
            return False
    return True


def row_tags(row: ModelRow) -> dict[str, set[str]]:
    states = {c.state for c in row.copies.values()} or {NOT_PULLED.replace(" ", "-")}
    return {"host": set(row.copies), "state": states, "quant": {row.quant}}


def row_text(row: ModelRow) -> str:
    return " ".join((row.name, row.ref, row.file, row.quant))
