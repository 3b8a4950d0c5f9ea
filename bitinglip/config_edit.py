"""Edit a profile file in place: add or remove one `[[hosts]]` entry and keep everything else.

The edit is a splice of lines, so every byte outside the changed entry stays as it was: comments,
blank lines, key order, quoting, line endings. tomlkit renders the new entry (escaping, inline
`labels`); it does not place it, because tomlkit keeps the comments between two tables in the
first one's body, so its own insert and delete would carry the next table's comments along.

Where an entry sits, found by `KeyLocator` (which knows multi-line strings and arrays): from the
comment lines right above its `[[hosts]]` header (no blank line between: they describe it),
through its sub-tables like `[hosts.labels]`, to its last key, plus comment lines right below that
(commented-out keys) unless they run into the next header. `add_host` puts a blank line and the
new entry after the last entry; `remove_host` takes an entry and one blank line beside it, so an
add followed by a remove gives back the original bytes.

Every new text is validated with `parse_profile` (and its hosts compared with the intended ones)
before it is written, atomically, with the file's mode: a profile that does not load is never
written. The built-in default profile has no file: an edit of it writes
`<user_config_dir>/profiles/<name>.toml`, the default's TOML under a header comment.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitinglip.config import DEFAULT_PROFILE_TOML, Profile, parse_profile
from bitinglip.config_files import user_config_dir
from bitinglip.config_locator import KeyLocator, KeyPath
from bitinglip.config_tables import describe
from bitinglip.errors import ConfigError

__all__ = ["CREATED_HEADER", "add_host", "remove_host", "render_host"]

# The order keys are written in; keys not listed follow in the caller's order.
HOST_KEY_ORDER = (
    "name",
    "kind",
    "address",
    "port",
    "user",
    "identity_file",
    "proxy_jump",
    "python",
    "workdir",
    "model_dir",
    "max_concurrency",
    "max_loaded_models",
    "memory_budget_gib",
    "cache_quota_gib",
    "labels",
)

CREATED_HEADER = """\
# Created by `bitinglip hosts add` from the built-in default profile. Edit it freely:
# `bitinglip hosts add` and `bitinglip hosts rm` keep comments and formatting.

"""


def add_host(profile: Profile, host: Mapping[str, object]) -> Path:
    """Append `host` (TOML keys; None values left out) to the profile's hosts; the file written."""
    path, text = _profile_text(profile)
    layout = _Layout(text, path)
    entry = render_host(host, layout.newline)
    name = host.get("name")
    if isinstance(name, str) and name in layout.names:
        index = layout.names.index(name)
        raise ConfigError(
            f"{path}:{layout.header_line(index) + 1}: hosts[{index}].name: a host named "
            f"{describe(name)} already exists; choose another name, or remove it first with "
            f"`bitinglip hosts rm {name}`"
        )
    added = tomllib.loads(entry)["hosts"][0]
    _write_checked(profile, path, layout.with_entry(entry), [*layout.hosts, added])
    return path


def remove_host(profile: Profile, name: str) -> Path:
    """Remove the host `name` (its whole entry, nothing else) from the profile; the file written."""
    path, text = _profile_text(profile)
    layout = _Layout(text, path)
    if name not in layout.names:
        where = path if profile.path is not None else "the built-in default profile"
        raise ConfigError(f"no host {name} in {where}; `bitinglip hosts ls` lists them")
    index = layout.names.index(name)
    kept = [host for i, host in enumerate(layout.hosts) if i != index]
    _write_checked(profile, path, layout.without_entry(index), kept)
    return path


def render_host(host: Mapping[str, object], newline: str = "\n") -> str:
    """One `[[hosts]]` table as TOML text; a Path is a string, a mapping an inline table."""
    import tomlkit  # the one module that writes TOML

    table = tomlkit.table()
    rank = {key: i for i, key in enumerate(HOST_KEY_ORDER)}
    for key in sorted(host, key=lambda key: rank.get(key, len(rank))):
        value: Any = host[key]
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, Mapping):
            inline = tomlkit.inline_table()
            inline.update(value)
            value = inline
        table.add(key, value)
    document = tomlkit.document()
    entries = tomlkit.aot()
    entries.append(table)
    document.append("hosts", entries)
    return document.as_string().replace("\n", newline)


# -- where things are -----------------------------------------------------------------------


# Characters str.splitlines() (so KeyLocator) breaks lines at that TOML does not: within a string
# or comment, a space in their place keeps KeyLocator's line numbers those of "\n"-lines.
_OTHER_LINE_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


class _HeaderLocator(KeyLocator):
    """A KeyLocator that also lists every table header: (0-based line, resolved key path)."""

    def __init__(self, text: str) -> None:
        self.headers: list[tuple[int, KeyPath]] = []
        super().__init__(text)

    def _header(self, stripped: str, number: int) -> KeyPath | None:
        resolved = super()._header(stripped, number)
        if resolved is not None:
            self.headers.append((number - 1, resolved))
        return resolved


class _Layout:
    """A profile text as lines (endings kept), its parsed hosts and where their entries sit."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.lines = _split_lines(text)
        self.newline = "\r\n" if "\r\n" in text else "\n"
        try:
            hosts = tomllib.loads(text).get("hosts", [])
        except tomllib.TOMLDecodeError:
            parse_profile(text, name=path.stem, path=path)  # raises the file:line message
            raise
        self.hosts: list[Any] = hosts if isinstance(hosts, list) else []
        self.names = [h.get("name") if isinstance(h, dict) else None for h in self.hosts]
        self.headers = _HeaderLocator(text.translate(_OTHER_LINE_BREAKS)).headers

    def header_line(self, index: int) -> int:
        for line, key in self.headers:
            if key == ("hosts", index):
                return line
        raise ConfigError(
            f"{self.path}: hosts: written as an inline array, which this command cannot edit; "
            "rewrite the hosts as [[hosts]] tables, or edit the file by hand"
        )

    def entry_span(self, index: int) -> tuple[int, int]:
        """Lines [start, end) of entry `index`: its leading comments through its last key."""
        header = self.header_line(index)
        own = ("hosts", index)  # the entry's header and its sub-tables, like [hosts.labels]
        following = [line for line, key in self.headers if line > header and key[:2] != own]
        limit = min(following, default=len(self.lines))
        end = max(i for i in range(header, limit) if _is_content(self.lines[i])) + 1
        tail = end
        while tail < limit and _is_comment(self.lines[tail]):
            tail += 1
        if tail < limit or limit == len(self.lines):  # the comments do not run into a header
            end = tail
        start = header
        while start > 0 and _is_comment(self.lines[start - 1]):
            start -= 1
        return start, end

    def with_entry(self, entry: str) -> str:
        """The text with a blank line and `entry` after the last host entry (or at the end)."""
        lines = list(self.lines)
        at = self.entry_span(len(self.hosts) - 1)[1] if self.hosts else len(lines)
        if at > 0 and not lines[at - 1].endswith("\n"):
            lines[at - 1] += self.newline
        blank = [self.newline] if at > 0 and lines[at - 1].strip() else []
        return "".join(lines[:at] + blank + [entry] + lines[at:])

    def without_entry(self, index: int) -> str:
        """The text without entry `index` and one blank line that separated it."""
        start, end = self.entry_span(index)
        lines = self.lines
        blank_after = end == len(lines) or not lines[end].strip()
        if start > 0 and not lines[start - 1].strip() and blank_after:
            start -= 1
        elif start == 0 and end < len(lines) and not lines[end].strip():
            end += 1
        return "".join(lines[:start] + lines[end:])


def _split_lines(text: str) -> list[str]:
    """Lines with their ends, split at line feeds only: unlike splitlines(), never at a NEL or
    U+2028 that a string or comment holds."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _is_content(line: str) -> bool:
    return bool(line.strip()) and not _is_comment(line)


# -- reading and writing --------------------------------------------------------------------


def _profile_text(profile: Profile) -> tuple[Path, str]:
    """The file to write and its current text; for the built-in default, a new file's text."""
    if profile.path is None:
        path = user_config_dir() / "profiles" / f"{profile.name}.toml"
        if path.exists():
            raise ConfigError(
                f"{path} exists but the active profile is the built-in default; "
                f"edit that file with --profile {path}"
            )
        return path, CREATED_HEADER + DEFAULT_PROFILE_TOML
    try:
        return profile.path, profile.path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{profile.path}: cannot read the profile ({exc}); check the file's permissions "
            "and that it is UTF-8 text"
        ) from None


def _write_checked(profile: Profile, path: Path, text: str, hosts: list[Any]) -> None:
    """Validate `text` as the profile at `path`, check its hosts are `hosts`, then write it."""
    parse_profile(text, name=profile.name, path=path)
    if tomllib.loads(text).get("hosts", []) != hosts:
        raise ConfigError(
            f"{path}: the edited profile's hosts are not the intended ones, so nothing was "
            "written; edit the file by hand"
        )
    _write_atomically(path, text)


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` through a temp file in its folder: all of it or none of it."""
    target = path.resolve()  # through a symlink, write the file it points at
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None  # a new file: 0o666 less the umask, like any other
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            if mode is not None:
                os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some filesystems cannot fsync a folder, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
