"""The Hosts view against a real control plane: the local host (the real local agent) healthy
with its GPU-less telemetry, an SSH host on a closed port with its one-line reason, Enter into a
host and Escape back; and, from generated telemetry rows, GPU bars and sparklines and a refresh
that repaints only the host that changed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from bitinglip.bench.fleet_telemetry import FleetWriter, gpu_snapshot
from bitinglip.config import Profile
from bitinglip.control.fleet.hosts import load_hosts
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.views.host_paint import INDENT, Columns
from bitinglip.tui.views.host_rows import HostRow
from bitinglip.tui.views.host_screen import HostScreen
from bitinglip.tui.widgets import RowList, sparkline
from tests.conftest import FAST_QUEUE
from tests.tui.conftest import Console
from tests.tui.fleet_fixtures import FLEET, GPUS, HISTORY_S, NOW, write_fleet

WAIT_S = 30.0


def hosts_list(app: ConsoleApp) -> RowList:
    return app.views["hosts"].query_one("#hosts-list", RowList)


async def until_row(c: Console, name: str, ready: Callable[[HostRow], bool]) -> HostRow:
    """Refresh the Hosts view until `name`'s row is `ready`; that row."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        await c.refreshed("hosts")
        listing = hosts_list(c.app)
        if name in listing.keys and ready(listing.row(name)):
            return listing.row(name)  # type: ignore[no-any-return]
        await c.pilot.pause(0.2)
    raise AssertionError(f"host {name} never got there: {hosts_list(c.app).row(name)}")


def screen_text(app: ConsoleApp) -> str:
    return "\n".join(hosts_list(app).text_lines())


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


# -- a real control loop ----------------------------------------------------------------------


async def test_the_local_host_is_healthy_with_its_cpu_and_ram(
    console: Any, profile: Profile
) -> None:
    async with console(profile) as c:
        row = await until_row(c, "local", lambda r: r.verdict == "healthy" and r.cpu is not None)
        assert row.ram_total and row.ram_used is not None and row.disk_free
        assert dict(row.signals)["ssh"] == "ok" and dict(row.signals)["heartbeat"] == "ok"
        assert row.why is None or not row.why_bad
        stored = c.backend.call_sync(lambda plane: load_hosts(plane.store))
        assert [h["name"] for h in stored] == ["local"] and stored[0]["healthy"]
        text = screen_text(c.app)
        assert "local" in text and "healthy" in text and "CPU / RAM" in text
        assert f"{row.cpu:.0f}%" in text


async def test_an_unreachable_ssh_host_says_why_in_one_line(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    port = closed_port()
    far = f'\n[[hosts]]\nname = "far"\nkind = "ssh"\naddress = "127.0.0.1"\nport = {port}\n'
    profile = make_profile(body=FAST_QUEUE + far)
    async with console(profile) as c:
        row = await until_row(c, "far", lambda r: r.why is not None and "refused" in r.why)
        assert row.verdict == "unhealthy" and row.why_bad
        assert dict(row.signals)["ssh"] == "bad"
        reason = f"ssh: ssh far (127.0.0.1:{port}): connection refused"
        assert row.why is not None and row.why.startswith(reason)
        assert f"why: {reason}" in screen_text(c.app)
        local = await until_row(c, "local", lambda r: r.verdict == "healthy")
        assert local.why is None or not local.why_bad
        summary = str(c.app.views["hosts"].query_one("#hosts-summary").render())
        assert "2 host(s): 1 healthy, 1 not healthy" in summary


async def test_enter_opens_a_host_with_its_tasks_and_escape_comes_back(
    console: Any, profile: Profile
) -> None:
    async with console(profile) as c:
        await until_row(c, "local", lambda r: r.verdict == "healthy")
        spec = TaskSpec(kind="echo", payload={"hello": "fleet"}, host="local")
        task_id = c.backend.call_sync(lambda plane: plane.submit(spec))
        deadline = time.monotonic() + WAIT_S
        while c.backend.call_sync(lambda plane: plane.task(task_id).state) != TaskState.SUCCEEDED:
            assert time.monotonic() < deadline, "the echo task never ran"
            await c.pilot.pause(0.1)
        hosts_list(c.app).focus()
        await c.pilot.press("enter")
        screen = c.app.screen
        assert isinstance(screen, HostScreen) and screen.crumb == "local"
        while not screen.shown:
            assert time.monotonic() < deadline, "the host screen never painted"
            await c.pilot.pause(0.05)
        assert [m.host for m in c.posted(HostScreen.Shown)][:1] == ["local"]
        assert screen.detail is not None
        assert (task_id, "succeeded") in [(t.id, t.state) for t in screen.detail.tasks]
        assert screen.detail.state is not None and screen.detail.state["healthy"]
        header = str(screen.query_one("#host-header").render())
        assert "Hosts ▸ local" in header
        await c.pilot.press(c.app.keys["back"])
        assert c.app.screen is c.app.screen_stack[0] and c.app.current.VIEW == "hosts"
        assert "▸ local" not in str(c.app.query_one("#header").render())


# -- generated telemetry, no control loop ------------------------------------------------------


async def test_gpu_bars_and_sparklines_come_from_the_telemetry_rows(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile(body=FLEET, name="lab")
    async with console(profile, control=False, now=lambda: NOW) as c:
        c.backend.call_sync(write_fleet)
        row = await until_row(c, "gpu-a", lambda r: len(r.gpus) == GPUS)
        gpu = row.gpus[1]
        expected = [gpu_snapshot(0, 1, NOW - back) for back in range(HISTORY_S - 1, -1, -1)]
        assert gpu.history == tuple(float(s["utilization_pct"]) for s in expected)
        assert gpu.util == expected[-1]["utilization_pct"] and gpu.power_limit == 700.0
        listing = hosts_list(c.app)
        width = listing.scrollable_content_region.width
        columns = Columns.fit(width, INDENT)
        spark = sparkline(gpu.history, columns.spark)[0].text
        lines = [line for line in screen_text(c.app).splitlines() if "NVIDIA" in line]
        line = lines[1]
        assert spark.strip() and line.rstrip().endswith(spark.rstrip())
        assert f"{gpu.util:.0f}%" in line and "/80.0G" in line and "/700W" in line
        assert "█" in line  # the memory bar at least is well above one cell


async def test_a_burst_of_frames_from_one_host_repaints_only_that_host(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile(body=FLEET, name="lab")
    async with console(profile, control=False, now=lambda: NOW) as c:
        c.backend.call_sync(write_fleet)
        before = await until_row(c, "gpu-a", lambda r: len(r.gpus) == GPUS)
        await c.refreshed("hosts")
        assert hosts_list(c.app).repainted == 0  # nothing new: nothing repainted

        def burst(plane: Any) -> None:
            writer = FleetWriter(plane.store, ["gpu-a"], GPUS)
            for second in (1, 2, 3):
                writer.write(NOW + second, received_at=NOW)

        c.backend.call_sync(burst)
        await c.refreshed("hosts")
        listing = hosts_list(c.app)
        assert listing.repainted == 1
        after = listing.row("gpu-a")
        newest = [gpu_snapshot(0, 0, NOW + s)["utilization_pct"] for s in (1, 2, 3)]
        assert after.gpus[0].history[-3:] == tuple(float(u) for u in newest)
        assert after.gpus[0].history[:-3] == before.gpus[0].history[3:]
        assert after.gpus[0].util == newest[-1]


async def test_a_host_scrolled_into_view_shows_its_new_numbers(
    console: Any, make_profile: Callable[..., Profile]
) -> None:
    names = [f"gpu-{i}" for i in range(10)]  # 5 lines each: more than the screen holds
    hosts = "".join(
        f'[[hosts]]\nname = "{n}"\nkind = "ssh"\naddress = "10.0.1.{i}"\n'
        for i, n in enumerate(names)
    )
    profile = make_profile(body=hosts, name="lab")
    async with console(profile, control=False, now=lambda: NOW) as c:
        c.backend.call_sync(lambda plane: FleetWriter(plane.store, names, GPUS).write(NOW))
        await until_row(c, names[-1], lambda r: len(r.gpus) == GPUS)
        listing = hosts_list(c.app)
        listing.focus()
        await c.pilot.press("end")
        await c.pilot.pause()
        assert listing.cursor_key == names[-1] and listing.scroll_offset.y > 0
        c.backend.call_sync(
            lambda plane: FleetWriter(plane.store, [names[-1]], GPUS).write(NOW + 1)
        )
        await c.refreshed("hosts")
        assert listing.repainted == 1
        await c.pilot.pause()
        on_screen = [  # what the compositor shows, from the widgets' render caches
            "".join(segment.text for segment in strip)
            for strip in c.app.screen._compositor.render_strips()
        ]
        for line in listing.text_lines()[-GPUS:]:
            assert line.rstrip() in "\n".join(on_screen)
