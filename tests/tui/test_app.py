"""The console's frame: views by key and by `:` command, breadcrumbs, help, quitting, keys."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from bitinglip.tui.app import ConsoleApp, ConfirmScreen, HelpScreen


def header(app: ConsoleApp) -> str:
    return str(app.query_one("#header", Static).render())


async def test_every_view_opens_by_key_and_by_command(console: Any) -> None:
    async with console() as c:
        for key, name in zip(
            "1234567", ("hosts", "gpus", "tasks", "jobs", "models", "pulls", "logs"), strict=True
        ):
            await c.pilot.press(key)
            assert c.app.current.VIEW == name
            assert c.app.current.title in header(c.app)
        for name in ("hosts", "tasks", "logs"):
            await c.pilot.press("colon", *name, "enter")
            assert c.app.current.VIEW == name
