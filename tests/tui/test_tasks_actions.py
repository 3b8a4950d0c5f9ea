"""The Tasks view's actions against a real control plane (its control loop and the local agent
running): cancel and retry ask first, priority, the submit form, and batch submit from a file.

Tasks that must stay queued ask for labels no host has (`NOWHERE`), so nothing runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.widgets import Input, Select

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.forms import ConfirmScreen, SubmitForm, ValueForm
from bitinglip.tui.views.task_detail import TaskScreen
from tests.conftest import NOWHERE
from tests.tui.conftest import Console
from tests.tui.tasks_fixtures import write_batch
from tests.tui.test_tasks import shown_ids, tasks_view, wait_until

ONLY_HERE = {"gpu": "this test's runner"}


def parked(plane: ControlPlane, n: int = 3) -> list[int]:
    """Echo tasks nothing can run."""
    return plane.submit_many(
        [TaskSpec(kind="echo", payload={"n": i}, labels=NOWHERE) for i in range(n)]
    )


def dead(plane: ControlPlane) -> int:
    """A task whose every attempt lost its runner (claimed here, by the labels only it asks
    for)."""
    queue = TaskQueue(plane.store, plane.profile.queue)
    task_id = queue.submit(TaskSpec(kind="echo", payload={}, labels=ONLY_HERE))
    for _ in range(queue.config.max_attempts):
        (claim,) = queue.claim("test runner", labels=ONLY_HERE)
        assert claim.task_id == task_id
        queue.fail(task_id, claim.token, "runner lost", retryable=True, kind="agent_lost")
    return task_id


async def select(c: Console, task_id: int) -> None:
    await c.refreshed("tasks")
    table = tasks_view(c.app).table
    table.move_cursor(shown_ids(c.app).index(task_id))
    table.focus()
    await c.pilot.pause()


def task_row(c: Console, task_id: int) -> tuple[str, int, int]:
    """The task's state, priority and attempt, as stored."""
    state, priority, attempt = c.backend.call_sync(
        lambda plane: plane.store.conn.execute(
            "SELECT state, priority, attempt FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
    )
    return str(state), int(priority), int(attempt)


def acted(c: Console, action: str) -> list[ConsoleApp.Acted]:
    return [m for m in c.posted(ConsoleApp.Acted) if m.action == action]


async def test_cancel_asks_then_cancels(console: Any) -> None:
    async with console(start="tasks") as c:
        ids = await c.backend.call(parked)
        await select(c, ids[1])
        await c.pilot.press("c")
        assert isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("n")
        await c.pilot.pause(0.2)
        assert task_row(c, ids[1])[0] == "queued" and not acted(c, "cancel")
        await c.pilot.press("c")
        assert isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("y")
        await wait_until(c, lambda: acted(c, "cancel"), 15, "the cancel to be reported")
        assert task_row(c, ids[1])[0] == "canceled"
        assert [task_row(c, i)[0] for i in (ids[0], ids[2])] == ["queued", "queued"]
        (report,) = acted(c, "cancel")
        assert report.ok and report.detail == f"task {ids[1]}: canceled"


async def test_retry_of_a_dead_task_asks_then_queues_it(console: Any) -> None:
    async with console(start="tasks") as c:
        task_id = await c.backend.call(dead)
        assert task_row(c, task_id)[::2] == ("dead", 3)
        await select(c, task_id)
        await c.pilot.press("r")
        assert isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("y")
        await wait_until(c, lambda: acted(c, "retry"), 15, "the retry to be reported")
        assert task_row(c, task_id)[::2] == ("queued", 1)
        assert acted(c, "retry")[0].ok
        # A queued task cannot be retried: said, not done.
        await c.pilot.press("r", "y")
        await wait_until(c, lambda: len(acted(c, "retry")) == 2, 15, "the second retry")
        second = acted(c, "retry")[1]
        assert not second.ok and "cannot retry a queued task" in second.detail


async def test_priority_change_and_its_refusal(console: Any) -> None:
    async with console(start="tasks") as c:
        ids = await c.backend.call(parked)
        await select(c, ids[0])
        await c.pilot.press("p")
        form = c.app.screen
        assert isinstance(form, ValueForm)
        form.query_one(Input).value = "7"
        await c.pilot.press("enter")
        await wait_until(c, lambda: acted(c, "priority"), 15, "the priority change")
        assert task_row(c, ids[0])[1] == 7 and acted(c, "priority")[0].ok
        await c.refreshed("tasks")
        assert shown_ids(c.app)[0] == ids[2]  # newest first still; the row shows the new value
        dead_id = await c.backend.call(dead)
        await select(c, dead_id)
        await c.pilot.press("p")
        c.app.screen.query_one(Input).value = "9"
        await c.pilot.press("enter")
        await wait_until(c, lambda: len(acted(c, "priority")) == 2, 15, "the refusal")
        refusal = acted(c, "priority")[1]
        assert not refusal.ok and "not queued" in refusal.detail
        assert task_row(c, dead_id)[1] == 0


async def test_submit_form_queues_the_task_and_opens_it(console: Any) -> None:
    async with console(start="tasks") as c:
        await c.pilot.press("n")
        await wait_until(c, lambda: isinstance(c.app.screen, SubmitForm), 15, "the form")
        form = c.app.screen
        assert form.query_one("#model", Select).value == "gemma-3-270m"  # the only alias
        form.query_one("#kind", Select).value = "chat"
        form.query_one("#prompt", Input).value = "Say hello"
        form.query_one("#priority", Input).value = "3"
        form.query_one("#labels", Input).value = "gpu=none"
        form.query_one("#max_tokens", Input).value = "8"
        form.query_one("#temperature", Input).value = "0"
        await c.pilot.click("#submit")
        await wait_until(c, lambda: acted(c, "submit"), 15, "the submit")
        report = acted(c, "submit")[0]
        assert report.ok, report.detail
        task = await c.backend.call(lambda plane: plane.tasks(limit=1)[0])
        assert (task.kind, task.model, task.priority, task.labels) == (
            "chat",
            "gemma-3-270m",
            3,
            NOWHERE,
        )
        assert task.payload == {
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
            "temperature": 0.0,
        }
        await wait_until(c, lambda: isinstance(c.app.screen, TaskScreen), 15, "the new task")
        assert c.app.screen.crumb == f"#{task.id}"


async def test_submit_form_says_what_is_wrong(console: Any) -> None:
    async with console(start="tasks") as c:
        await c.pilot.press("n")
        await wait_until(c, lambda: isinstance(c.app.screen, SubmitForm), 15, "the form")
        form = c.app.screen
        form.query_one("#prompt", Input).value = "hi"
        form.query_one("#labels", Input).value = "gpu"
        await c.pilot.click("#submit")
        error = str(form.query_one("#form-error").render())
        assert "key=value" in error and isinstance(c.app.screen, SubmitForm)
        await c.pilot.press("escape")
        assert not isinstance(c.app.screen, SubmitForm)
        assert await c.backend.call(lambda plane: plane.tasks()) == []


async def batch(c: Console, path: Path) -> None:
    await c.pilot.press("b")
    assert isinstance(c.app.screen, ValueForm)
    c.app.screen.query_one(Input).value = str(path)
    await c.pilot.press("enter")
    await wait_until(c, lambda: acted(c, "batch"), 15, "the batch to be reported")


async def test_batch_submit_queues_a_job_and_shows_its_tasks(console: Any, tmp_path: Path) -> None:
    lines = [json.dumps({"kind": "echo", "payload": {"n": n}, "labels": NOWHERE}) for n in range(3)]
    path = write_batch(tmp_path, lines)
    async with console(start="tasks") as c:
        await batch(c, path)
        report = acted(c, "batch")[0]
        job = await c.backend.call(lambda plane: plane.jobs()[0])
        assert report.ok and report.detail == f"job {job.id}: 3 bitinglip tasks queued from {path}"
        assert job.total == 3 and job.counts["queued"] == 3
        await c.pilot.pause(0.2)
        assert tasks_view(c.app).filter_text == f"job:{job.id}"
        await c.refreshed("tasks")
        assert len(shown_ids(c.app)) == 3


async def test_batch_submit_of_a_bad_file_queues_nothing(console: Any, tmp_path: Path) -> None:
    good = json.dumps({"kind": "echo", "payload": {}})
    path = write_batch(tmp_path, [good, '{"kind": "echo", "payload": ', good])
    async with console(start="tasks") as c:
        await batch(c, path)
        (report,) = acted(c, "batch")
        assert not report.ok
        assert report.detail.startswith(f"{path}:2: not valid JSON")
        assert "\n" not in report.detail
        counts = await c.backend.call(
            lambda plane: plane.store.conn.execute(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM jobs)"
            ).fetchone()
        )
        assert counts == (0, 0)


async def test_the_task_screen_cancels_and_retries_too(console: Any) -> None:
    async with console(start="tasks") as c:
        (task_id,) = await c.backend.call(parked, 1)
        tasks_view(c.app).open_task(task_id)
        await wait_until(c, lambda: isinstance(c.app.screen, TaskScreen), 15, "the task screen")
        await c.pilot.press("c")
        assert isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("y")
        await wait_until(c, lambda: acted(c, "cancel"), 15, "the cancel")
        assert task_row(c, task_id)[0] == "canceled"
        assert isinstance(c.app.screen, TaskScreen)  # back on the task after the question
        await c.pilot.press("r", "y")
        await wait_until(c, lambda: acted(c, "retry"), 15, "the retry")
        assert task_row(c, task_id)[0] == "queued"
        screen = c.app.screen
        assert isinstance(screen, TaskScreen)
        await wait_until(
            c,
            lambda: "retried by the operator" in str(screen.query_one("#task-events").render()),
            15,
            "the retry among its events",
        )
