"""The GPUs view: one line per GPU across the fleet, `/` filters by host or text, Escape clears
the filter, Enter opens the GPU's host; from generated telemetry rows (no control loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitinglip.config import Profile
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.views.host_screen import HostScreen
from bitinglip.tui.widgets import RowList
from tests.tui.conftest import Console
from tests.tui.fleet_fixtures import FLEET, GPUS, NOW, write_fleet

TYPED = {":": "colon", "-": "minus", " ": "space", "/": "slash"}


def gpus_list(app: ConsoleApp) -> RowList:
    return app.views["gpus"].query_one("#gpus-list", RowList)


async def until_gpus(c: Console, count: int) -> list[str]:
    for _ in range(100):
        await c.refreshed("gpus")
        keys = gpus_list(c.app).keys
        if len(keys) == count:
            return keys
    raise AssertionError(f"the GPUs view shows {gpus_list(c.app).keys}, not {count} GPUs")


async def filter_by(c: Console, text: str) -> None:
    await c.pilot.press(c.app.keys["filter"])
    await c.pilot.press(*(TYPED.get(ch, ch) for ch in text), "enter")


async def test_one_line_per_gpu_and_the_filter(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile(body=FLEET, name="lab")
    async with console(profile, control=False, now=lambda: NOW, start="hosts") as c:
        c.backend.call_sync(write_fleet)
        await c.pilot.press(c.app.keys["gpus"])
        assert c.app.current.VIEW == "gpus"
        everything = await until_gpus(c, 2 * GPUS)
        assert everything == [f"{h}/{i}" for h in ("gpu-a", "gpu-b") for i in range(GPUS)]
        line = gpus_list(c.app).text_lines()[0]
        assert line.startswith("gpu-a") and "NVIDIA H100 80GB" in line and "/700W" in line

        await filter_by(c, "host:gpu-b")
        assert await until_gpus(c, GPUS) == [f"gpu-b/{i}" for i in range(GPUS)]
        assert "/host:gpu-b" in str(c.app.query_one("#header").render())
        summary = str(c.app.views["gpus"].query_one("#gpus-summary").render())
        assert f"{2 * GPUS} GPU(s) on 2 host(s)" in summary and f"{GPUS} shown" in summary

        await filter_by(c, "-gpu-b")
        assert await until_gpus(c, GPUS) == [f"gpu-a/{i}" for i in range(GPUS)]
        await filter_by(c, "H100 host:gpu-a gpu:0")
        assert await until_gpus(c, 1) == ["gpu-a/0"]
        await filter_by(c, "A100")
        assert await until_gpus(c, 0) == []

        await c.pilot.press(c.app.keys["back"])  # Escape clears the filter
        assert await until_gpus(c, 2 * GPUS) == everything


async def test_enter_on_a_gpu_opens_its_host(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile(body=FLEET, name="lab")
    async with console(profile, control=False, now=lambda: NOW, start="gpus") as c:
        c.backend.call_sync(write_fleet)
        await until_gpus(c, 2 * GPUS)
        listing = gpus_list(c.app)
        listing.focus()
        await c.pilot.press(*["down"] * GPUS, "enter")
        assert listing.cursor_key == "gpu-b/0"
        screen = c.app.screen
        assert isinstance(screen, HostScreen) and screen.crumb == "gpu-b"
        for _ in range(200):
            if screen.detail is not None:
                break
            await c.pilot.pause(0.02)
        assert screen.detail is not None and len(screen.detail.gpus) == GPUS
        await c.pilot.press(c.app.keys["back"])
        assert c.app.screen is c.app.screen_stack[0] and c.app.current.VIEW == "gpus"
