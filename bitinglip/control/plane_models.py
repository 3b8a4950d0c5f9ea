"""The model manager's desk of the ControlPlane (`plane.models`): the registry and the names a
model answers to, pulls (by the hosts' agents, or by this machine and pushed), placing a model
no host has where it fits, fit planning from stored telemetry, what is loaded where (from the
agents' telemetry), and removing copies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import unsafe_reason

from bitinglip.config import HostConfig, Profile
from bitinglip.control.fleet import telemetry_ring
from bitinglip.control.models import aliases, fit, gguf_meta, local_width, pulls, registry
from bitinglip.control.models.refs import HubFile, split_ref
from bitinglip.control.models.settings import local_header
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime import controller
from bitinglip.control.store.db import Store
from bitinglip.errors import HubError, InputError, NotFoundError, StateError

log = logging.getLogger(__name__)


class ModelDesk:
    """What front ends do with models; every call reads or writes through the plane's store."""

    def __init__(self, profile: Profile, store: Store, queue: TaskQueue) -> None:
        self.profile = profile
        self._store = store
        self._queue = queue

    # -- the registry ------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every registered model with its copies (host -> state, path, loaded, ...)."""
        return registry.rows(self._store, self.profile)

    def get(self, model_id: int) -> dict[str, Any] | None:
        return registry.get(self._store, model_id, self.profile)

    def find(self, ref_or_alias: str) -> dict[str, Any] | None:
        """The registered model a ref (`owner/repo[:file]`), an alias, an id or a short name
        names, or None."""
        name = ref_or_alias
        if not name.isdigit() and name not in self.profile.models:
            try:
                split_ref(name)
            except InputError:  # not a ref: a short name (InputError when it names nothing)
                name = self.resolve_name(name, paths=False)
        return registry.find(self._store, name, self.profile)

    def resolve_name(self, name: str, *, paths: bool = True) -> str:
        """The canonical name of the model `name` means (an alias, a registered model's ref or
        short name, a .gguf path unless not `paths`): what a task stores. InputError when it
        names nothing or several registered files."""
        if name in self.profile.models:
            return name
        return aliases.resolve_name(self.profile, self.rows(), name, paths=paths)

    def alias_rows(self) -> list[dict[str, Any]]:
        """The profile's aliases that no registered model answers, in `rows`' shape with `id`
        None and their `source`: a `pypi:` alias's copy on each local host is `ready` once
        assembled (its first use), else there is none ("not pulled")."""
        loaded = {
            host: set(snapshot.get("models_loaded") or [])
            for host, snapshot in telemetry_ring.latest(self._store).items()
        }
        found = []
        for name, alias in self.profile.models.items():
            kind, _, where = alias.source.partition(":")
            if kind == "hf":
                try:
                    if registry.find(self._store, name, self.profile) is not None:
                        continue
                except InputError:  # several registered files match: listed among `rows`
                    continue
            path = aliases.models_dir(self.profile) / f"{name}.gguf"
            copies = {}
            if kind == "pypi" and path.is_file():
                copies = {
                    h.name: {
                        "state": "ready",
                        "path": str(path),
                        "loaded": str(path) in loaded.get(h.name, ()),
                    }
                    for h in self.profile.hosts
                    if h.kind == "local"
                }
            found.append(
                {
                    "id": None,
                    "alias": name,
                    "source": alias.source,
                    "repo": where if kind == "hf" else None,
                    "file": alias.file or (f"{name}.gguf" if kind == "pypi" else None),
                    "revision": alias.revision,
                    "hosts": copies,
                }
            )
        return found

    def unregister(self, model_id: int) -> bool:
        return registry.unregister(self._store, model_id)

    def embedding_width(self, model: str) -> int | None:
        """The alias's embedding width from the GGUF header of a copy on this machine (a
        `pypi:` alias's file, a ready copy on a local host), or None when none says it."""
        return local_width.embedding_width(self._store, self.profile, model)

    def devices(self) -> tuple[list[fit.Device], list[str]]:
        """The GPUs of the profile's hosts from the stored telemetry, and notes on hosts
        without any."""
        hosts = [h.name for h in self.profile.hosts]
        return fit.gpus_from_telemetry(telemetry_ring.latest(self._store), hosts)

    def pull(
        self,
        ref: str,
        *,
        hosts: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        all_hosts: bool = False,
        revision: str | None = None,
    ) -> tuple[HubFile, list[pulls.Ticket]]:
        """Pin `ref` to a commit, file, size and sha256, read its header's memory facts (range
        reads of the header only; `with_facts`), then queue a pull on each chosen host (or join
        the one in progress there)."""
        targets = self.pull_targets(hosts, labels, all_hosts)
        from bitinglip.control.models import hub  # huggingface_hub: only for commands that need it

        file = hub.resolve(ref, revision)
        pulls.check_name(file)  # before any read of the file
        file = with_facts(file)
        return file, pulls.plan(self._queue, file, targets)

    def pull_file(self, file: HubFile, targets: Sequence[HostConfig]) -> list[pulls.Ticket]:
        """Queue a pull of `file` (pinned already: `resolve_ref`; with its header facts when
        the caller read them, `read_need`) on each of `targets`, or join the one in progress
        there. For a caller that asks the hub off this thread."""
        return pulls.plan(self._queue, file, targets)

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
        from bitinglip.control.models import hub, push

        targets = self.pull_targets(hosts, labels, all_hosts)
        file = hub.resolve(ref, revision)
        why = unsafe_reason(pulls.dest(file))
        if why is not None:
            raise InputError(f"{file.repo} lists {file.name!r}, whose place {why}; refused")
        model_id = registry.register(self._store, file)
        local = push.operator_copy(self.profile, file, progress)
        stat = local.stat()  # the header of the copy here: the facts, with no hub read
        header = local_header(str(local), stat.st_size, stat.st_mtime_ns)
        if header is not None:
            registry.set_facts(self._store, model_id, gguf_meta.header_facts(header))
        return file, push.push_all(
            self._store, self.profile, file, model_id, targets, local, progress
        )

    def place(self, name: str, ctx: int = 4096) -> tuple[HubFile, list[pulls.Ticket]] | None:
        """For a hub alias or a registered model with no ready copy on any host: pin it and pull
        it to the host where it fits best (from its GGUF header and the stored telemetry; the
        local host, else the first, when no telemetry is stored yet). None when nothing needs
        pulling (a copy is ready or coming, a PyPI alias, a path); InputError when it fits
        nowhere. Reads the hub: for a caller that may wait on the network (else `to_place`,
        `read_need` off the plane's thread, `place_file`)."""
        target = self.to_place(name)
        if target is None:
            return None
        file, need = read_need(target, ctx)
        return file, self.place_file(file, need, ctx, name)

    place_alias = place  # the name the console and the CLI knew it by

    def to_place(self, name: str) -> HubFile | tuple[str, str | None] | None:
        """What `place` would pull for `name` (reading the database only): a registered file, a
        hub alias's (ref, revision) to pin, or None when nothing needs pulling."""
        canonical = self.resolve_name(name)
        alias = self.profile.models.get(canonical)
        if not self.profile.hosts or (alias is not None and not alias.source.startswith("hf:")):
            return None
        try:
            found = registry.find(self._store, canonical, self.profile)
        except InputError:
            if alias is not None:  # several registered files match the alias
                raise
            return None  # a path
        if found is not None and any(
            c["state"] in ("ready", "pulling") for c in found["hosts"].values()
        ):
            return None
        if alias is not None:
            ref = alias.source.removeprefix("hf:") + (f":{alias.file}" if alias.file else "")
            return ref, alias.revision
        return None if found is None else registry.hub_file(found)

    def place_file(self, file: HubFile, need: fit.Need, ctx: int, name: str) -> list[pulls.Ticket]:
        """Pull `file` (whose header `read_need` read: registered with its facts) to the host
        where it fits best."""
        target = self.best_host(file, need, ctx, f"model {name}")
        return pulls.plan(self._queue, file, [target])

    def best_host(self, file: HubFile, need: fit.Need, ctx: int, what: str) -> HostConfig:
        """The host where `file` (needing `need` with a `ctx`-token context) fits best, from
        the stored telemetry; the local host, else the first, when none is stored. InputError
        (naming `what`) when it fits nowhere. Reads the database only: the caller has read the
        header (`fit.needs_for_files`), so this never waits on the network."""
        hosts = {h.name: h for h in self.profile.hosts}
        devices, _ = fit.gpus_from_telemetry(telemetry_ring.latest(self._store), set(hosts))
        verdicts = [v for v in fit.plan(need, devices) if v.verdict != fit.Fit.NO]
        if devices and not verdicts:
            raise InputError(
                f"{what} ({file.name}, {need.total(fit.GIB) / fit.GIB:.1f} GiB with a "
                f"{ctx}-token context) fits on no host of profile {self.profile.name}; see "
                f"`bitinglip models fit {file.repo}`"
            )
        if verdicts:
            best = max(verdicts, key=lambda v: (v.verdict == fit.Fit.FITS, v.layers_on_gpu, v.free))
            return hosts[best.host]
        local = [h for h in self.profile.hosts if h.kind == "local"]
        return (local or list(self.profile.hosts))[0]

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

    def copy_path(self, host: str, model_id: int) -> str | None:
        row = self._store.conn.execute(
            "SELECT path FROM host_models WHERE host = ? AND model_id = ?", (host, model_id)
        ).fetchone()
        return None if row is None else row[0]

    def remove_copy(self, host: str, model_id: int) -> str | None:
        """Delete a registered model's copy on `host` and forget it; the path removed, or None.

        A copy being pulled is refused (cancel its task first), and so is one a live controller
        has loaded. On the local host the file is deleted here; on an SSH host a `remove` task
        has the host's agent delete it; a host no longer in the profile only loses its record.
        """
        model = registry.get(self._store, model_id)
        copy = None if model is None else model["hosts"].get(host)
        if model is None or copy is None:
            raise NotFoundError(f"model {model_id} has no copy on host {host}")
        what = f"{model['repo']}:{model['file']} on {host}"
        if copy["state"] == registry.PULLING:
            task = f" by task {copy['task_id']}" if copy["task_id"] is not None else ""
            raise StateError(f"{what} is being pulled{task}; cancel its pull first")
        holder = controller.current(self._store)
        if copy["loaded"] and holder is not None and holder.alive:
            raise StateError(f"{what} is loaded; it unloads after 5 idle minutes, retry then")
        kind = next((h.kind for h in self.profile.hosts if h.name == host), None)
        if kind == "ssh":  # the host's agent deletes it: a task, run when it is reachable
            pulls.remove(self._queue, host, model_id, copy["path"])
            return str(copy["path"])
        path = copy["path"] if kind == "local" else None
        if path is not None:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as exc:
                raise StateError(f"{what}: cannot delete {path}: {exc.strerror}") from None
        registry.forget_host_copy(self._store, host, model_id)
        return path


def read_need(target: HubFile | tuple[str, str | None], ctx: int) -> tuple[HubFile, fit.Need]:
    """Pin a hub alias's ref (or take a registered file) and read its header for the fit (as
    `fit.needs_for_files` does for one file): the file with its header's facts, which
    registering it keeps, and its need at `ctx`. The network only, no database, so any thread
    may call it."""
    from bitinglip.control.models import hub  # huggingface_hub: only for commands that need it

    file = hub.resolve(*target) if isinstance(target, tuple) else target
    header = gguf_meta.read_remote_header(file)
    need = fit.estimate(header, file.size, ctx)
    need = replace(need, file=file.name, quant=file.quant or need.quant)
    return replace(file, facts=gguf_meta.header_facts(header)), need


def with_facts(file: HubFile) -> HubFile:
    """`file` with the memory facts of its header (range reads of the header only), or as it
    is when the header cannot be read: the pull goes on, and placement sizes the model by its
    file size until a header is read."""
    try:
        header = gguf_meta.read_remote_header(file)
    except (InputError, HubError, NotFoundError) as exc:
        log.warning("%s: no header facts: %s", file.ref, exc)
        return file
    return replace(file, facts=gguf_meta.header_facts(header))
