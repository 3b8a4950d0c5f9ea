"""Snapshots of the Hosts view (GPUs with bars and sparklines, an unreachable host, a refused
host key), the GPUs view and a host drilled into, at 120x36, from the fleet in
`tests/tui/fleet_fixtures.py` behind a backend that runs no control loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from bitinglip.config import Profile
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.backend import Backend
from bitinglip.tui.views.host_screen import HostScreen
from bitinglip.tui.widgets import RowList
from tests.tui.fleet_fixtures import FLEET, NOW, write_fleet, write_model, write_tasks

SIZE = (120, 36)


@pytest.fixture
def fleet_backend(make_profile: Callable[..., Profile]) -> Iterator[Backend]:
    backend = Backend(make_profile(body=FLEET, name="lab"), control=False)
    backend.start()
    backend.call_sync(write_fleet)
    backend.call_sync(write_tasks, "gpu-a")
    backend.call_sync(write_model, "gpu-a")
    try:
        yield backend
    finally:
        backend.close()


def until_rows(view: str, rows: int) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        listing = app.views[view].query_one(RowList)
        for _ in range(500):
            if len(listing.keys) == rows:
                break
            await pilot.pause(0.02)
        assert len(listing.keys) == rows
        await pilot.pause()

    return run_before


def test_fleet_view(fleet_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(fleet_backend, start="hosts", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("hosts", 4))


def test_gpus_view(fleet_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(fleet_backend, start="gpus", now=lambda: NOW, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=until_rows("gpus", 6))


def test_host_drilled_into(fleet_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(fleet_backend, start="hosts", now=lambda: NOW, tick_s=3600)

    async def open_host(pilot: Pilot[Any]) -> None:
        await until_rows("hosts", 4)(pilot)
        await pilot.press("enter")
        for _ in range(500):
            await pilot.pause(0.02)
            if isinstance(app.screen, HostScreen) and app.screen.shown:
                break
        assert isinstance(app.screen, HostScreen) and app.screen.crumb == "gpu-a"
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=open_host)
