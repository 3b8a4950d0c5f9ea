"""Snapshots of the frame: observer mode (another process on another machine runs the control
loop; the header says who) with the help overlay open, at 120x36, behind a backend that runs no
control loop (`Backend(control=False)`) and a fixed controller row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from bitinglip.config import Profile
from bitinglip.control.plane import ControlPlane
from bitinglip.tui.app import ConsoleApp, HelpScreen
from bitinglip.tui.backend import Backend

SIZE = (120, 36)
FOREVER = 4_102_444_800.0  # 2100-01-01: the lease never expires during the test


def hold_lease_elsewhere(plane: ControlPlane) -> None:
    with plane.store.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO controller (id, owner, pid, hostname, started_at,"
            " renewed_at, expires_at, doorbell) VALUES (1, 'lab-1:4242:abcd', 4242, 'lab-1',"
            " 0, ?, ?, NULL)",
            (FOREVER, FOREVER),
        )


@pytest.fixture
def observer_backend(profile: Profile) -> Iterator[Backend]:
    backend = Backend(profile, control=False)
    backend.start()
    backend.call_sync(hold_lease_elsewhere)
    try:
        yield backend
    finally:
        backend.close()


async def header_names_the_holder(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    for _ in range(250):
        if app.holder is not None:
            break
        await pilot.pause(0.02)
    assert app.holder == "lab-1 pid 4242"
    await pilot.press("question_mark")
    assert isinstance(app.screen, HelpScreen)
    await pilot.pause()


def test_observer_mode_with_help(observer_backend: Backend, snap_compare: Any) -> None:
    app = ConsoleApp(observer_backend, start="tasks", now=lambda: 0.0, tick_s=3600)
    assert snap_compare(app, terminal_size=SIZE, run_before=header_names_the_holder)
