"""The ControlPlane façade: what the CLI, the console and the gateway call.

`open_control_plane(profile)` opens the profile's state database. Any number of processes may
open it: they read, submit and cancel. One of them at a time runs the control loop (`bitinglip
up`, or `embedded()` for the duration of one command), which holds the controller lease.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import MODEL_KINDS, unsafe_reason

from bitinglip.config import HostConfig, Profile
from bitinglip.control import controller, doorbell, jobs, models, pulls, registry, task_views
from bitinglip.control.db import Store, open_store
from bitinglip.control.hub_refs import HubFile
from bitinglip.control.loop import ControlLoop
from bitinglip.control.task_views import Task
from bitinglip.control.tasks import TERMINAL, TaskQueue, TaskSpec, TaskState
from bitinglip.errors import InputError, NotFoundError, StateError


class ControlPlane:
    """One process's handle on the control plane. Use from one thread (it owns a connection)."""

    def __init__(self, profile: Profile, store: Store) -> None:
        self.profile = profile
        self.store = store
        self.queue = TaskQueue(store, profile.queue, on_submit=self._ring)
        self.loop: ControlLoop | None = None

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work ------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> int:
        self._check_placement(spec)
        return self.queue.submit(spec)

    def submit_many(self, specs: Sequence[TaskSpec]) -> list[int]:
        for spec in specs:
            self._check_placement(spec)
        return self.queue.submit_many(specs)

    def submit_job(self, path: Path, name: str | None = None) -> jobs.Job:
        """Check the whole file, then queue all of its lines in one transaction."""
        fmt, specs = jobs.parse_jsonl(path)
        for spec in specs:
            self._check_placement(spec, where=f"{path}:{spec.line_no}")
        job_id, _ = self.queue.submit_job(name or path.name, str(path.resolve()), fmt, specs)
        return jobs.get_job(self.store, job_id)

    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        return self.queue.cancel(ids)

    def retry(self, ids: Sequence[int]) -> dict[int, str]:
        return self.queue.retry(ids)

    def _check_placement(self, spec: TaskSpec, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        names = [h.name for h in self.profile.hosts]
        if spec.host is not None and spec.host not in names:
            raise InputError(
                f"{prefix}unknown host {spec.host!r}; hosts in profile {self.profile.name}: "
                f"{', '.join(names) or '(none)'}"
            )
        if spec.model is not None:
            try:
                models.check_name(self.profile, spec.model)
            except InputError as exc:
                raise InputError(f"{prefix}{exc}") from None

    def pull(
        self,
        ref: str,
        *,
        hosts: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        all_hosts: bool = False,
        revision: str | None = None,
    ) -> tuple[HubFile, list[pulls.Ticket]]:
        """Pin `ref` to a commit, file, size and sha256, then queue a pull on each chosen host
        (or join the one in progress there)."""
        targets = self.pull_targets(hosts, labels, all_hosts)
        from bitinglip.control import hub  # huggingface_hub: only for commands that need it

        file = hub.resolve(ref, revision)
        return file, pulls.plan(self.queue, file, targets)

    def pull_via_operator(
        self,
        ref: str,
        *,
        hosts: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        all_hosts: bool = False,
        revision: str | None = None,
        progress: Callable[[str], None] = lambda _s: None,
    ) -> tuple[HubFile, dict[str, str]]:
        """For hosts with no way to the hub: download here once, verified, then push to each
        host over SFTP, verified there (`push.py`). Host -> path, or "error: ..."."""
        from bitinglip.control import hub, push

        targets = self.pull_targets(hosts, labels, all_hosts)
        file = hub.resolve(ref, revision)
        why = unsafe_reason(pulls.dest(file))
        if why is not None:
            raise InputError(f"{file.repo} lists {file.name!r}, whose place {why}; refused")
        model_id = registry.register(self.store, file)
        local = push.operator_copy(self.profile, file, progress)
        return file, push.push_all(
            self.store, self.profile, file, model_id, targets, local, progress
        )

    def place_alias(self, name: str, ctx: int = 4096) -> tuple[HubFile, list[pulls.Ticket]] | None:
        """For a hub alias with no ready copy anywhere: pin it and pull it to the host where it
        fits best (from its GGUF header and the stored telemetry; the local host, else the
        first, when no telemetry is stored yet). None when nothing needs pulling; InputError
        when it fits nowhere."""
        alias = self.profile.models.get(name)
        if alias is None or not alias.source.startswith("hf:") or not self.profile.hosts:
            return None
        ref = alias.source.removeprefix("hf:") + (f":{alias.file}" if alias.file else "")
        found = registry.find(self.store, name, self.profile)
        if found is not None and any(
            c["state"] in ("ready", "pulling") for c in found["hosts"].values()
        ):
            return None
        from bitinglip.control import fit, hub, telemetry_ring

        file = hub.resolve(ref, alias.revision)
        [need] = fit.needs_for_files([file], hub.read_range, ctx)
        hosts = {h.name: h for h in self.profile.hosts}
        devices, _ = fit.gpus_from_telemetry(telemetry_ring.latest(self.store), set(hosts))
        verdicts = [v for v in fit.plan(need, devices) if v.verdict != fit.Fit.NO]
        if devices and not verdicts:
            raise InputError(
                f"model {name} ({file.name}, {need.total(fit.GIB) / fit.GIB:.1f} GiB with a "
                f"{ctx}-token context) fits on no host of profile {self.profile.name}; see "
                f"`bitinglip models fit {file.repo}`"
            )
        if verdicts:
            best = max(verdicts, key=lambda v: (v.verdict == fit.Fit.FITS, v.layers_on_gpu, v.free))
            target = hosts[best.host]
        else:
            local = [h for h in self.profile.hosts if h.kind == "local"]
            target = (local or list(self.profile.hosts))[0]
        return file, pulls.plan(self.queue, file, [target])

    def pull_targets(
        self, names: Sequence[str], labels: Mapping[str, str] | None, all_hosts: bool
    ) -> list[HostConfig]:
        """The hosts a pull goes to: --host names, --label matches, --all, or the only host."""
        every = list(self.profile.hosts)
        known = {h.name: h for h in every}
        for name in names:
            if name not in known:
                raise InputError(
                    f"unknown host {name!r}; hosts in profile {self.profile.name}: "
                    f"{', '.join(known) or '(none)'}"
                )
        if all_hosts:
            return every
        chosen = [known[n] for n in names]
        if labels:
            chosen += [
                h for h in every if h not in chosen and labels.items() <= dict(h.labels).items()
            ]
            if not chosen:
                wanted = ", ".join(f"{k}={v}" for k, v in labels.items())
                raise InputError(f"no host in profile {self.profile.name} has labels {wanted}")
        if chosen:
            return chosen
        if len(every) == 1:
            return every
        raise InputError(
            f"profile {self.profile.name} has {len(every)} hosts; choose with --host NAME, "
            "--label k=v or --all"
        )

    # -- reading ---------------------------------------------------------------------------

    def task(self, task_id: int) -> Task:
        return task_views.get_task(self.store, task_id)

    def tasks(
        self, *, state: TaskState | None = None, job_id: int | None = None, limit: int = 50
    ) -> list[Task]:
        return task_views.list_tasks(self.store, state=state, job_id=job_id, limit=limit)

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
        if kind not in MODEL_KINDS:
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
        seq, token = 0, None
        for _ in self._each_change(timeout):
            task = self.task(task_id)  # before the rows: rows stored with the end are read
            if token is not None and task.lease_token != token and seq > 0:
                seq = 0
                if on_rerun is not None:
                    on_rerun()
            token = task.lease_token
            rows = self.store.conn.execute(
                "SELECT seq, data FROM task_output WHERE task_id = ? AND seq > ? ORDER BY seq",
                (task_id, seq),
            ).fetchall()
            for row_seq, data in rows:
                seq = row_seq
                yield data
            if task.state in TERMINAL:
                return

    def wait_change(self, timeout: float) -> None:
        """Block until something is committed to the database, or `timeout` passes."""
        changes = self._each_change(timeout)
        next(changes)
        next(changes, None)

    def model_copy_path(self, host: str, model_id: int) -> str | None:
        row = self.store.conn.execute(
            "SELECT path FROM host_models WHERE host = ? AND model_id = ?", (host, model_id)
        ).fetchone()
        return None if row is None else row[0]

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

    # -- model copies ----------------------------------------------------------------------

    def remove_model_copy(self, host: str, model_id: int) -> str | None:
        """Delete a registered model's copy on `host` and forget it; the path removed, or None.

        A copy being pulled is refused (cancel its task first), and so is one a live controller
        has loaded. On the local host the file is deleted here; on an SSH host a `remove` task
        has the host's agent delete it; a host no longer in the profile only loses its record.
        """
        model = registry.get(self.store, model_id)
        copy = None if model is None else model["hosts"].get(host)
        if model is None or copy is None:
            raise NotFoundError(f"model {model_id} has no copy on host {host}")
        what = f"{model['repo']}:{model['file']} on {host}"
        if copy["state"] == registry.PULLING:
            task = f" by task {copy['task_id']}" if copy["task_id"] is not None else ""
            raise StateError(f"{what} is being pulled{task}; cancel its pull first")
        holder = self.controller()
        if copy["loaded"] and holder is not None and holder.alive:
            raise StateError(f"{what} is loaded; it unloads after 5 idle minutes, retry then")
        kind = next((h.kind for h in self.profile.hosts if h.name == host), None)
        if kind == "ssh":  # the host's agent deletes it: a task, run when it is reachable
            pulls.remove(self.queue, host, model_id, copy["path"])
            return str(copy["path"])
        path = copy["path"] if kind == "local" else None
        if path is not None:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                raise StateError(f"{what}: cannot delete {path}: {exc.strerror}") from None
        registry.forget_host_copy(self.store, host, model_id)
        return path

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
