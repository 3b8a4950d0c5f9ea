"""Where each key sits in a profile's text: `KeyLocator` maps key paths to line numbers.

`tomllib` gives no positions, so `KeyLocator` scans the text once for `[table]` and `[[array]]`
headers (counting each array's tables) and `key = value` lines (dotted and quoted keys too),
skipping multi-line strings, arrays and inline tables; a key inside an inline value reports its
holder's line, a missing key its table's header line (or 1). `format_key` writes a key path the
way messages name it (`hosts[1].port`). Standard library only; `config_tables.py` turns the lines
into `file:line` errors and `config_edit.py` uses them to splice entries.
"""

from __future__ import annotations

import json
import re

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
