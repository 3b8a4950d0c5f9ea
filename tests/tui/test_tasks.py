"""The Tasks view: `/` filters, sorting, Enter into a task (its output followed live), and
read-only mode, against a real control plane (the local agent where work must run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TERMINAL, TaskSpec, TaskState
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.forms import ConfirmScreen
from bitinglip.tui.views.task_detail import TaskScreen
from bitinglip.tui.views.tasks import TasksView
from tests.agents.conftest import INFER_ENV
from tests.tui.conftest import Console
from tests.tui.tasks_fixtures import NOW, History, write_history


def tasks_view(app: ConsoleApp) -> TasksView:
    view = app.views["tasks"]
    assert isinstance(view, TasksView)
    return view


def shown_ids(app: ConsoleApp) -> list[int]:
    return list(tasks_view(app).table.ids)


def states_of(c: Console, ids: list[int]) -> dict[int, str]:
    return c.backend.call_sync(lambda plane: {i: plane.task(i).state.value for i in ids})


def all_ids(plane: ControlPlane, where: str) -> list[int]:
    rows = plane.store.conn.execute(f"SELECT id FROM tasks {where}").fetchall()
    return sorted((r[0] for r in rows), reverse=True)


async def filtered(c: Console, text: str) -> list[int]:
    """Type the filter with `/`, as a user does, and return the ids shown."""
    await c.pilot.press("slash", *text, "enter")
    await c.refreshed("tasks")
    assert tasks_view(c.app).filter_text == text
    return shown_ids(c.app)


async def test_filter_words_and_negation(console: Any) -> None:
    async with console(control=False, start="tasks", now=lambda: NOW) as c:
        history: History = await c.backend.call(write_history)
        await c.refreshed("tasks")
        assert len(shown_ids(c.app)) == 19
        run = c.backend.call_sync
        assert await filtered(c, "state:queued") == run(all_ids, "WHERE state = 'queued'")
        not_done = await filtered(c, "-state:succeeded")
        assert not_done == run(all_ids, "WHERE state != 'succeeded'") and len(not_done) == 14
        echo_done = await filtered(c, "kind:echo state:succeeded")
        assert echo_done == run(all_ids, "WHERE kind = 'echo' AND state = 'succeeded'")
        assert len(echo_done) == 4
        ran_here = await filtered(c, "host:local -kind:echo")
        assert ran_here == [history.running, history.dead, history.succeeded]
        assert await filtered(c, "model:GEMMA haiku") == [history.running]
        assert await filtered(c, f"job:{history.job}") == history.job_tasks[::-1]
        assert await filtered(c, "state:running,dead") == [history.running, history.dead]
        summary = str(tasks_view(c.app).query_one("#tasks-summary", Static).render())
        assert "showing 2 of 2 matching" in summary
        assert "19 tasks" in summary and "9 queued" in summary


async def test_a_bad_filter_says_why_and_keeps_the_last(console: Any) -> None:
    async with console(control=False, start="tasks", now=lambda: NOW) as c:
        await c.backend.call(write_history)
        await filtered(c, "state:dead")
        await c.pilot.press("slash", *"state:bogus", "enter")
        await c.pilot.pause()
        assert tasks_view(c.app).filter_text == "state:dead"
        assert len(shown_ids(c.app)) == 1
        notes = [n.message for n in c.app._notifications]
        assert any("unknown state" in n and "queued" in n for n in notes), notes


async def test_sort_key_cycles_and_header_click_reverses(console: Any) -> None:
    async with console(control=False, start="tasks", now=lambda: NOW) as c:
        history: History = await c.backend.call(write_history)
        await c.refreshed("tasks")
        assert shown_ids(c.app) == sorted(shown_ids(c.app), reverse=True)
        tasks_view(c.app).table.move_cursor(shown_ids(c.app).index(history.dead))
        await c.pilot.press("s")  # id -> kind
        await c.refreshed("tasks")
        kinds = c.backend.call_sync(lambda plane: [plane.task(i).kind for i in shown_ids(c.app)])
        assert kinds == sorted(kinds)
        assert tasks_view(c.app).selected_id() == history.dead  # the cursor followed the task
        await c.pilot.click("#tasks-header", offset=(70, 0))  # the "prio" header
        await c.refreshed("tasks")
        assert tasks_view(c.app).sort == "priority"
        priorities = [p for p in _priorities(c)]
        assert priorities == sorted(priorities, reverse=True) and priorities[0] == 5
        await c.pilot.click("#tasks-header", offset=(70, 0))
        await c.refreshed("tasks")
        priorities = [p for p in _priorities(c)]
        assert priorities == sorted(priorities) and priorities[-1] == 5
        assert tasks_view(c.app).selected_id() == history.dead


def _priorities(c: Console) -> list[int]:
    ids = shown_ids(c.app)
    return c.backend.call_sync(lambda plane: [plane.task(i).priority for i in ids])


async def wait_until(c: Console, check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await c.pilot.pause(0.05)


def detail_text(app: ConsoleApp, part: str) -> str:
    screen = app.screen
    assert isinstance(screen, TaskScreen)
    return str(screen.query_one(f"#task-{part}", Static).render())


async def test_enter_opens_an_echo_task(console: Any) -> None:
    """A real echo task, run by the local agent: Enter shows its state, events and result."""
    async with console(start="tasks") as c:
        task_id = await c.backend.call(
            lambda plane: plane.submit(TaskSpec(kind="echo", payload={"word": "ahoy"}))
        )
        await wait_until(
            c, lambda: states_of(c, [task_id])[task_id] == "succeeded", 30, "the echo to run"
        )
        await c.refreshed("tasks")
        assert shown_ids(c.app)[0] == task_id
        tasks_view(c.app).table.focus()
        await c.pilot.press("enter")
        await wait_until(c, lambda: isinstance(c.app.screen, TaskScreen), 15, "the task screen")
        await wait_until(c, lambda: "succeeded" in detail_text(c.app, "head"), 15, "its state")
        assert f"#{task_id}" in str(c.app.query_one("#header", Static).render())
        assert "queued → running" in detail_text(c.app, "events")
        assert "running → succeeded" in detail_text(c.app, "events")
        assert '"word": "ahoy"' in detail_text(c.app, "output")
        await c.pilot.press("escape")
        assert not isinstance(c.app.screen, TaskScreen)
        assert f"#{task_id}" not in str(c.app.query_one("#header", Static).render())


@pytest.mark.slow
async def test_the_output_of_a_generate_task_is_followed(
    console: Any, demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open the task while it is queued: its output appears as the agent streams it."""
    for name, value in INFER_ENV.items():
        monkeypatch.setenv(name, value)
    async with console(start="tasks") as c:
        spec = TaskSpec(
            kind="generate",
            model=str(demo_model),
            payload={"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0.0},
        )
        task_id = await c.backend.call(lambda plane: plane.submit(spec))
        tasks_view(c.app).open_task(task_id)
        await wait_until(c, lambda: isinstance(c.app.screen, TaskScreen), 15, "the task screen")
        await c.pilot.pause()
        seen: list[str] = []

        def finished() -> bool:
            seen.append(detail_text(c.app, "output"))
            return "succeeded" in detail_text(c.app, "head")

        await wait_until(c, finished, 180, "the generate task to finish on screen")
        task = await c.backend.call(lambda plane: plane.task(task_id))
        assert task.state in TERMINAL and task.state == TaskState.SUCCEEDED
        await c.pilot.pause(0.5)
        output = await c.backend.call(lambda plane: plane.output(task_id))
        assert output.strip() and detail_text(c.app, "output") == output
        assert output == task.result["text"]
        assert "tok/s" in detail_text(c.app, "head")
        # Seen while it ran: a part of the output (CPU generation takes about a second here,
        # the screen looks every 0.25 s).
        assert any(text and text != output and output.startswith(text) for text in seen), seen


async def test_read_only_hides_the_actions(console: Any) -> None:
    async with console(readonly=True, start="tasks", now=lambda: NOW) as c:
        await c.backend.call(write_history)
        await c.refreshed("tasks")
        before = await c.backend.call(
            lambda plane: plane.store.conn.execute(
                "SELECT id, state, priority FROM tasks ORDER BY id"
            ).fetchall()
        )
        for key in ("c", "r", "p", "n", "b"):
            await c.pilot.press(key)
            await c.pilot.pause()
            assert len(c.app.screen_stack) == 1, key
            assert not isinstance(c.app.screen, ConfirmScreen)
        tasks_view(c.app).open_task(shown_ids(c.app)[0])
        await wait_until(c, lambda: isinstance(c.app.screen, TaskScreen), 15, "the task screen")
        for key in ("c", "r", "p"):
            await c.pilot.press(key)
            await c.pilot.pause()
            assert isinstance(c.app.screen, TaskScreen), key
        await c.pilot.press("escape")
        footer = " ".join(
            a.binding.description for a in c.app.active_bindings.values() if a.enabled
        )
        assert "cancel" not in footer and "submit" not in footer and "sort" in footer
        after = await c.backend.call(
            lambda plane: plane.store.conn.execute(
                "SELECT id, state, priority FROM tasks ORDER BY id"
            ).fetchall()
        )
        assert after == before
        assert not c.posted(ConsoleApp.Acted)


async def test_the_cursor_stays_on_its_task_as_rows_come_and_go(console: Any) -> None:
    async with console(control=False, start="tasks", now=lambda: NOW) as c:
        history: History = await c.backend.call(write_history)
        await c.refreshed("tasks")
        view = tasks_view(c.app)
        view.table.move_cursor(shown_ids(c.app).index(history.dead))
        new = await c.backend.call(
            lambda plane: plane.submit_many([TaskSpec(kind="echo") for _ in range(3)])
        )
        await c.refreshed("tasks")
        assert shown_ids(c.app)[:3] == new[::-1] and view.selected_id() == history.dead
        await c.backend.call(lambda plane: plane.cancel(new))
        await filtered(c, "-state:canceled")
        assert new[0] not in shown_ids(c.app) and view.selected_id() == history.dead
        await c.pilot.press("down")
        assert view.selected_id() == shown_ids(c.app)[shown_ids(c.app).index(history.dead) + 1]
