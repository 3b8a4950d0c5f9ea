"""Pages of tasks by keyset: every read is bounded by an index and by the rows it returns.

A filter is split (`Terms`) into what an index answers (states: `tasks_state (state, id)`; one
job: `tasks_job (job_id, line_no)`; the pulls: `tasks_pulls (id)`) and the rest. `choose` picks
the smallest of those *streams* (sized by the counters) and leaves the rest as a residual
condition. A page is the next `limit` rows after (or before) a `Cursor` in the stream's order,
newest first, never an OFFSET: `by_id` walks the stream; `by_value` sorts by another column.

Bounds, so that no read walks a million rows:
- a residual condition is tried on at most `window` rows of the stream past the cursor; when
  that window holds fewer matches than a page, the page ends there and its `next` cursor
  continues after the window (the caller says so);
- a sort by another column than the id sorts the newest `window` rows of the stream only;
- `count` counts at most `window` rows (a floor then), or the newest `window` of the stream.
A job's stream is in line order: its lines are queued in one transaction in order, so that is
also the order of their ids, and a job's line numbers are unique.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import PULL_KINDS

WINDOW = 10_000
MAX_ID = 2**63 - 1
PULLS = frozenset(str(k) for k in PULL_KINDS)
_PULLS_WHERE = "kind IN ('pull', 'remove')"  # as `tasks_pulls` is defined: SQLite matches it


@dataclass(frozen=True)
class Cursor:
    """The edge row of a page: its id, its value in the sort (`by_value`) and its line in its
    job (a job's stream is in line order). A page reads after it, or before it."""

    id: int
    value: Any = None
    line: int | None = None


@dataclass(frozen=True)
class Terms:
    """A filter split: states, kinds and jobs (None: any), and the rest as SQL."""

    states: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    jobs: frozenset[int] | None = None
    rest: str = ""
    rest_args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Stream:
    """Candidate rows in index order (`column` descending is newest first), and the residual
    condition they must also meet ("" when the index answers the whole filter)."""

    where: str
    args: tuple[Any, ...]
    column: str  # "id", or "line_no" for a job's stream
    residual: str = ""
    residual_args: tuple[Any, ...] = ()
    name: str = "all"


@dataclass(frozen=True)
class Slice:
    """Rows of a page in display order (each the caller's columns, then id, line_no[, value]);
    `next`/`prev` read the pages after/before it (None: there is none); `window` when the
    page was cut to that many rows of the stream."""

    rows: list[tuple[Any, ...]]
    next: Cursor | None
    prev: Cursor | None
    window: int | None = None


def choose(
    conn: sqlite3.Connection,
    terms: Terms,
    totals: dict[str, int],
    job_totals: Callable[[int], dict[str, int]],
    window: int = WINDOW,
) -> Stream | None:
    """The smallest index stream the filter allows (None: nothing can match)."""
    if any(part is not None and not part for part in (terms.states, terms.kinds, terms.jobs)):
        return None
    options: list[tuple[int, int, str]] = [(sum(totals.values()), 0, "all")]
    if terms.states is not None:
        options.append((sum(totals.get(s, 0) for s in terms.states), 1, "state"))
    if terms.jobs is not None and len(terms.jobs) == 1:
        (job,) = terms.jobs
        options.append((sum(job_totals(job).values()), 2, "job"))
    if terms.kinds is not None and terms.kinds <= PULLS:
        (pulls,) = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {_PULLS_WHERE} AND id <= ? LIMIT ?)",
            (MAX_ID, window + 1),
        ).fetchone()
        options.append((int(pulls), 3, "pulls"))
    name = min(options, key=lambda o: (o[0], -o[1]))[2]
    return _stream(name, terms)


def _stream(name: str, terms: Terms) -> Stream:
    residual: list[str] = []
    args: list[Any] = []
    if terms.states is not None and name != "state":
        residual.append(_in("state", len(terms.states)))
        args.extend(sorted(terms.states))
    if terms.kinds is not None and not (name == "pulls" and terms.kinds == PULLS):
        residual.append(_in("kind", len(terms.kinds)))
        args.extend(sorted(terms.kinds))
    if terms.jobs is not None and name != "job":
        residual.append(_in("job_id", len(terms.jobs)))
        args.extend(sorted(terms.jobs))
    if terms.rest:
        residual.append(f"({terms.rest})")
        args.extend(terms.rest_args)
    rest = " AND ".join(residual)
    if name == "state" and terms.states is not None:
        states = tuple(sorted(terms.states))
        return Stream(_in("state", len(states)), states, "id", rest, tuple(args), name)
    if name == "job" and terms.jobs is not None:
        return Stream("job_id = ?", tuple(terms.jobs), "line_no", rest, tuple(args), name)
    if name == "pulls":
        return Stream(_PULLS_WHERE, (), "id", rest, tuple(args), name)
    return Stream("1", (), "id", rest, tuple(args), name)


def _in(column: str, n: int) -> str:
    return f"{column} IN ({', '.join('?' * n)})"


# -- paging in the stream's own order ----------------------------------------------------------


def by_id(
    conn: sqlite3.Connection,
    stream: Stream,
    columns: str,
    *,
    descending: bool = True,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
    window: int = WINDOW,
) -> Slice:
    """The page after `after` (or before `before`, or the first) in stream order."""
    cursor = before or after
    down = descending != (before is not None)  # which way this read walks the stream
    col = stream.column
    seek, seek_args = _seek(conn, stream, cursor, down)
    bound, cut = "", None
    bound_args: tuple[Any, ...] = ()
    if stream.residual:
        edge, cut = _window_edge(conn, stream, seek, seek_args, down, window)
        if cut is not None:
            bound, bound_args = f" AND {col} {'>=' if down else '<='} ?", (edge,)
    order = "DESC" if down else "ASC"
    rows = conn.execute(
        f"SELECT {columns}, id, line_no FROM tasks WHERE {stream.where} AND {seek}{bound}"
        f"{_and(stream.residual)} ORDER BY {col} {order}, id {order} LIMIT ?",
        (*stream.args, *seek_args, *bound_args, *stream.residual_args, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    beyond = _row_cursor(rows[-1]) if more else _edge_cursor(conn, stream, cut)
    if before is None:
        back = None if after is None else (_row_cursor(rows[0]) if rows else after)
        return Slice(rows, beyond, back, window if cut is not None else None)
    rows.reverse()
    ahead = _row_cursor(rows[-1]) if rows else before
    return Slice(rows, ahead, beyond, window if cut is not None else None)


def _seek(
    conn: sqlite3.Connection, stream: Stream, cursor: Cursor | None, down: bool
) -> tuple[str, tuple[Any, ...]]:
    col = stream.column
    if cursor is None:  # from the top (or the bottom): still a range, so a SEARCH
        return (f"{col} <= ?", (MAX_ID,)) if down else (f"{col} >= ?", (-MAX_ID,))
    value: Any = cursor.id
    if col == "line_no":
        value = cursor.line if cursor.line is not None else _line_of(conn, stream, cursor.id)
    return f"{col} {'<' if down else '>'} ?", (value,)


def _line_of(conn: sqlite3.Connection, stream: Stream, task_id: int) -> int:
    """The line of task `task_id` in the stream's job; for a task not in it (another job's, or
    gone), a line past either end of the job, on the side the id is (its lines were queued in
    one transaction, in order, so its ids are one run)."""
    (job,) = stream.args
    row = conn.execute(
        "SELECT line_no FROM tasks WHERE id = ? AND job_id = ?", (task_id, job)
    ).fetchone()
    if row is not None and row[0] is not None:
        return int(row[0])
    (top,) = conn.execute(
        "SELECT max(id) FROM (SELECT id FROM tasks WHERE job_id = ? ORDER BY line_no DESC LIMIT 1)",
        (job,),
    ).fetchone()
    newer = top is None or task_id > top  # the id is above the whole job (or it is empty)
    return MAX_ID if newer else -MAX_ID  # `line < MAX` is all of it, `line > MAX` none


def _window_edge(
    conn: sqlite3.Connection,
    stream: Stream,
    seek: str,
    seek_args: tuple[Any, ...],
    down: bool,
    window: int,
) -> tuple[Any, Any]:
    """The last key of the `window` stream rows past the seek, and that key again when the
    window is full (more rows follow) or None (the stream ends inside it)."""
    col = stream.column
    edge, n = conn.execute(
        f"SELECT {'min' if down else 'max'}({col}), count(*) FROM (SELECT {col} FROM tasks"
        f" WHERE {stream.where} AND {seek} ORDER BY {col} {'DESC' if down else 'ASC'} LIMIT ?)",
        (*stream.args, *seek_args, window),
    ).fetchone()
    return edge, (edge if n >= window else None)


def _edge_cursor(conn: sqlite3.Connection, stream: Stream, edge: Any) -> Cursor | None:
    """A cursor at the window's last row: the next read continues past it."""
    if edge is None:
        return None
    if stream.column == "id":
        return Cursor(int(edge))
    (task_id,) = conn.execute(
        f"SELECT id FROM tasks WHERE {stream.where} AND line_no = ?", (*stream.args, edge)
    ).fetchone()
    return Cursor(int(task_id), line=int(edge))


def _row_cursor(row: tuple[Any, ...], value: Any = None) -> Cursor:
    task_id, line = row[-2], row[-1]
    return Cursor(int(task_id), value, line)


def _and(condition: str) -> str:
    return f" AND coalesce(({condition}), 0)" if condition else ""


# -- sorting by another column, among the newest rows ------------------------------------------


def by_value(
    conn: sqlite3.Connection,
    stream: Stream,
    columns: str,
    expression: str,
    *,
    descending: bool,
    limit: int,
    after: Cursor | None = None,
    before: Cursor | None = None,
    window: int = WINDOW,
) -> Slice:
    """A page in `expression` order (NULLs last; then newest first) among the newest `window`
    rows of the stream, after `after` or before `before` (its value and id)."""
    col = stream.column
    top, top_args = _seek(conn, stream, None, True)
    edge, cut = _window_edge(conn, stream, top, top_args, True, window)
    bound, bound_args = (f" AND {col} >= ?", (edge,)) if cut is not None else ("", ())
    cursor = before or after
    seek, seek_args = _value_seek(cursor, descending, before is not None)
    forward = before is None
    direction = "DESC" if descending == forward else "ASC"
    nulls, ids = ("LAST", "DESC") if forward else ("FIRST", "ASC")
    keys = conn.execute(
        f"SELECT id, line_no, k FROM (SELECT id, line_no, {expression} AS k FROM tasks"
        f" WHERE {stream.where} AND {top}{bound}{_and(stream.residual)}) WHERE {seek}"
        f" ORDER BY k {direction} NULLS {nulls}, id {ids} LIMIT ?",
        (*stream.args, *top_args, *bound_args, *stream.residual_args, *seek_args, limit + 1),
    ).fetchall()
    more = len(keys) > limit
    keys = keys[:limit]
    if not forward:
        keys.reverse()
    found = {row[-2]: row for row in _rows_of(conn, columns, [k[0] for k in keys])}
    rows = [(*found[k[0]], k[2]) for k in keys if k[0] in found]
    first = _value_cursor(rows[0]) if rows else cursor
    last = _value_cursor(rows[-1]) if rows else cursor
    if forward:
        back = None if after is None else first
        return Slice(rows, last if more else None, back, window if cut is not None else None)
    return Slice(rows, last, first if more else None, window if cut is not None else None)


def _value_seek(
    cursor: Cursor | None, descending: bool, before: bool
) -> tuple[str, tuple[Any, ...]]:
    """Rows after (or before) `cursor` in the order `k` (descending or not) NULLS LAST, id DESC."""
    if cursor is None:
        return "1", ()
    v, i = cursor.value, cursor.id
    if not before:
        if v is None:
            return "k IS NULL AND id < ?", (i,)
        return f"(k {'<' if descending else '>'} ? OR (k = ? AND id < ?) OR k IS NULL)", (v, v, i)
    if v is None:
        return "(k IS NOT NULL OR id > ?)", (i,)
    return f"(k {'>' if descending else '<'} ? OR (k = ? AND id > ?))", (v, v, i)


def _value_cursor(row: tuple[Any, ...]) -> Cursor:
    return Cursor(int(row[-3]), row[-1], row[-2])


def _rows_of(conn: sqlite3.Connection, columns: str, ids: list[int]) -> list[tuple[Any, ...]]:
    if not ids:
        return []
    return conn.execute(
        f"SELECT {columns}, id, line_no FROM tasks WHERE id IN ({', '.join('?' * len(ids))})",
        ids,
    ).fetchall()


# -- counting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """How many rows a filter keeps: exact; or `at_least` (counting stopped there); or the
    matches among the newest `within` rows of the stream."""

    n: int
    at_least: bool = False
    within: int | None = None


def count(conn: sqlite3.Connection, stream: Stream, window: int = WINDOW) -> Tally:
    """How many rows the stream keeps, reading at most `window` (+1) of its rows."""
    top, top_args = _seek(conn, stream, None, True)
    if not stream.residual:
        (n,) = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {stream.where} AND {top} LIMIT ?)",
            (*stream.args, *top_args, window + 1),
        ).fetchone()
        return Tally(window, at_least=True) if n > window else Tally(int(n))
    edge, cut = _window_edge(conn, stream, top, top_args, True, window)
    bound, bound_args = (f" AND {stream.column} >= ?", (edge,)) if cut is not None else ("", ())
    (n,) = conn.execute(
        f"SELECT count(*) FROM tasks WHERE {stream.where} AND {top}{bound}{_and(stream.residual)}",
        (*stream.args, *top_args, *bound_args, *stream.residual_args),
    ).fetchone()
    return Tally(int(n), within=window if cut is not None else None)
