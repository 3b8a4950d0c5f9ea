"""Filling a host with work: which kinds its agent takes, how many of each at once, and the
`run` messages of the tasks claimed for it.

A host's kinds fall into three groups, each with slots of its own: light kinds (echo, many at a
time), pulls (a few downloads beside inference) and the rest, the model kinds (the host's
max_concurrency). Claims honour a task's host and labels, and take a model task only where its
model can be had: a ready copy in the registry, on the local host a PyPI-packaged alias
(assembled on first use), on an SSH host a file named ALIAS.gguf in its model dir (its `hello`
lists them).
"""

from __future__ import annotations

import time
from typing import Any

from bitinglip_agent.protocol import LIGHT_KINDS, PULL_KINDS

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases as models
from bitinglip.control.models import registry
from bitinglip.control.queue.tasks import Claim, TaskQueue
from bitinglip.control.runtime.host_agents import HostAgent
from bitinglip.control.transport.sessions import AgentSession
from bitinglip.errors import BitinglipError

LIGHT_SLOTS = 256
PULL_SLOTS = 2  # downloads at once per host, beside its inference slots

Copies = dict[str, tuple[int, str]]  # alias -> (model id, path) of a ready copy on a host


class Filler:
    """Claims work for one host at a time and sends it to the host's agent."""

    def __init__(self, profile: Profile, owner: str) -> None:
        self.profile = profile
        self.owner = owner

    def fill(self, queue: TaskQueue, agent: HostAgent) -> bool:
        """Claim what the host has free slots for and send it; True when runs were sent."""
        session, host = agent.session, agent.host
        assert session is not None and session.hello is not None
        copies = self._copies(queue, host)
        have = self._models_there(host, session.hello, copies)
        runs: list[tuple[int, int, str, dict[str, Any]]] = []
        for kinds, free in free_slots(session, host):
            claims = queue.claim(
                self.owner,
                limit=free,
                kinds=kinds,
                host=host.name,
                labels=dict(host.labels),
                models=have,
                any_path=host.kind == "local",
            )
            for claim in claims:
                task = self._task(queue, claim, agent, copies)
                if task is not None:
                    runs.append((claim.task_id, claim.token, claim.kind, task))
        if not runs:
            return False
        try:
            session.run(runs)
        except ConnectionError as exc:  # it never reached the agent: no attempt is spent
            queue.release([(task_id, token) for task_id, token, _, _ in runs], str(exc))
        return True

    def _copies(self, queue: TaskQueue, host: HostConfig) -> Copies:
        """Aliases of the profile with a ready copy on `host`: alias -> (model id, path)."""
        rows = queue.store.conn.execute(
            'SELECT m.id, m.repo, m."commit", m.file, h.path FROM host_models h'
            " JOIN models m ON m.id = h.model_id WHERE h.host = ? AND h.state = 'ready'",
            (host.name,),
        ).fetchall()
        found: Copies = {}
        for model_id, repo, commit, file, path in rows:
            alias = registry.alias_of(self.profile, repo, commit, file)
            if alias is not None and alias not in found:
                found[alias] = (model_id, path)
        return found

    def _models_there(self, host: HostConfig, hello: dict[str, Any], copies: Copies) -> set[str]:
        """The aliases whose model the host can run."""
        have = set(copies)  # models pulled there (the registry), by alias
        if host.kind == "local":  # this machine assembles PyPI-packaged aliases on first use
            have |= {a for a, m in self.profile.models.items() if m.source.startswith("pypi:")}
        else:  # and an SSH host has the files in its model dir named ALIAS.gguf
            have |= set(hello.get("models", []))
        return have

    def _task(
        self, queue: TaskQueue, claim: Claim, agent: HostAgent, copies: Copies
    ) -> dict[str, Any] | None:
        """The `run` message's task, or None when its model cannot be had (task failed)."""
        task: dict[str, Any] = {"id": claim.task_id, "kind": claim.kind, "payload": claim.payload}
        hello = agent.session.hello if agent.session is not None else None
        if claim.model is not None and claim.model in copies:
            model_id, path = copies[claim.model]
            task["model"] = {"name": claim.model, "path": path}
            registry.touch(queue.store, agent.host.name, model_id, time.time())
        elif claim.model is not None and agent.host.kind == "ssh" and hello is not None:
            path = f"{hello.get('model_dir')}/{claim.model}.gguf"
            task["model"] = {"name": claim.model, "path": path}
        elif claim.model is not None:
            try:
                task["model"] = models.ensure_local(self.profile, claim.model).to_task()
            except BitinglipError as exc:
                queue.fail(
                    claim.task_id, claim.token, str(exc), retryable=False, kind="unknown_model"
                )
                return None
        return task


def free_slots(session: AgentSession, host: HostConfig) -> list[tuple[list[str], int]]:
    """The kinds the host's agent runs, in groups, each with its free slots (full ones left out):
    light kinds (LIGHT_SLOTS), pulls (PULL_SLOTS), the rest (the host's max_concurrency)."""
    kinds = session.kinds()
    light = [k for k in kinds if k in LIGHT_KINDS]
    pulls = [k for k in kinds if k in PULL_KINDS]
    heavy = [k for k in kinds if k not in LIGHT_KINDS and k not in PULL_KINDS]
    in_light = sum(1 for f in session.inflight.values() if f.kind in LIGHT_KINDS)
    in_pull = sum(1 for f in session.inflight.values() if f.kind in PULL_KINDS)
    in_heavy = len(session.inflight) - in_light - in_pull
    groups = (
        (light, LIGHT_SLOTS - in_light),
        (pulls, PULL_SLOTS - in_pull),
        (heavy, host.max_concurrency - in_heavy),
    )
    return [(group, free) for group, free in groups if group and free > 0]
