"""The Pulls view against a real control plane with the local agent and the fake hub: a running
pull's progress, cancel (asked first), a failed pull's error and its task detail, filters."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Static

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskState
from bitinglip.tui.forms import ConfirmScreen
from bitinglip.tui.views.pulls import PullRow, PullsView
from bitinglip.tui.views.task_detail import TaskScreen
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub
from tests.tui.test_models import acted, until

pytestmark = pytest.mark.slow

REPO = "org/tiny-GGUF"
# 4 MiB after the header: after a stall the rest still takes several chunks (a cancel is seen).
BIG = tiny_gguf(seed=4, n_layers=2) + bytes(range(256)) * (16 << 10)


def pulls_view(c: Any) -> PullsView:
    view = c.app.views["pulls"]
    assert isinstance(view, PullsView)
    return view


def row_of(c: Any, task_id: int) -> PullRow | None:
    return next((r for r in pulls_view(c).shown if r.task_id == task_id), None)


def cells(c: Any, task_id: int) -> list[str]:
    table = pulls_view(c).query_one("#pulls-table", DataTable)
    return [str(cell) for cell in table.get_row(str(task_id))]


def pull(plane: ControlPlane, ref: str) -> int:
    _, [ticket] = plane.models.pull(ref, hosts=["local"])
    assert ticket.task_id is not None
    return ticket.task_id


async def test_a_running_pull_shows_progress_and_cancel_asks_first(
    console: Any,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": BIG})
    hub.fault(REPO, "tiny-Q8_0.gguf", "stall", after_bytes=100 << 10, seconds=4)
    async with console(start="pulls") as c:
        task_id = await c.backend.call(pull, f"{REPO}:Q8_0")
        row = await until(
            c,
            lambda: (r := row_of(c, task_id)) and r.done and r.state == "running" and r,
            "progress",
        )
        assert row.total == len(BIG) and 0 < (row.done or 0) < len(BIG)
        shown = cells(c, task_id)
        assert shown[1:5] == ["pull", "tiny-Q8_0.gguf", "local", "running"]
        assert shown[5].endswith("%") and "/" in shown[6] and shown[7].endswith("/s")

        pulls_view(c).query_one("#pulls-table", DataTable).move_cursor(row=0)
        await c.pilot.press("c")
        await until(c, lambda: isinstance(c.app.screen, ConfirmScreen), "the question")
        await c.pilot.press("n")
        await c.pilot.pause(0.2)
        assert acted(c, "cancel")() is None
        assert (await c.backend.call(ControlPlane.task, task_id)).cancel_requested is False

        await c.pilot.press("c")
        await until(c, lambda: isinstance(c.app.screen, ConfirmScreen), "the question")
        await c.pilot.press("y")
        done = await until(c, acted(c, "cancel"), "the cancel")
        assert done.ok and f"task {task_id}" in done.detail, done.detail
        await until(
            c, lambda: (r := row_of(c, task_id)) and r.state == "canceled", "canceled", timeout=30
        )
        assert (await c.backend.call(ControlPlane.task, task_id)).state == TaskState.CANCELED
        await c.pilot.press("c")
        again = await until(c, lambda: (a := acted(c, "cancel")()) is not done and a, "refusal")
        assert not again.ok and "already canceled" in again.detail


async def test_a_failed_pull_shows_its_error_and_opens_its_task(
    console: Any,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": BIG, "tiny-Q4_K_M.gguf": tiny_gguf(seed=5)})
    hub.fault(REPO, "tiny-Q8_0.gguf", "404")
    async with console(start="pulls") as c:
        failed_id = await c.backend.call(pull, f"{REPO}:Q8_0")
        ok_id = await c.backend.call(pull, f"{REPO}:Q4_K_M")
        failed = await until(
            c, lambda: (r := row_of(c, failed_id)) and r.state == "failed" and r, "the failure"
        )
        assert failed.error and cells(c, failed_id)[-1]
        await until(c, lambda: (r := row_of(c, ok_id)) and r.state == "succeeded", "the other")
        assert cells(c, ok_id)[5].endswith("100%")
        assert [r.task_id for r in pulls_view(c).shown] == [ok_id, failed_id]  # newest first

        table = pulls_view(c).query_one("#pulls-table", DataTable)
        table.move_cursor(row=1)
        await c.pilot.pause(0.1)
        detail = str(pulls_view(c).query_one("#pulls-detail", Static).render())
        assert f"task {failed_id}" in detail and failed.error.splitlines()[0] in detail
        await c.pilot.press("enter")
        screen = await until(
            c, lambda: isinstance(c.app.screen, TaskScreen) and c.app.screen, "detail"
        )
        assert screen.task_id == failed_id
        await c.pilot.press("escape")

        pulls_view(c).set_filter("state:failed")
        await c.refreshed("pulls")
        assert [r.task_id for r in pulls_view(c).shown] == [failed_id]
        pulls_view(c).set_filter("-host:local")
        await c.refreshed("pulls")
        assert pulls_view(c).shown == []
