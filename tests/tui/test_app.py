"""The console's frame: views by key and by `:` command, breadcrumbs, help, quitting, keys,
the controller role (observer, take-over, read-only), and the crash log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from textual.widgets import Input, Static

from bitinglip.config import Profile
from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.runtime import controller
from bitinglip.control.store.db import open_store
from bitinglip.tui.app import ConsoleApp, HelpScreen
from bitinglip.tui.forms import ConfirmScreen
from tests.conftest import NOWHERE

VIEWS = ("hosts", "gpus", "tasks", "jobs", "models", "pulls", "logs")


def header(app: ConsoleApp) -> str:
    return str(app.query_one("#header", Static).render())


async def settle(c: Any, until: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if until():
            return
        await c.pilot.pause(0.05)
    raise AssertionError("condition not met in time")


@contextmanager
def another_controller(profile: Profile) -> Iterator[threading.Event]:
    """Hold the controller lease from "elsewhere" until the yielded event is set."""
    store = open_store(profile.db_path)
    stop = threading.Event()
    assert controller.try_acquire(store, "elsewhere", profile.controller_lease_s, None)

    def renew() -> None:
        inner = open_store(profile.db_path)
        while not stop.wait(profile.controller_lease_s / 4):
            controller.try_acquire(inner, "elsewhere", profile.controller_lease_s, None)
        inner.close()

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join()
        store.close()


async def test_every_view_opens_by_key_and_by_command(console: Any) -> None:
    async with console() as c:
        for key, name in zip("1234567", VIEWS, strict=True):
            await c.pilot.press(key)
            assert name == c.app.current.VIEW
            assert f"{c.app.current.title}" in header(c.app)
        for name in ("hosts", "tasks", "logs", "gpu", "fleet"):
            await c.pilot.press("colon", *name, "enter")
            assert c.app.current.VIEW in VIEWS and name[:3] in c.app.current.VIEW + "fleet"
        assert not c.app.query_one("#command", Input).display


async def test_a_command_with_a_filter_sets_the_breadcrumb(console: Any) -> None:
    async with console() as c:
        await c.pilot.press("colon", *"logs level:warning", "enter")
        assert c.app.current.VIEW == "logs" and c.app.current.filter_text == "level:warning"
        assert "Logs ▸ /level:warning" in header(c.app)
        await c.pilot.press("escape")  # clears the filter
        assert c.app.current.filter_text == "" and "/level" not in header(c.app)


async def test_an_unknown_command_says_so_in_one_line(console: Any) -> None:
    async with console() as c:
        await c.pilot.press("colon", *"nonsense", "enter")
        await c.pilot.pause()
        notes = [n.message for n in c.app._notifications]
        assert any("unknown command 'nonsense'" in n and ":hosts" in n for n in notes)


async def test_help_lists_the_keys_and_closes(console: Any) -> None:
    async with console(start="logs") as c:
        await c.pilot.press("question_mark")
        assert isinstance(c.app.screen, HelpScreen)
        assert "quit" in c.app.screen.text and "(:tasks)" in c.app.screen.text
        await c.pilot.press("escape")
        assert not isinstance(c.app.screen, HelpScreen)


async def test_keys_are_remapped_by_the_profile(console: Any, make_profile: Any) -> None:
    profile = make_profile('[keys]\nquit = "x"\nhosts = "f2"\ntasks = "9"\n')
    async with console(profile) as c:
        await c.pilot.press("9")
        assert c.app.current.VIEW == "tasks"
        await c.pilot.press("f2")
        assert c.app.current.VIEW == "hosts"
        await c.pilot.press("q")  # no longer quits
        assert c.app.is_running
        await c.pilot.press("x")
        await settle(c, lambda: not c.app.is_running)


async def test_quit_asks_only_while_controller_with_work_in_flight(console: Any) -> None:
    async with console() as c:
        await settle(c, lambda: c.backend.role == "controller")
        await c.backend.call(lambda plane: plane.submit(TaskSpec(kind="echo", labels=NOWHERE)))
        await c.pilot.press("q")
        await settle(c, lambda: isinstance(c.app.screen, ConfirmScreen))
        assert "1 task(s) are in flight" in c.app.screen.question
        await c.pilot.press("n")
        assert c.app.is_running and not isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("q")
        await settle(c, lambda: isinstance(c.app.screen, ConfirmScreen))
        await c.pilot.press("y")
        await settle(c, lambda: not c.app.is_running)
    assert c.app.return_code == 0


async def test_an_idle_console_quits_at_once(console: Any) -> None:
    async with console() as c:
        await settle(c, lambda: c.backend.role == "controller")
        await c.pilot.press("q")
        await settle(c, lambda: not c.app.is_running)


async def test_observer_while_another_holds_the_lease_then_takes_over(
    console: Any, profile: Profile
) -> None:
    with another_controller(profile) as stop:
        async with console() as c:
            await c.pilot.pause(0.3)
            assert c.backend.role == "observer"
            c.app.paint_header()
            assert "[observer · controller: " in header(c.app)
            # An observer still submits; the work waits for the controller.
            task_id = await c.backend.call(
                lambda plane: plane.submit(TaskSpec(kind="echo", payload={"n": 1}))
            )
            assert task_id > 0
            await c.pilot.press("q")  # an observer never asks
            await settle(c, lambda: not c.app.is_running)
        async with console() as c:
            assert c.backend.role == "observer"
            stop.set()  # the other holder stops renewing: its lease expires
            started = time.monotonic()
            await settle(
                c,
                lambda: c.backend.role == "controller",
                timeout=3 * profile.controller_lease_s + 2,
            )
            assert time.monotonic() - started < 3 * profile.controller_lease_s + 2
            task = await c.backend.call(lambda plane: plane.wait(task_id, 10))
            assert task.state == "succeeded"  # the new controller ran what was queued


async def test_read_only_takes_no_lease_and_hides_actions(console: Any, profile: Profile) -> None:
    async with console(readonly=True) as c:
        await c.pilot.pause(0.3)
        assert c.backend.role == "read-only" and c.backend.loop is None
        assert await c.backend.call(lambda plane: plane.controller()) is None
        c.app.paint_header()
        assert "[read-only · no controller running]" in header(c.app)


async def test_a_crash_restores_the_terminal_and_writes_a_crash_log(
    console: Any, profile: Profile
) -> None:
    with pytest.raises(RuntimeError, match="boom"):  # run_test re-raises it for the test
        async with console() as c:
            c.app.call_later(_boom)
            await settle(c, lambda: not c.app.is_running)
    assert c.app.return_code == 1
    assert c.app.crash_log is not None and c.app.crash_log.parent == profile.data_dir
    assert "RuntimeError: boom" in c.app.crash_log.read_text()


def _boom() -> None:
    raise RuntimeError("boom")


async def test_logs_follow_the_control_plane_and_filter(console: Any) -> None:
    import logging

    async with console(start="logs") as c:
        logging.getLogger("bitinglip.control.transport.local").warning(
            "agent local: disk is nearly full"
        )
        logging.getLogger("bitinglip.control.transport.remote").info(
            "ssh gpu-a: reconnecting in 1.00s"
        )
        await c.refreshed("logs")
        text = c.app.query_one("#logs-text").lines
        assert any("disk is nearly full" in line for line in text)
        c.app.current.set_filter("host:gpu-a")
        await c.refreshed("logs")
        text = c.app.query_one("#logs-text").lines
        assert any("reconnecting" in line for line in text)
        assert not any("disk is nearly full" in line for line in text)
        c.app.current.set_filter("level:warning -nearly")
        await c.refreshed("logs")
        assert not any("nearly" in line for line in c.app.query_one("#logs-text").lines)
    log_file = c.backend.log.path
    assert log_file is not None and "disk is nearly full" in log_file.read_text()
