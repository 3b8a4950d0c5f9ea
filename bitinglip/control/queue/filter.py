"""One page of the task list: a filter parsed into SQL, a sort, a keyset cursor, and counts.

The console's Tasks view shows a page (a few hundred rows) of a queue that may hold a million
tasks, so every read is bounded by an index and by what it returns (`keyset`): pages follow a
cursor (never an OFFSET); the counts by state come from the counters; how many tasks a filter
keeps is exact where the counters answer it (no filter, `state:`, `job:`), else counted in a
bounded window and said so. Sorting by id or age walks an index; sorting by another column
sorts the newest `window` tasks the filter's index gives. A row carries only what a list shows
(no payload, no result: its tokens/s is computed in SQL).

A filter is words, all of which must hold (AND): free text (matched in the id, kind, state,
model, host, error, custom id and payload), `state:`, `kind:`, `job:` (exact; a comma gives a
choice, `state:queued,running`), `host:` (where it ran or is pinned), `model:` (part of the
name); a leading `-` negates a word (`-state:succeeded`). Quotes keep spaces in one word.
"""

from __future__ import annotations

import shlex
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from bitinglip_agent.protocol import KINDS, TaskState

from bitinglip.control.queue import keyset
from bitinglip.control.queue.keyset import WINDOW, Cursor, Tally, Terms
from bitinglip.control.queue.views import WAIT_REASON, counts
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
    "age": ("id", True),  # youngest first: tasks are numbered as they are created
    "tokens_s": (TOKENS_PER_S, True),
}
# Free text: a case-insensitive (ASCII) substring of any of these columns.
_TEXT_COLUMNS = ("kind", "state", "model", "ran_on", "host", "error", "custom_id", "payload")
_TEXT = " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in _TEXT_COLUMNS)
_ROW_COLUMNS = (
    "id, kind, model, coalesce(ran_on, host), state, priority, attempt, max_attempts,"
    f" created_at, job_id, {TOKENS_PER_S}, {WAIT_REASON}"
)
BY_ID = frozenset({"id", "age"})  # sorts an index answers; the others sort a window


@dataclass(frozen=True)
class TaskFilter:
    """A parsed filter: an SQL condition (empty for none) and its parameters."""

    text: str
    condition: str
    args: tuple[Any, ...]
    terms: Terms = field(default_factory=Terms)  # the same, split: indexes answer, the rest

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
    at_least: bool = False  # counting stopped at `matching`: there are more
    counted_within: int | None = None  # `matching` counts the newest this-many tasks only
    sorted_within: int | None = None  # the sort ordered the newest this-many tasks only
    searched: int | None = None  # these rows were searched for in this many tasks only
    next: Cursor | None = None  # read the page after this one (None: this is the last)
    prev: Cursor | None = None  # read the page before this one (None: this is the first)


def parse_filter(text: str) -> TaskFilter:
    """Turn `/` filter text into SQL; an InputError says which word is wrong and why."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InputError(f"filter {text!r}: {exc}; close the quote") from None
    clauses: list[str] = []
    args: list[Any] = []
    split = _Split()
    for word in words:
        negate = word.startswith("-") and len(word) > 1
        clause, values = _clause(word[1:] if negate else word)
        clauses.append(f"{'NOT ' if negate else ''}coalesce(({clause}), 0)")
        args.extend(values)
        split.add(word[1:] if negate else word, negate, clauses[-1], values)
    return TaskFilter(text, " AND ".join(clauses), tuple(args), split.terms())


class _Split:
    """The words of a filter sorted into sets of states, kinds and jobs (what an index can
    answer: a negated state or kind is the set of the others) and the rest."""

    def __init__(self) -> None:
        self.sets: dict[str, set[Any] | None] = {"state": None, "kind": None, "job": None}
        self.rest: list[str] = []
        self.rest_args: list[Any] = []

    def add(self, word: str, negate: bool, clause: str, values: list[Any]) -> None:
        key, sep, _ = word.partition(":")
        key = key.lower()
        if sep and key in self.sets and values and not (negate and key == "job"):
            everything: set[Any] = set(values)  # a job: only what is named
            if key in ("state", "kind"):
                everything = {s.value for s in TaskState} if key == "state" else set(KINDS)
            old = self.sets[key]
            current = everything if old is None else old
            self.sets[key] = current - set(values) if negate else current & set(values)
            return
        self.rest.append(clause)
        self.rest_args.extend(values)

    def terms(self) -> Terms:
        states, kinds, jobs = (self.sets[k] for k in ("state", "kind", "job"))
        return Terms(
            states=None if states is None else frozenset(states),
            kinds=None if kinds is None else frozenset(str(k) for k in kinds),
            jobs=None if jobs is None else frozenset(jobs),
            rest=" AND ".join(self.rest),
            rest_args=tuple(self.rest_args),
        )


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
    *,
    after: Cursor | None = None,
    before: Cursor | None = None,
    window: int = WINDOW,
) -> TaskPage:
    """The `limit` tasks the filter keeps after `after` (or before `before`, or the first), in
    `sort` order (its natural direction unless `descending` says), with counts, read in one
    snapshot. No read looks at more than about `window` rows (see the module docstring)."""
    down = SORTS[sort][1] if descending is None else descending
    with store.read():
        totals = counts(store)
        stream = keyset.choose(
            store.conn, found.terms, totals, lambda job: counts(store, job_id=job), window
        )
        if stream is None:  # the filter contradicts itself (state:queued -state:queued)
            return TaskPage([], totals, 0)
        part = _read(store.conn, stream, sort, down, limit, after, before, window)
        if before is not None and part.prev is None:  # back at the top: a full first page
            part = _read(store.conn, stream, sort, down, limit, None, None, window)
        sorted_within = part.window if sort not in BY_ID else None
        tally = _matching(store, found.terms, stream, totals, window)
    return TaskPage(
        [TaskRow(*row[:12]) for row in part.rows],
        totals,
        tally.n,
        at_least=tally.at_least,
        counted_within=tally.within,
        sorted_within=sorted_within,
        searched=part.window if sort in BY_ID else None,
        next=part.next,
        prev=part.prev,
    )


def _read(
    conn: sqlite3.Connection,
    stream: keyset.Stream,
    sort: str,
    down: bool,
    limit: int,
    after: Cursor | None,
    before: Cursor | None,
    window: int,
) -> keyset.Slice:
    if sort in BY_ID:
        return keyset.by_id(
            conn, stream, _ROW_COLUMNS, descending=down, limit=limit, after=after,
            before=before, window=window,
        )  # fmt: skip
    return keyset.by_value(
        conn, stream, _ROW_COLUMNS, SORTS[sort][0], descending=down, limit=limit, after=after,
        before=before, window=window,
    )  # fmt: skip


def _matching(
    store: Store, terms: Terms, stream: keyset.Stream, totals: dict[str, int], window: int
) -> Tally:
    """Exact from the counters where they answer (no filter but states and one job), else
    counted within `window` rows."""
    if not terms.rest and terms.kinds is None and (terms.jobs is None or len(terms.jobs) == 1):
        by_state = totals if terms.jobs is None else counts(store, job_id=next(iter(terms.jobs)))
        states = terms.states if terms.states is not None else by_state.keys()
        return Tally(sum(by_state.get(s, 0) for s in states))
    return keyset.count(store.conn, stream, window)
