"""Profile files: where they live, and which one a `--profile` reference names.

`find_profile` and `list_profiles` look in `<cwd>/profiles/`, then `<user_config_dir>/profiles/`
(`$XDG_CONFIG_HOME/bitinglip` or `~/.config/bitinglip`); `default_data_dir` is where a profile's
state lives unless it says otherwise. `valid_name` is the one rule for profile, host and model
names. Standard library only; `bitinglip.config` re-exports the API. Where a key sits in a file
is `config_locator.py`; strict reads with `file:line` errors are `config_tables.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bitinglip.errors import ConfigError

ENV_PROFILE = "BITINGLIP_PROFILE"
NAME_RULE = "use letters, digits, '_', '.' and '-', not starting with '-'"
_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")


def valid_name(name: str) -> bool:
    """Profile, host and model names: `[A-Za-z0-9_.-]+`, not starting with '-', not . or .."""
    return _NAME.fullmatch(name) is not None and name not in {".", ".."}


@dataclass(frozen=True)
class ProfileRef:
    """Where a profile was found: `origin` is "path", "cwd", "user" or "builtin" (path None)."""

    name: str
    path: Path | None
    origin: str


# -- where profiles live --------------------------------------------------------------------


def resolve_env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """`env`, or `os.environ` when it is None."""
    return os.environ if env is None else env


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def expand(text: str, env: Mapping[str, str]) -> Path:
    """`~` and `~/...` expand against `$HOME` of `env`; `~user` as the OS does."""
    if text == "~" or text.startswith("~/"):
        return _home(env) / text[2:]
    return Path(text).expanduser()


def _xdg(env: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = env.get(variable, "")
    # The XDG spec says relative values are invalid and must be ignored.
    return Path(value) if value and Path(value).is_absolute() else _home(env) / fallback


def user_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/bitinglip`, or `~/.config/bitinglip`."""
    return _xdg(resolve_env(env), "XDG_CONFIG_HOME", ".config") / "bitinglip"


def default_data_dir(profile_name: str, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_DATA_HOME/bitinglip/<name>`, or `~/.local/share/bitinglip/<name>`."""
    return _xdg(resolve_env(env), "XDG_DATA_HOME", ".local/share") / "bitinglip" / profile_name


def base_dir(cwd: Path | None) -> Path:
    return (Path.cwd() if cwd is None else Path(cwd)).absolute()


# -- finding profiles -----------------------------------------------------------------------


def _is_path_ref(ref: str) -> bool:
    separators = {"/", os.sep, os.altsep or "/"}
    return ref.endswith(".toml") or any(sep in ref for sep in separators)


def _search_dirs(env: Mapping[str, str], cwd: Path) -> list[tuple[str, Path]]:
    return [("cwd", cwd / "profiles"), ("user", user_config_dir(env) / "profiles")]


def find_profile(
    ref: str | None = None, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> ProfileRef:
    """Resolve `ref` (else `$BITINGLIP_PROFILE`, else "default") to a profile file or builtin."""
    environ, base = resolve_env(env), base_dir(cwd)
    wanted = ref or environ.get(ENV_PROFILE) or "default"
    given = "--profile" if ref else (ENV_PROFILE if environ.get(ENV_PROFILE) else "profile")
    if _is_path_ref(wanted):
        path = expand(wanted, environ)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(
                f"{given} {wanted}: profile file {path} {problem}; check the path, "
                f"or give a profile name ({_names(environ, base)})"
            )
        return ProfileRef(path.stem, path, "path")
    if not valid_name(wanted):
        raise ConfigError(
            f"{given} {wanted!r}: not a valid profile name; {NAME_RULE}, or give a path"
        )
    dirs = _search_dirs(environ, base)
    for origin, folder in dirs:
        if (folder / f"{wanted}.toml").is_file():
            return ProfileRef(wanted, folder / f"{wanted}.toml", origin)
    if wanted == "default":
        return ProfileRef("default", None, "builtin")
    looked = ", ".join(str(folder / f"{wanted}.toml") for _, folder in dirs)
    raise ConfigError(
        f"{given} {wanted!r}: unknown profile, looked for {looked}; "
        f"available profiles: {_names(environ, base)}"
    )


def _names(env: Mapping[str, str], cwd: Path) -> str:
    return ", ".join(found.name for found in list_profiles(env=env, cwd=cwd))


def list_profiles(
    *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> list[ProfileRef]:
    """Every discoverable profile by name (first found wins), with the builtin "default"."""
    found: dict[str, ProfileRef] = {}
    for origin, folder in _search_dirs(resolve_env(env), base_dir(cwd)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            if path.is_file() and valid_name(path.stem) and path.stem not in found:
                found[path.stem] = ProfileRef(path.stem, path, origin)
    found.setdefault("default", ProfileRef("default", None, "builtin"))
    return [found[name] for name in sorted(found)]
