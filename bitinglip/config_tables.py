"""Strict reads from a parsed profile: `Table` and `Source`, and how values read in messages.

`Table` makes typed, strict reads (a bool is never an integer; a float takes an integer) of one
parsed TOML table, and unknown keys fail at once. Every failure is a one-line `ConfigError`,
`file:line: key: problem; fix`, with the line from `Source`'s `KeyLocator`. `describe` and
`kind_of` render parsed values for those messages. Standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from bitinglip.config_locator import KeyLocator, KeyPath, format_key
from bitinglip.errors import ConfigError


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

    def opt_bool(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            self.wrong_type(key, "a boolean", f"{key} = true")
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
