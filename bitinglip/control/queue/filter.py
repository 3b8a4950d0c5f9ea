"""One page of the task list: a filter parsed into SQL, a sort, and counts for a summary.

The console's Tasks view shows a page (a few hundred rows) of a queue that may hold tens of
thousands of tasks, so filtering, sorting and limiting all happen in SQLite, and a row carries
only what a list shows (no payload, no result: its tokens/s is computed in SQL).

A filter is words, all of which must hold (AND): free text (matched in the id, kind, state,
model, host, error, custom id and payload), `state:`, `kind:`, `job:` (exact; a comma gives a
choice, `state:queued,running`), `host:` (where it ran or is pinned), `model:` (part of the
name); a leading `-` negates a word (`-state:succeeded`). Quotes keep spaces in one word.
"""

from __future__ import annotations

import shlex
import sqlite3
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import KINDS, TaskState

from bitinglip.control.store.db import Store
from bitinglip.errors import InputError

FIELDS = ("state", "kind", "job", "host", "model")
MAX_ID = 2**63 - 1  # SQLite's largest integer
# A generate/chat result holds timings.tokens_per_s; else completion tokens over the run time.
TOKENS_PER_S = (
    "CASE WHEN result IS NULL AND progress IS NULL THEN NULL ELSE"
    " coalesce(json_extract(result, '$.timings.tokens_per_s'),"
    " json_extract(progress, '$.tokens_per_s'),"
    " json_extract(result, '$.usage.completion_tokens') / nullif(finished_at - started_at, 0))"
    " END"
)
NULLABLE = frozenset({"model", "host", "tokens_s"})
_STATE_RANK = " ".join(f"WHEN '{s.value}' THEN {i}" for i, s in enumerate(TaskState))
# column -> (SQL expression, descending by default)
SORTS: dict[str, tuple[str, bool]] = {
    "id": ("id", True),
    "kind": ("kind", False),
    "model": ("model", False),
    "host": ("coalesce(ran_on, host)", False),
    "state": (f"CASE state {_STATE_RANK} END", False),
    "priority": ("priority", True),
    "attempt": ("attempt", True),
    "age": ("created_at", True),  # youngest first
    "tokens_s": (TOKENS_PER_S, True),
}
# Free text: a case-insensitive (ASCII) substring of any of these columns.
_TEXT_COLUMNS = ("kind", "state", "model", "ran_on", "host", "error", "custom_id", "payload")
_TEXT = " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in _TEXT_COLUMNS)
_ROW_COLUMNS = (
    "id, kind, model, coalesce(ran_on, host), state, priority, attempt, max_attempts,"
    f" created_at, job_id, {TOKENS_PER_S}, wait_reason"
)


@dataclass(frozen=True)
class TaskFilter:
    """A parsed filter: an SQL condition (empty for none) and its parameters."""

    text: str
    condition: str
    args: tuple[Any, ...]

    @property
    def where(self) -> str:
        return f"WHERE {self.condition}" if self.condition else ""


@dataclass(frozen=True)
class TaskRow:
    """What the task list shows of one task."""

    id: int
    kind: str
    model: str | None
    host: str | None  # where it ran, else where it is pinned
    state: str
    priority: int
    attempt: int
    max_attempts: int
    created_at: float
    job_id: int | None
    tokens_per_s: float | None
    wait_reason: str | None = None  # why a queued model task waits (placement's word)


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    counts: dict[str, int]  # every task by state, whatever the filter
    matching: int  # tasks the filter keeps (all of them when there is none)


def parse_filter(text: str) -> TaskFilter:
    """Turn `/` filter text into SQL; an InputError says which word is wrong and why."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InputError(f"filter {text!r}: {exc}; close the quote") from None
    clauses: list[str] = []
    args: list[Any] = []
    for word in words:
        negate = word.startswith("-") and len(word) > 1
        clause, values = _clause(word[1:] if negate else word)
        clauses.append(f"{'NOT ' if negate else ''}coalesce(({clause}), 0)")
        args.extend(values)
    return TaskFilter(text, " AND ".join(clauses), tuple(args))


def _clause(word: str) -> tuple[str, list[Any]]:
    key, sep, value = word.partition(":")
    key = key.lower()
    if not sep or key not in FIELDS or not value:
        return _text_clause(word)
    choices = [v for v in value.split(",") if v]
    if key == "state":
        return _choice(
            "state", [_known(v.lower(), [s.value for s in TaskState], key) for v in choices]
        )
    if key == "kind":
        return _choice("kind", [_known(v.lower(), list(KINDS), key) for v in choices])
    if key == "job":
        return _choice("job_id", [_job_id(v) for v in choices])
    if key == "host":
        marks = ",".join("?" * len(choices))
        return f"coalesce(ran_on, host) IN ({marks}) OR host IN ({marks})", choices * 2
    return "instr(lower(model), ?) > 0", [value.lower()]


def _text_clause(word: str) -> tuple[str, list[Any]]:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    likes = [f"%{escaped}%"] * len(_TEXT_COLUMNS)
    task_id = _number(word.lstrip("#"))
    if task_id is not None:
        return f"id = ? OR {_TEXT}", [task_id, *likes]
    return _TEXT, likes


def _number(text: str) -> int | None:
    """`text` as an id: ASCII digits only (`"²".isdigit()` is true, `int("²")` raises) and within
    SQLite's integer range (a bigger number overflows every query); else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _choice(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", values


def _known(value: str, known: list[str], key: str) -> str:
    if value not in known:
        raise InputError(f"filter {key}:{value}: unknown {key}; use one of {', '.join(known)}")
    return value


def _job_id(value: str) -> int:
    job_id = _number(value)
    if job_id is None:
        raise InputError(f"filter job:{value}: a job is a number (digits 0-9), like job:3")
    return job_id


def page(
    store: Store,
    found: TaskFilter,
    sort: str = "id",
    descending: bool | None = None,
    limit: int = 200,
) -> TaskPage:
    """The first `limit` tasks the filter keeps, in `sort` order (its natural direction unless
    `descending` says), with counts, read in one snapshot."""
    expression, natural = SORTS[sort]
    direction = "DESC" if (natural if descending is None else descending) else "ASC"
    nulls = " NULLS LAST" if sort in NULLABLE else ""
    order = f"{expression} {direction}{nulls}, id DESC"
    with store.read() as conn:
        rows = conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM tasks {found.where} ORDER BY {order} LIMIT ?",
            (*found.args, limit),
        ).fetchall()
        counts, matching = _counts(conn, found)
    return TaskPage([TaskRow(*row) for row in rows], counts, matching)


def _counts(conn: sqlite3.Connection, found: TaskFilter) -> tuple[dict[str, int], int]:
    """Tasks by state, and how many the filter keeps: one pass over the table."""
    keeps = f"total(CASE WHEN {found.condition} THEN 1 ELSE 0 END)" if found.condition else "0"
    by_state = {
        state: (int(n), int(kept))
        for state, n, kept in conn.execute(
            f"SELECT state, count(*), {keeps} FROM tasks GROUP BY state", found.args
        )
    }
    counts = {s.value: by_state.get(s.value, (0, 0))[0] for s in TaskState}
    matching = (
        sum(kept for _, kept in by_state.values()) if found.condition else sum(counts.values())
    )
    return counts, matching
