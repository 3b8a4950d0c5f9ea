"""The Tasks view pages by keyset: `]` the next page, `[` the one before; tasks arriving while
a later page is shown move none of its rows; back on the first page the view follows the
newest again. The summary says when a count or a sort is bounded (a small window injected)."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.tui.views.tasks import TasksView
from tests.conftest import NOWHERE
from tests.tui.conftest import Console


def view_of(c: Console) -> TasksView:
    view = c.app.views["tasks"]
    assert isinstance(view, TasksView)
    return view


def summary(c: Console) -> str:
    return str(view_of(c).query_one("#tasks-summary", Static).render())


def submit(plane: ControlPlane, n: int, text: str = "plain") -> list[int]:
    specs = [TaskSpec(kind="echo", payload={"text": text}, labels=NOWHERE) for _ in range(n)]
    return plane.submit_many(specs)


async def reload(c: Console) -> None:
    view_of(c).reload()
    await c.refreshed("tasks")


async def press(c: Console, key: str) -> None:
    await c.pilot.press(key)
    await c.refreshed("tasks")


async def test_pages_forward_and_back(console: Any) -> None:
    async with console(control=False, start="tasks") as c:
        view = view_of(c)
        view.page_size = 5
        ids: list[int] = await c.backend.call(submit, 12)
        newest = ids[::-1]
        await reload(c)
        assert view.table.ids == newest[:5]
        assert "] next" in summary(c) and "[ prev" not in summary(c)
        await press(c, "right_square_bracket")
        assert view.table.ids == newest[5:10] and view.page_no == 2
        assert "page 2" in summary(c) and "[ prev" in summary(c)
        arrived: list[int] = await c.backend.call(submit, 3)  # above the first page
        await reload(c)
        assert view.table.ids == newest[5:10]  # a refresh keeps the page where it was
        await press(c, "right_square_bracket")
        assert view.table.ids == newest[10:] and "] next" not in summary(c)
        await press(c, "left_square_bracket")
        assert view.table.ids == newest[5:10]
        await press(c, "left_square_bracket")
        assert view.table.ids == newest[:5]
        await press(c, "left_square_bracket")  # the first page: the tasks that arrived on top
        assert view.table.ids == [*arrived[::-1], *newest[:2]] and view.page_no == 1
        more: list[int] = await c.backend.call(submit, 1)
        await reload(c)
        assert view.table.ids[0] == more[0]  # the first page follows the newest again


async def test_the_summary_says_what_is_bounded(console: Any) -> None:
    async with console(control=False, start="tasks") as c:
        view = view_of(c)
        view.window = 4
        await c.backend.call(submit, 6, "hello")
        await c.pilot.press("slash", *"hello", "enter")
        await c.refreshed("tasks")
        assert "showing 4 of 4 matching in the newest 4" in summary(c)
        await c.pilot.press("slash", "ctrl+u", "enter")
        await c.refreshed("tasks")
        view.set_sort("kind")
        await c.refreshed("tasks")
        assert "sorted by kind ↑ among the newest 4" in summary(c)
        removes = [TaskSpec(kind="remove", payload={"path": f"m{n}.gguf"}) for n in range(6)]
        await c.backend.call(lambda plane: plane.submit_many(removes))
        await c.pilot.press("slash", *"kind:pull,remove", "enter")  # no residual: capped
        await c.refreshed("tasks")
        assert "of 4+ matching" in summary(c)
