"""The ControlPlane: what the CLI, the console, the gateway and the benchmarks call.

`open_control_plane(profile)` opens the profile's state database. Any number of processes may
open it: they read, submit and cancel. One of them at a time runs the control loop (`bitinglip
up`, or `embedded()` for the duration of one command), which holds the controller lease.
Tasks and jobs are its own methods; models are `plane.models` (`ModelDesk`) and hosts and their
telemetry `plane.fleet` (`FleetDesk`). Front ends import it from `bitinglip.control`.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import MODEL_KINDS, SERVE_KINDS

from bitinglip.config import Profile
from bitinglip.control.plane_db import DbDesk
from bitinglip.control.plane_fleet import FleetDesk
from bitinglip.control.plane_metrics import PlaneMetrics, read_metrics
from bitinglip.control.plane_models import ModelDesk
from bitinglip.control.queue import filter as task_filter
from bitinglip.control.queue import jobs
from bitinglip.control.queue import views as task_views
from bitinglip.control.queue.filter import TaskFilter, TaskPage
from bitinglip.control.queue.follow import FollowMark, FollowStep, follow_step
from bitinglip.control.queue.job_file import JobFile
from bitinglip.control.queue.keyset import WINDOW, Cursor
from bitinglip.control.queue.pace import JobPace, job_paces
from bitinglip.control.queue.tasks import TERMINAL, TaskQueue, TaskSpec, TaskState
from bitinglip.control.queue.views import Task
from bitinglip.control.queue.watch import WatchMark, WatchStep, watch_steps
from bitinglip.control.runtime import controller, doorbell
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import InputError


class ControlPlane:
    """One process's handle on the control plane. Use from one thread (it owns a connection)."""

    def __init__(self, profile: Profile, store: Store) -> None:
        self.profile = profile
        self.store = store
        self.queue = TaskQueue(store, profile.queue, on_submit=self._ring)
        self.models = ModelDesk(profile, store, self.queue)
        self.fleet = FleetDesk(profile, store)
        self.db = DbDesk(profile, store)
        self.loop: ControlLoop | None = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> int:
        """Queue one task; its model (an alias, a registered model's ref or short name, a
        .gguf path) is stored by its canonical name (`ModelDesk.resolve_name`)."""
        return self.queue.submit(self._checked(spec))

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        names: dict[str, str] = {}
        return self.queue.submit_many([self._checked(spec, names=names) for spec in specs])

    def submit_job(
        self,
        path: Path,
        name: str | None = None,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> jobs.Job:
        """Check the file line by line into a staging file (no lock, constant memory), then
        queue all of its lines in one transaction; a bad line queues nothing. `progress` is
        called with (lines, bytes read, file size) as the check goes, and once at its end."""
        names: dict[str, str] = {}  # each model name is resolved once for the whole file

        def check(model: str | None, host: str | None, where: str) -> str | None:
            return self._checked(TaskSpec("echo", model=model, host=host), where, names).model

        file = JobFile(path, check, progress)
        with self.queue.intake.stage_job(str(path)) as stage:
            stage.add_all(file.rows())
            assert file.format is not None  # rows() refuses a file without a task
            job_id = stage.queue(name or path.name, str(path.resolve()), file.format)
        return jobs.get_job(self.store, job_id)

    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        return self.queue.cancel(ids)

    def retry(self, ids: Sequence[int]) -> dict[int, str]:
        return self.queue.retry(ids)

    def set_priority(self, task_id: int, priority: int) -> None:
        """A queued task's priority (higher runs first); StateError for a task not queued."""
        self.queue.set_priority(task_id, priority)

    def _checked(
        self, spec: TaskSpec, where: str = "", names: dict[str, str] | None = None
    ) -> TaskSpec:
        """`spec` with its host checked and its model by its canonical name (`names`: the
        names resolved so far, kept across the specs of one submit)."""
        prefix = f"{where}: " if where else ""
        hosts = [h.name for h in self.profile.hosts]
        if spec.host is not None and spec.host not in hosts:
            raise InputError(
                f"{prefix}unknown host {spec.host!r}; hosts in profile {self.profile.name}: "
                f"{', '.join(hosts) or '(none)'}"
            )
        if spec.model is None:
            return spec
        names = {} if names is None else names
        try:
            model = names.get(spec.model) or self.models.resolve_name(spec.model)
        except InputError as exc:
            raise InputError(f"{prefix}{exc}") from None
        names[spec.model] = model
        return spec if model == spec.model else replace(spec, model=model)

    # -- reading ---------------------------------------------------------------------------

    def task(self, task_id: int) -> Task:
        return task_views.get_task(self.store, task_id)

    def tasks(
        self,
        *,
        state: TaskState | None = None,
        job_id: int | None = None,
        kinds: Sequence[str] = (),
        limit: int = 50,
        after: int | None = None,
        before: int | None = None,
    ) -> list[Task]:
        """Newest first; only tasks of `kinds` when given; the page after (or before) a task."""
        return self.task_listing(
            state=state, job_id=job_id, kinds=kinds, limit=limit, after=after, before=before
        ).tasks

    def task_listing(
        self,
        *,
        state: TaskState | None = None,
        job_id: int | None = None,
        kinds: Sequence[str] = (),
        limit: int = 50,
        after: int | None = None,
        before: int | None = None,
    ) -> task_views.TaskListing:
        """A keyset page of tasks, newest first, with the ids that read the next and previous
        pages."""
        return task_views.list_page(
            self.store,
            state=state,
            job_id=job_id,
            kinds=kinds,
            limit=limit,
            after=after,
            before=before,
        )

    def task_counts(self) -> dict[str, int]:
        """Tasks by state."""
        return task_views.counts(self.store)

    def task_page(
        self,
        found: TaskFilter,
        sort: str = "id",
        descending: bool | None = None,
        limit: int = 200,
        *,
        after: Cursor | None = None,
        before: Cursor | None = None,
        window: int = WINDOW,
    ) -> TaskPage:
        """The `limit` tasks a filter keeps after `after` (or before `before`, or the first), in
        `sort` order, with counts (one snapshot; every read bounded, see `queue.keyset`)."""
        return task_filter.page(
            self.store, found, sort, descending, limit, after=after, before=before, window=window
        )

    def follow_step(self, task_id: int, mark: FollowMark) -> FollowStep:
        """What is new about a task since `mark`: its row, events and output."""
        return follow_step(self.store, task_id, mark)

    def queued_ahead(self, priority: int, cap: int | None = None) -> int:
        """Queued tasks at `priority` or above: the queue a new task of that priority joins
        (counted up to `cap` when given: the answer is then at least `cap`)."""
        return task_views.queued_at_or_above(self.store, priority, cap)

    def watch_steps(self, marks: Mapping[int, WatchMark]) -> dict[int, WatchStep]:
        """What is new about each of many tasks since its mark (output, a restart, the end):
        one read transaction with a statement for all states and one for all new output."""
        return watch_steps(self.store, marks)

    def data_version(self) -> int:
        """Changes whenever another connection commits to the database; cheap to poll."""
        return self.store.data_version()

    def metrics(self, priority: int, window_s: float) -> PlaneMetrics:
        """The queue (split at `priority`, tokens over the last `window_s`), the controller,
        the hosts' stored health and latest telemetry: one snapshot, for a metrics scrape."""
        return read_metrics(self.store, priority, window_s)

    def events(self, task_id: int) -> list[dict[str, Any]]:
        return task_views.events(self.store, task_id)

    def output(self, task_id: int) -> str:
        return task_views.output(self.store, task_id)

    def job(self, job_id: int) -> jobs.Job:
        return jobs.get_job(self.store, job_id)

    def jobs(self, limit: int = 50) -> list[jobs.Job]:
        return jobs.list_jobs(self.store, limit)

    def export_job(self, job_id: int) -> Iterator[str]:
        return jobs.export_lines(self.store, job_id)

    def job_paces(self, job_ids: Sequence[int]) -> dict[int, JobPace]:
        """Throughput and time left of each job (for the Jobs view)."""
        return job_paces(self.store, job_ids)

    def backup(self, dest: Path) -> None:
        """A consistent copy of the state database, written atomically."""
        self.store.backup(dest)

    def controller(self) -> controller.ControllerInfo | None:
        return controller.current(self.store)

    def status(self) -> dict[str, Any]:
        holder = self.controller()
        return {
            "profile": self.profile.name,
            "database": str(self.profile.db_path),
            "durability": self.profile.durability,
            "controller": holder.to_dict() if holder and holder.alive else None,
            "tasks": task_views.counts(self.store),
            "hosts": [h.name for h in self.profile.hosts],
        }

    def cannot_run(self, kind: str) -> str | None:
        """Why no host of this profile can run `kind` tasks (None when one can)."""
        local = [h.name for h in self.profile.hosts if h.kind == "local"]
        if kind == "echo":
            return None
        if kind not in (*MODEL_KINDS, *SERVE_KINDS):
            return f"nothing in this release runs {kind} tasks yet"
        if not self.profile.hosts:
            return f"profile {self.profile.name} has no hosts; add one with `bitinglip hosts add`"
        if not local:
            return None  # SSH hosts say in their hello whether they can (llama_cpp, model files)
        if importlib.util.find_spec("llama_cpp") is None:
            return (
                f"{kind} tasks need llama-cpp-python on host {local[0]}; install it with "
                "`make runtime` (or pip install llama-cpp-python, see the README)"
            )
        return None

    def follow(
        self, task_id: int, timeout: float | None = None, on_rerun: Callable[[], None] | None = None
    ) -> Iterator[str]:
        """The task's output as it is stored, chunk by chunk, until it ends (or `timeout`).

        When the task is run again (a retry), its output starts over: `on_rerun` is called and
        the new run's output follows from its start.
        """
        mark = FollowMark()
        for _ in self._each_change(timeout):
            step = self.follow_step(task_id, mark)
            if step.restarted and on_rerun is not None:
                on_rerun()
            mark = step.mark
            if step.output:
                yield step.output
            if step.task.state in TERMINAL:
                return

    def wait_change(self, timeout: float) -> None:
        """Block until something is committed to the database, or `timeout` passes."""
        changes = self._each_change(timeout)
        next(changes)
        next(changes, None)

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Block until the task is in a terminal state (or `timeout` passes); return it."""
        for _ in self._each_change(timeout):
            task = self.task(task_id)
            if task.state in TERMINAL:
                return task
        return self.task(task_id)

    def _each_change(self, timeout: float | None) -> Iterator[None]:
        """Yield now, then after each commit to the database, until `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        version, quiet = -1, 0
        while True:
            seen = self._commits()
            current = self.store.data_version()
            if current != version:
                version, quiet = current, 0
                yield
            else:
                quiet += 1
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._sleep_until_change(quiet, seen)

    def _commits(self) -> int:
        return self.loop.commits if self.loop is not None else 0

    def _sleep_until_change(self, quiet: int, seen: int) -> None:
        """Until the next commit: notified by an embedded loop (unless one came since `seen`),
        else polling `data_version` (cheap: no I/O), every 0.5 ms after a change backing off to
        every 20 ms when quiet."""
        if self.loop is not None:
            with self.loop.finished:
                if self.loop.commits == seen:
                    self.loop.finished.wait(0.05)
        else:
            time.sleep(min(0.0005 * 2**quiet, 0.02))

    # -- serving ---------------------------------------------------------------------------

    def _ring(self) -> None:
        if self.loop is not None:
            self.loop.doorbell.ring()
            return
        holder = controller.current(self.store)
        if holder is not None:
            doorbell.ring(holder.doorbell)

    @contextmanager
    def embedded(self) -> Iterator[ControlLoop | None]:
        """Run a control loop in a thread for the duration, unless a live controller exists.

        Yields the loop (None when another process is the controller and will do the work).
        """
        holder = self.controller()
        if holder is not None and holder.alive:
            yield None
            return
        loop = ControlLoop(self.profile)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                loop.run()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                errors.append(exc)
                loop.is_controller.set()

        thread = threading.Thread(target=run, name="bitinglip-control", daemon=True)
        thread.start()
        # Usually at once; if another process became controller meanwhile, it does the work.
        loop.is_controller.wait(self.profile.controller_lease_s * 3)
        if errors:
            thread.join()
            raise errors[0]
        self.loop = loop
        try:
            yield loop
        finally:
            self.loop = None
            loop.stop()
            thread.join()


def open_control_plane(profile: Profile) -> ControlPlane:
    """Open the profile's state database (creating it on first use)."""
    use_hub_token(profile)
    return ControlPlane(profile, open_store(profile.db_path, profile.durability))


def use_hub_token(profile: Profile) -> None:
    """`[hub] token_env` names the variable holding the hub token: it becomes this process's
    HF_TOKEN (unless one is set), which the hub client and the agents' channels read. Only the
    environment holds it: never the database, a log or a command line."""
    name = profile.hub_token_env
    if name and not os.environ.get("HF_TOKEN") and os.environ.get(name):
        os.environ["HF_TOKEN"] = os.environ[name]
