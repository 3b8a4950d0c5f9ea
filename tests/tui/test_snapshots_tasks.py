"""Snapshots of the Tasks view, of a task that died (its error and its events), and of the
Jobs view, at 120x36, from tasks written with a fixed clock (`tests/tui/tasks_fixtures.py`)
behind a backend that runs no control loop (`Backend(control=False)`: nothing changes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Static

from bitinglip.config import Profile
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from bitinglip.tui.views.task_detail import TaskScreen
from tests.tui.tasks_fixtures import NOW, History, write_history

SIZE = (120, 36)


@pytest.fixture
def history_backend(profile: Profile) -> Iterator[tuple[Backend, History]]:
    backend = Backend(profile, control=False)
    backend.start()
    history = backend.call_sync(write_history)
    try:
        yield backend, history
    finally:
        backend.close()


def until_rows(view: str, rows: int) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        table = app.views[view].query_one(f"#{view}-table", Widget)
        for _ in range(500):
            if getattr(table, "row_count", None) == rows:
                break
            await pilot.pause(0.02)
        assert getattr(table, "row_count", None) == rows
        await pilot.pause()

    return run_before


def test_tasks_view(history_backend: tuple[Backend, History], snap_compare: Any) -> None:
    backend, _ = history_backend
    app = ConsoleApp(backend, start="tasks", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("tasks", 19))


def test_task_that_died(history_backend: tuple[Backend, History], snap_compare: Any) -> None:
    backend, history = history_backend
    app = ConsoleApp(backend, start="tasks", now=lambda: NOW, tick_s=3600)

    async def open_dead(pilot: Pilot[Any]) -> None:
        await until_rows("tasks", 19)(pilot)
        app.views["tasks"].open_task(history.dead)  # type: ignore[attr-defined]
        for _ in range(500):
            await pilot.pause(0.02)
            screen = app.screen
            if isinstance(screen, TaskScreen) and "dead" in str(
                screen.query_one("#task-head", Static).render()
            ):
                break
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=open_dead)


def test_jobs_view(history_backend: tuple[Backend, History], snap_compare: Any) -> None:
    backend, _ = history_backend
    app = ConsoleApp(backend, start="jobs", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("jobs", 1))
