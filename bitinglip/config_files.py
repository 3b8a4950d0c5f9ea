"""Profile files: where they live, where each key sits in one, and strict reads from them.

`find_profile` and `list_profiles` look in `<cwd>/profiles/`, then `<user_config_dir>/profiles/`.
`tomllib` gives no positions, so `KeyLocator` scans the text once for `[table]` and `[[array]]`
headers (counting each array's tables) and `key = value` lines (dotted and quoted keys too),
skipping multi-line strings, arrays and inline tables; a key inside an inline value reports its
holder's line, a missing key its table's header line (or 1). `Table` makes typed, strict reads
(a bool is never an integer; a float takes an integer) that fail with one-line `ConfigError`s:
`file:line: key: problem; fix`. Standard library only; `bitinglip.config` re-exports the API.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

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


# -- finding keys ---------------------------------------------------------------------------

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LITERAL_STRING = re.compile(r"'[^']*'")
_KEY_PART = re.compile(rf"{_BASIC_STRING.pattern}|{_LITERAL_STRING.pattern}|{_BARE_KEY.pattern}")
_GAP = r"[ \t]*"
_DOTTED_KEY = re.compile(
    rf"{_GAP}(?:{_KEY_PART.pattern})(?:{_GAP}\.{_GAP}(?:{_KEY_PART.pattern}))*{_GAP}"
)


def format_key(path: KeyPath) -> str:
    """`("hosts", 1, "port")` -> `hosts[1].port`; keys that are not bare are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{text}" if out else text
    return out or "(top level)"


def describe(value: object) -> str:
    """A short, single-line, TOML-flavoured rendering of a parsed value for messages."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, bool):
        return str(value).lower()
    return kind_of(value) if isinstance(value, dict | list) else str(value)


_KINDS = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
_KINDS |= {dict: "a table", list: "an array"}


def kind_of(value: object) -> str:
    """The TOML type name of a parsed value, with its article."""
    return _KINDS.get(type(value), "a date/time")


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


class _Scanner:
    """Character-level state that survives across lines: open brackets and multi-line strings."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string: str | None = None  # the closing delimiter of an open multi-line string

    @property
    def at_statement(self) -> bool:
        return self.depth == 0 and self.in_string is None

    def feed(self, line: str, start: int = 0) -> None:
        i = start
        while i < len(line):
            if self.in_string is not None:
                i = self._close_string(line, i)
                continue
            ch = line[i]
            if ch == "#":
                return
            if line.startswith(('"""', "'''"), i):
                self.in_string = line[i : i + 3]
                i += 3
            elif ch in "\"'":
                pattern = _BASIC_STRING if ch == '"' else _LITERAL_STRING
                found = pattern.match(line, i)
                i = found.end() if found else len(line)
            else:
                self.depth += ch in "[{"
                self.depth -= ch in "]}"
                i += 1

    def _close_string(self, line: str, i: int) -> int:
        assert self.in_string is not None
        while i < len(line):
            if self.in_string == '"""' and line[i] == "\\":
                i += 2
                continue
            if line.startswith(self.in_string, i):
                # Up to two quotes may sit right before the closing delimiter.
                end = i + 3
                while line.startswith(self.in_string[0], end) and end < i + 5:
                    end += 1
                self.in_string = None
                return end
            i += 1
        return i


def _parse_keys(line: str, start: int) -> tuple[list[str], int] | None:
    """Parse the dotted key at `line[start:]`: its parts and the index after it, or None."""
    found = _DOTTED_KEY.match(line, start)
    if not found:
        return None
    parts = [token.group(0) for token in _KEY_PART.finditer(found.group(0))]
    return [_unquote(part) for part in parts], found.end()


def _unquote(token: str) -> str:
    if token.startswith('"'):
        try:
            return str(json.loads(token))
        except ValueError:
            return token[1:-1]
    return token[1:-1] if token.startswith("'") else token


class KeyLocator:
    """Maps key paths of a TOML text to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}
        self._scan(text)

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, else of its nearest located parent, else 1."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def _scan(self, text: str) -> None:
        scanner = _Scanner()
        table: KeyPath = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if not scanner.at_statement:
                scanner.feed(line)
                continue
            stripped = line.lstrip()
            offset = len(line) - len(stripped)
            if stripped.startswith("["):
                table = self._header(stripped, number) or table
                continue
            parsed = _parse_keys(line, offset)
            if parsed is None or not line.startswith("=", parsed[1]):
                continue
            parts, end = parsed
            for n in range(1, len(parts) + 1):
                self.lines.setdefault(table + tuple(parts[:n]), number)
            scanner.feed(line, end + 1)

    def _header(self, stripped: str, number: int) -> KeyPath | None:
        is_array = stripped.startswith("[[")
        parsed = _parse_keys(stripped, 2 if is_array else 1)
        if parsed is None:
            return None
        resolved: KeyPath = ()
        for n, part in enumerate(parsed[0], start=1):
            resolved += (part,)
            if is_array and n == len(parsed[0]):
                count = self._arrays.get(resolved, 0)
                self._arrays[resolved] = count + 1
                self.lines.setdefault(resolved, number)
                resolved += (count,)
            elif resolved in self._arrays:
                resolved += (self._arrays[resolved] - 1,)
        self.lines[resolved] = number
        return resolved


class Source:
    """A profile text's label (its file name) and key lines: the `file:line` of every error."""

    def __init__(self, label: str, text: str) -> None:
        self.label = label
        self.locator = KeyLocator(text)

    def fail(self, path: KeyPath, problem: str, fix: str) -> NoReturn:
        line = self.locator.line_of(path)
        raise ConfigError(one_line(f"{self.label}:{line}: {format_key(path)}: {problem}; {fix}"))


class Table:
    """One parsed TOML table at `path`; unknown keys fail at once when `known` is given."""

    def __init__(
        self, data: Mapping[str, Any], path: KeyPath, source: Source, known: Iterable[str] = ()
    ) -> None:
        self.data, self.path, self.source = data, path, source
        names = list(known)
        for key in data if names else ():
            if key not in names:
                self.fail(key, "unknown key", "known keys: " + ", ".join(names))

    def fail(self, key: str | int | None, problem: str, fix: str) -> NoReturn:
        self.source.fail(self.path if key is None else (*self.path, key), problem, fix)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def table(self, key: str, known: Iterable[str] = (), fix: str = "") -> Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            fix = fix or f"write it as a [{format_key((*self.path, key))}] table"
            self.fail(key, f"expected a table, got {kind_of(value)}", fix)
        return Table(value, (*self.path, key), self.source, known)

    def tables(self, key: str, known: Iterable[str]) -> list[Table]:
        """An array of tables, like `[[hosts]]`."""
        value = self.data.get(key, [])
        fix = f"write each one as a [[{format_key((*self.path, key))}]] table"
        if not isinstance(value, list):
            self.fail(key, f"expected an array of tables, got {kind_of(value)}", fix)
        at = (*self.path, key)
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.source.fail((*at, index), f"expected a table, got {kind_of(item)}", fix)
        return [Table(item, (*at, index), self.source, known) for index, item in enumerate(value)]

    def str_map(self, key: str) -> dict[str, str]:
        """A table of strings, like `labels = { role = "dev" }`."""
        table = self.table(key, fix=f'write it like {key} = {{ role = "dev" }}')
        for name, item in table.data.items():
            if not isinstance(item, str):
                table.wrong_type(name, "a string", f'{name} = "..."')
        return dict(table.data)

    def opt_str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            self.wrong_type(key, "a string", f'{key} = "..."')
        if value is not None and not value.strip():
            self.fail(key, "is empty", "give it a value or remove the key")
        return value

    def need_str(self, key: str, example: str) -> str:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            self.fail(key, "missing key" if value is None else "is empty", f"add {key} = {example}")
        return str(self.opt_str(key))

    def choice(self, key: str, options: Iterable[str]) -> str | None:
        value, names = self.opt_str(key), list(options)
        if value is not None and value not in names:
            listed = " or ".join(json.dumps(name) for name in names)
            self.fail(key, f"{describe(value)} is not allowed", f"use {listed}")
        return value

    def integer(self, key: str, default: int, low: int, high: int | None, fix: str) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(key, "an integer", f"{key} = {default}")
        if value < low or (high is not None and value > high):
            self.fail(key, f"{value} is out of range", fix)
        return value

    def number(self, key: str, default: float, low: float, *, inclusive: bool = False) -> float:
        """A finite float (an integer is fine) above `low`, or equal to it when `inclusive`."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(key, "a number", f"{key} = {default}")
        if not math.isfinite(value):
            self.fail(key, f"{value} is not a finite number", f"write it like {key} = {default}")
        if value < low or (value == low and not inclusive):
            bound = f"at least {low:g}" if inclusive else f"greater than {low:g}"
            self.fail(key, f"{value} is out of range", f"use a number {bound}")
        return float(value)

    def wrong_type(self, key: str, expected: str, example: str) -> NoReturn:
        value = self.data[key]
        got = (
            kind_of(value)
            if isinstance(value, dict | list)
            else f"{kind_of(value)} ({describe(value)})"
        )
        self.fail(key, f"expected {expected}, got {got}", f"write it like {example}")
