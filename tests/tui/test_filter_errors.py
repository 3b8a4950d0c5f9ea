"""A filter the parser cannot take is a message in the console, never a crash: a superscript
digit where a number is expected (`"²".isdigit()` is true, `int("²")` raises) and an id past
SQLite's integer range (which made every refresh fail), typed with `/` as a user does."""

from __future__ import annotations

from typing import Any

from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.views.tasks import TasksView
from tests.tui.conftest import Console
from tests.tui.tasks_fixtures import NOW, History, write_history

TWENTY_DIGITS = "12345678901234567890"


def tasks_view(app: ConsoleApp) -> TasksView:
    view = app.views["tasks"]
    assert isinstance(view, TasksView)
    return view


def notes(app: ConsoleApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def type_filter(c: Console, text: str) -> None:
    await c.pilot.press("slash", *text, "enter")
    await c.pilot.pause()


async def test_a_bad_number_in_a_filter_is_a_message_and_the_view_keeps_working(
    console: Any,
) -> None:
    async with console(control=False, start="tasks", now=lambda: NOW) as c:
        history: History = await c.backend.call(write_history)
        await c.refreshed("tasks")
        everything = list(tasks_view(c.app).table.ids)
        for bad in ("job:²", f"job:{TWENTY_DIGITS}"):
            await type_filter(c, bad)
            assert c.app.is_running and c.app.return_code is None
            assert any(bad in n and "a job is a number" in n for n in notes(c.app)), notes(c.app)
            assert tasks_view(c.app).filter_text == ""  # the last good filter stays
            await c.refreshed("tasks")
            assert list(tasks_view(c.app).table.ids) == everything

        for text in ("²", TWENTY_DIGITS, f"#{TWENTY_DIGITS}"):  # free text: no such id, no match
            before = len(notes(c.app))
            await type_filter(c, text)
            await c.refreshed("tasks")
            assert c.app.is_running and c.app.return_code is None
            assert tasks_view(c.app).filter_text == text
            assert list(tasks_view(c.app).table.ids) == []
            assert notes(c.app)[before:] == []  # no refresh failed

        await type_filter(c, f"job:{history.job}")
        await c.refreshed("tasks")
        assert list(tasks_view(c.app).table.ids) == history.job_tasks[::-1]
