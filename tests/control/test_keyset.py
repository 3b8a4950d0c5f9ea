"""Keyset pages of tasks (`queue.keyset` through `filter.page` and `views.list_page`) on a real
state database: no task twice, none skipped, while tasks arrive between reads; bounded counts;
every query through an index (EXPLAIN QUERY PLAN), never a whole-table scan."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.filter import TaskPage, page, parse_filter
from bitinglip.control.queue.keyset import Cursor
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.control.queue.views import list_page
from tests.conftest import NOWHERE


def echo(n: int, text: str = "plain") -> TaskSpec:
    return TaskSpec(kind="echo", payload={"n": n, "text": text}, labels=NOWHERE, priority=n % 4)


def walk(
    plane: ControlPlane,
    text: str,
    sort: str = "id",
    *,
    limit: int = 7,
    window: int = 10_000,
    between: Callable[[], object] = lambda: None,
) -> list[int]:
    """Every page after the first, forward; `between` runs between two reads."""
    found = parse_filter(text)
    seen: list[int] = []
    cursor: Cursor | None = None
    for _ in range(200):
        part: TaskPage = page(plane.store, found, sort, limit=limit, after=cursor, window=window)
        seen += [row.id for row in part.rows]
        if part.next is None:
            return seen
        cursor = part.next
        between()
    raise AssertionError("paging did not end")


@pytest.fixture
def tasks(plane: ControlPlane) -> list[int]:
    ids = plane.submit_many([echo(n, "hello" if n % 5 == 0 else "plain") for n in range(60)])
    plane.cancel(ids[::3])
    return ids


def test_pages_neither_repeat_nor_skip_while_tasks_arrive(
    plane: ControlPlane, tasks: list[int]
) -> None:
    def arrive() -> None:
        plane.submit_many([echo(1000 + n, "hello") for n in range(3)])

    def now(where: str, order: str = "id DESC") -> list[int]:
        """What the walk must see: the tasks there when it starts, none arriving after."""
        rows = plane.store.conn.execute(f"SELECT id FROM tasks WHERE {where} ORDER BY {order}")
        return [r[0] for r in rows]

    for text, where in [
        ("", "1"),
        ("state:queued", "state = 'queued'"),
        ("-state:canceled kind:echo", "state != 'canceled'"),
    ]:
        expected = now(where)
        assert walk(plane, text, between=arrive) == expected, text
    # free text: a residual, searched 8 tasks per page at most (the window), page after page
    expected = now("payload LIKE '%hello%'")
    assert walk(plane, "hello", window=8, between=arrive) == expected
    # a sort by another column, among the newest tasks (all of them here)
    expected = now("state = 'queued'", "priority DESC, id DESC")
    assert walk(plane, "-state:canceled", "priority") == expected


def test_paging_back_returns_the_same_pages(plane: ControlPlane, tasks: list[int]) -> None:
    found = parse_filter("state:queued")
    pages = [page(plane.store, found, limit=6)]
    while pages[-1].next is not None:
        pages.append(page(plane.store, found, limit=6, after=pages[-1].next))
    arrived = plane.submit_many([echo(500 + n) for n in range(4)])  # pages do not shift
    back = pages[-1]
    for expected in reversed(pages[:-1]):
        assert back.prev is not None
        back = page(plane.store, found, limit=6, before=back.prev)
        assert [r.id for r in back.rows] == [r.id for r in expected.rows]
    assert back.prev is not None  # the tasks that arrived meanwhile, above the first page
    newest = page(plane.store, found, limit=6, before=back.prev)
    # back at the top: a full first page, the newest again (the arrivals, then page 1's head)
    assert [r.id for r in newest.rows] == [*arrived[::-1], *[r.id for r in pages[0].rows[:2]]]
    assert newest.prev is None


def test_a_job_pages_in_line_order(plane: ControlPlane) -> None:
    specs = [TaskSpec(kind="echo", payload={"n": n}, line_no=n + 1) for n in range(25)]
    job, ids = plane.queue.submit_job("j.jsonl", "/j.jsonl", "bitinglip", specs)
    assert walk(plane, f"job:{job}", limit=4) == ids[::-1]
    first = list_page(plane.store, job_id=job, limit=10)
    second = list_page(plane.store, job_id=job, limit=10, after=first.next)
    assert [t.id for t in first.tasks + second.tasks] == ids[::-1][:20]
    assert [t.id for t in list_page(plane.store, job_id=job, before=second.prev).tasks] == ids[
        ::-1
    ][:10]


def test_counts_are_exact_from_counters_else_bounded(plane: ControlPlane, tasks: list[int]) -> None:
    assert page(plane.store, parse_filter("state:canceled"), window=5).matching == 20
    hello = page(plane.store, parse_filter("hello"), window=8)
    assert (hello.matching, hello.counted_within) == (1, 8)  # among the newest 8: n = 55
    plane.submit_many([TaskSpec(kind="remove", payload={"path": f"m{n}.gguf"}) for n in range(9)])
    removes = page(plane.store, parse_filter("kind:pull,remove"), window=5)
    assert (removes.matching, removes.at_least, removes.counted_within) == (5, True, None)
    everything = page(plane.store, parse_filter("kind:pull,remove"), window=50)
    assert (everything.matching, everything.at_least) == (9, False)
    assert page(plane.store, parse_filter("state:queued -state:queued")).rows == []


FILTERS = [
    "",
    "state:queued",
    "-state:succeeded",
    "kind:echo",
    "kind:remove",
    "job:1",
    "job:1 state:queued",
    "hello",
    "model:gemma -kind:echo",
    "host:local",
]


@pytest.mark.parametrize("sort", ["id", "age", "kind", "priority", "tokens_s"])
def test_every_query_reads_through_an_index(
    plane: ControlPlane, tasks: list[int], sort: str
) -> None:
    plane.queue.submit_job("j", "/j", "bitinglip", [TaskSpec(kind="echo", payload={}, line_no=1)])
    statements: list[str] = []
    conn = plane.store.conn
    conn.set_trace_callback(statements.append)
    try:
        for text in FILTERS:
            first = page(plane.store, parse_filter(text), sort, limit=5, window=20)
            page(plane.store, parse_filter(text), sort, limit=5, after=first.next, window=20)
            if first.rows:
                last = Cursor(first.rows[-1].id)
                page(plane.store, parse_filter(text), sort, limit=5, before=last, window=20)
        for state in (None, TaskState.QUEUED):
            listed = list_page(plane.store, state=state, limit=5, window=20)
            list_page(plane.store, state=state, job_id=1, limit=5, after=listed.next, window=20)
            list_page(plane.store, kinds=("pull", "remove"), limit=5)
    finally:
        conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "tasks" in s]
    assert reads
    for sql in reads:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not any(line.startswith("SCAN tasks") for line in plan), (sql, plan)
