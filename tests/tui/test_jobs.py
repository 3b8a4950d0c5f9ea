"""The Jobs view against a real control plane and the local agent: a job's progress as its
tasks run, Enter into its tasks, and the export of its results to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input

from bitinglip.tui.app import ConsoleApp
from bitinglip.tui.forms import ValueForm
from bitinglip.tui.views.jobs import JobsView, progress_bar
from tests.tui.conftest import Console
from tests.tui.tasks_fixtures import write_batch
from tests.tui.test_tasks import shown_ids, tasks_view, wait_until

LINES = 4


def jobs_row(c: Console, job_id: int) -> list[str]:
    view = c.app.views["jobs"]
    assert isinstance(view, JobsView)
    return [str(cell) for cell in view.query_one(DataTable).get_row(str(job_id))]


async def run_job(c: Console, folder: Path) -> int:
    """A job of echo lines, run to the end by the local agent."""
    lines = [json.dumps({"kind": "echo", "id": f"n{n}", "payload": {"n": n}}) for n in range(LINES)]
    path = write_batch(folder, lines, "numbers.jsonl")
    job = await c.backend.call(lambda plane: plane.submit_job(path))

    def done() -> bool:
        return bool(c.backend.call_sync(lambda plane: plane.job(job.id).done) == LINES)

    await wait_until(c, done, 30, "the job's tasks to run")
    return int(job.id)


async def test_progress_and_enter_shows_the_jobs_tasks(console: Any, tmp_path: Path) -> None:
    async with console(start="jobs") as c:
        job_id = await run_job(c, tmp_path)
        await c.refreshed("jobs")
        row = jobs_row(c, job_id)
        assert row[:2] == [str(job_id), "numbers.jsonl"]
        assert row[2].endswith("100%") and row[3] == f"{LINES}/{LINES}"
        assert float(row[4]) > 0  # tasks per minute
        assert row[5:] == ["done", "0", "finished"]
        c.app.views["jobs"].query_one(DataTable).focus()
        await c.pilot.press("enter")
        await c.pilot.pause()
        assert c.app.current.VIEW == "tasks"
        assert tasks_view(c.app).filter_text == f"job:{job_id}"
        await c.refreshed("tasks")
        job_tasks = await c.backend.call(
            lambda plane: [t.id for t in plane.tasks(job_id=job_id, limit=100)]
        )
        assert shown_ids(c.app) == job_tasks and len(job_tasks) == LINES


async def test_export_writes_the_results_where_it_says(
    console: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with console(start="jobs") as c:
        job_id = await run_job(c, tmp_path)
        await c.refreshed("jobs")
        await c.pilot.press("e")
        form = c.app.screen
        assert isinstance(form, ValueForm)
        assert form.query_one(Input).value == f"./job-{job_id}.jsonl"
        await c.pilot.press("enter")  # the default
        await wait_until(c, lambda: c.posted(ConsoleApp.Acted), 15, "the export")
        (report,) = c.posted(ConsoleApp.Acted)
        written = tmp_path / f"job-{job_id}.jsonl"
        assert report.ok and report.detail == f"job {job_id}: wrote {LINES} results to {written}"
        lines = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
        assert [(x["id"], x["state"], x["result"]) for x in lines] == [
            (f"n{n}", "succeeded", {"n": n}) for n in range(LINES)
        ]
        expected = await c.backend.call(lambda plane: list(plane.export_job(job_id)))
        assert written.read_text(encoding="utf-8") == "".join(x + "\n" for x in expected)


async def test_export_never_writes_through_a_planted_symlink(
    console: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is a fresh random name: a symlink planted at the name the export once
    used (`.NAME.PID.tmp`) is not followed, and the file it points to is unchanged."""
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    async with console(start="jobs") as c:
        job_id = await run_job(c, tmp_path)
        (tmp_path / f".job-{job_id}.jsonl.{os.getpid()}.tmp").symlink_to(victim)
        await c.refreshed("jobs")
        await c.pilot.press("e")
        await c.pilot.press("enter")
        await wait_until(c, lambda: c.posted(ConsoleApp.Acted), 15, "the export")
        (report,) = c.posted(ConsoleApp.Acted)
        assert report.ok, report.detail
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert len((tmp_path / f"job-{job_id}.jsonl").read_text(encoding="utf-8").splitlines()) == LINES


async def test_export_to_a_folder_that_is_not_there_says_so(console: Any, tmp_path: Path) -> None:
    async with console(start="jobs") as c:
        await run_job(c, tmp_path)
        await c.refreshed("jobs")
        await c.pilot.press("e")
        c.app.screen.query_one(Input).value = str(tmp_path / "missing" / "out.jsonl")
        await c.pilot.press("enter")
        await wait_until(c, lambda: c.posted(ConsoleApp.Acted), 15, "the export")
        (report,) = c.posted(ConsoleApp.Acted)
        assert not report.ok and report.detail.startswith("cannot write")
        assert not (tmp_path / "missing").exists()


def test_progress_bar_shows_the_failed_share() -> None:
    bar = progress_bar(5, 10, 1)
    assert bar.plain == "█" * 10 + "░" * 10 + "  50%"
    assert [(span.end - span.start, span.style) for span in bar.spans] == [
        (8, "green"),
        (2, "red"),
        (10, "dim"),
    ]
