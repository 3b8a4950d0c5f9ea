"""Console fixtures: a real control plane (real SQLite file, the local agent) behind the app.

`async with console(profile, readonly=, control=, start=) as c:` runs the app headless
(`app.run_test()`) with its backend started, and closes the backend after; the messages the
app posted are in `c.messages`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from textual.message import Message
from textual.pilot import Pilot

from bitinglip.config import Profile
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend

SIZE = (120, 36)


class Console:
    """One console under test: the app, its pilot, the messages it posted, the backend."""

    def __init__(self, app: ConsoleApp, pilot: Pilot[int], messages: list[Message]) -> None:
        self.app, self.pilot, self.messages = app, pilot, messages
        self.backend = app.backend

    def posted(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    async def refreshed(self, view: str, timeout: float = 10.0) -> None:
        """Wait until `view` has refreshed once more (its data is on screen)."""
        from bitinglip.tui.views.base import View

        asked = time.perf_counter()  # a refresh already under way may have read before this
        self.app.views[view].reload()
        for _ in range(int(timeout / 0.02)):
            await self.pilot.pause(0.02)
            if any(m.view == view and m.started >= asked for m in self.posted(View.Refreshed)):
                return
        raise AssertionError(f"view {view} did not refresh within {timeout}s")


@pytest.fixture
def console(profile: Profile) -> Callable[..., Any]:
    """`async with console(profile=..., readonly=..., start=...) as c:` runs the app headless."""

    @asynccontextmanager
    async def run(
        profile: Profile = profile,
        *,
        readonly: bool = False,
        control: bool = True,
        start: str = "hosts",
        now: Callable[[], float] = time.time,
        size: tuple[int, int] = SIZE,
    ) -> AsyncIterator[Console]:
        backend = Backend(profile, readonly=readonly, control=control)
        backend.start()
        app = ConsoleApp(backend, start=start, now=now)
        messages: list[Message] = []
        try:
            async with app.run_test(size=size, message_hook=messages.append) as pilot:
                yield Console(app, pilot, messages)
        finally:
            await asyncio.to_thread(backend.close)

    return run
