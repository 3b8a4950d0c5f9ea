"""Placement: which host takes each model's queued work (`[serving] placement = "model"`).

Once per dispatcher step, before any host claims, placement turns the queued demand for each
model (`queue.waiting.demand`: model work and loads, counted per model, host pin and labels, one
indexed query) into the set of models each host may claim this step; the claim stays one indexed
query per host (`TaskQueue.claim(models=...)`). A model has *homes*: the hosts that serve it.
For a model with no home that can take a group of its tasks (within their host and labels), a
home is chosen, in this order of preference:

1. a host where the model is loaded (the agent's telemetry);
2. a host with a ready copy and room to load it: fewer than its `max_loaded_models` models with
   work (an idle one the agent evicts, least recently used first), and the model's estimate
   (weights and the KV cache of n_ctx x parallel tokens, as `models fit` counts: model_sizes.py)
   within its memory budget, or the free GPU memory (RAM on a host without GPUs) its telemetry
   reports, less what models placed there and not loaded yet need;
   among those, the host with the fewest models, then the most free memory;
3. a host where it fits with no copy, when the model is registered: pulled there first (one
   pull, whatever the number of requests; `pulls.plan` joins one in progress);
4. none: the tasks stay queued, and say why.

**Stickiness**: a model gets another home only when its backlog (queued tasks beyond the free
slots of its homes) exceeds `[serving] scale_out_queue_depth` per home with the model loaded, or
when a home is lost (a host not ready for LOST_AFTER_S). A home with no work, nothing running and
the model no longer loaded there is forgotten after HOME_IDLE_S. Until every host has attached
once, or failed to (or ATTACH_GRACE_S has passed), no home is chosen, so the first host to attach
does not get every model.

**Replicas**: a model with `min_replicas = N` keeps N homes, each sent a `load` task (pinned to
its host) while the model is not loaded there; a lost home is replaced by the same rules.

**Wait reasons**: a queued group that cannot run now says why in `tasks.wait_reason`
(`waiting: pulling to gpu2 (43%)`, `waiting: loading on gpu1`, `fits nowhere: needs 9.1 GiB,
largest free 7.8 GiB`), written after the step's claims, in one transaction, and only where a
group's reason changed or it has new tasks; `immediate` tasks fail with an unplaceable reason.

`placement = "rotation"`, model-blind (hosts in turn claim any model they have), is kept for
comparison. Pulls placement starts: pulling.py."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import MODEL_KINDS, TaskKind

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases, registry
from bitinglip.control.queue import waiting
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime import host_models, pulling
from bitinglip.control.runtime.host_agents import HostAgent
from bitinglip.control.runtime.host_models import Home, Host, HostModels, Seen
from bitinglip.control.runtime.model_sizes import ModelSizes
from bitinglip.control.runtime.replicas import Replicas

log = logging.getLogger("bitinglip.control.runtime.dispatcher")

GIB = 1 << 30
LOST_AFTER_S = 5.0  # a host not ready this long is lost: its models are placed elsewhere
ATTACH_GRACE_S = 10.0  # homes wait this long at most for every host to attach once
HOME_IDLE_S = 10.0  # a home with no work and the model not loaded is forgotten after this
WAIT_TICK_S = 0.5  # while something waits on placement, the dispatcher looks again this often
# What placement places: model work, and loads (a load with no host goes where its model would).
PLACED_KINDS = (*MODEL_KINDS, TaskKind.LOAD)
NOTHING_RUNNING: Counter[str] = Counter()  # read only: a host with no model runs in flight
COPIES_TTL_S = 1.0  # a host's ready copies are read again after this (sooner after a pull)


@dataclass
class HostPlan:
    """What one host may claim this step: `claim` the models placement gives it (None in
    rotation: every model it has, `models.names()`), with its models and free GPU memory."""

    models: HostModels
    claim: frozenset[str] | None
    gpu_free: int | None


class Placement:
    """The dispatcher's placement of model work on hosts; one per dispatcher (its thread)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.rotation = profile.serving.placement == "rotation"
        self.depth = profile.serving.scale_out_queue_depth
        self.homes: dict[str, dict[str, Home]] = {}  # model -> host -> home
        self.sent: dict[str, dict[str, str]] = {}  # host -> run id -> model
        self.due_at = math.inf
        self._started = time.monotonic()
        self._seen: set[str] = set()  # hosts attached (or failed to) at least once
        self._settled_yet = False
        self._down: dict[str, float] = {}  # host -> since when it is not ready
        self._demand: Counter[str] = Counter()
        self._groups: list[waiting.Demand] = []
        self._reasons: dict[tuple[str, str | None, str | None], str | None] = {}
        self._written = waiting.Written()
        self.sizes = ModelSizes(profile)
        self.replicas = Replicas(profile)
        self._local_dir = str(aliases.models_dir(profile))
        self._models: dict[str, tuple[dict[str, Any], float, HostModels]] = {}
        self._telemetry: dict[str, tuple[dict[str, Any] | None, Seen]] = {}

    # -- the step --------------------------------------------------------------------------

    def plan(
        self,
        queue: TaskQueue,
        agents: Sequence[HostAgent],
        ok: Callable[[str], bool],
        now: float,
    ) -> dict[str, HostPlan]:
        """Each ready host's plan for this step (monotonic `now`)."""
        hosts = self._hosts(queue, agents, ok, now)
        if self.rotation:
            return {n: HostPlan(h.models, None, h.gpu_free) for n, h in hosts.items()}
        self._lost(now)
        self._groups = waiting.demand(queue.store, PLACED_KINDS)
        if not self._groups and not self._placed() and not self.replicas.wanted:
            self._demand, self._reasons = Counter(), {}  # nothing to place: claims skip models
            self.due_at = math.inf if not self._down and self._settled(now) else now + WAIT_TICK_S
            return {n: HostPlan(h.models, frozenset(), h.gpu_free) for n, h in hosts.items()}
        self._demand = Counter()
        for group in self._groups:
            self._demand[group.model] += group.queued
        self._reasons = {}
        claim: dict[str, set[str]] = {name: set() for name in hosts}
        for group in sorted(self._groups, key=lambda g: (g.host is not None, g.labels or "")):
            self._place(queue, group, hosts, claim, now)
        if self.replicas.wanted and now >= self.replicas.due_at:
            self.replicas.keep(self, queue, hosts, now)
        for model, homes in self.homes.items():  # every home claims its model
            for name in homes:
                if name in claim and hosts[name].models.has(model):
                    claim[name].add(model)
        self._forget_idle(hosts, now)
        waits = any(r is not None for r in self._reasons.values()) or bool(self._down)
        unsettled = not self._settled(now)
        self.due_at = now + WAIT_TICK_S if waits or unsettled else math.inf
        if self.replicas.wanted:
            self.due_at = min(self.due_at, self.replicas.due_at)
        return {n: HostPlan(h.models, frozenset(claim[n]), h.gpu_free) for n, h in hosts.items()}

    def _placed(self) -> bool:
        """Whether any model has a home (homes of models with no work are kept a while)."""
        return any(self.homes.values())

    def sent_runs(self, host: str, runs: Iterable[tuple[str, str | None]]) -> None:
        """Runs sent to `host` (run id, model): counted as running there while in flight."""
        mine = self.sent.setdefault(host, {})
        for run_id, model in runs:
            if model is not None:
                mine[run_id] = model

    def write_reasons(self, queue: TaskQueue) -> None:
        """Store this step's wait reasons (after its claims), where they changed."""
        self._written.write(queue.store, self._groups, self._reasons, queue.clock())

    # -- hosts -----------------------------------------------------------------------------

    def _hosts(
        self, queue: TaskQueue, agents: Sequence[HostAgent], ok: Callable[[str], bool], now: float
    ) -> dict[str, Host]:
        """The ready hosts (their agent attached, its heartbeat good); the others are down."""
        hosts: dict[str, Host] = {}
        for agent in agents:
            session, name = agent.session, agent.host.name
            if session is None or not session.ready or session.hello is None or not ok(name):
                self._down.setdefault(name, now)
                transport = None if session is None else session.transport
                error: str = getattr(transport, "last_error", "")
                if agent.backoff > 0 or error:
                    self._seen.add(name)  # its first try failed: nothing to wait for
                continue
            self._down.pop(name, None)
            self._seen.add(name)
            sent = self.sent.setdefault(name, {})
            for run_id in [r for r in sent if r not in session.inflight]:
                del sent[run_id]
            hosts[name] = Host.of(
                agent.host,
                session,
                self._models_of(queue, agent.host, session.hello, now),
                self._seen_of(name, session.telemetry),
                Counter(sent.values()) if sent else NOTHING_RUNNING,
            )
        return hosts

    def _models_of(
        self, queue: TaskQueue, host: HostConfig, hello: dict[str, Any], now: float
    ) -> HostModels:
        """The host's models, read again after COPIES_TTL_S, a new hello, or `copies_changed`."""
        kept = self._models.get(host.name)
        if kept is not None and kept[0] is hello and now < kept[1]:
            return kept[2]
        models = host_models.read(queue.store, self.profile, host, hello, self._local_dir)
        self._models[host.name] = (hello, now + COPIES_TTL_S, models)
        return models

    def copies_changed(self) -> None:
        """A pull or a removal ended: every host's models are read again."""
        self._models.clear()

    def _seen_of(self, host: str, telemetry: dict[str, Any] | None) -> Seen:
        """What the host's latest telemetry says, worked out once per snapshot."""
        kept = self._telemetry.get(host)
        if kept is None or kept[0] is not telemetry:
            kept = self._telemetry[host] = (telemetry, Seen.of(host, telemetry))
        return kept[1]

    def _lost(self, now: float) -> None:
        """Homes on hosts not ready for LOST_AFTER_S are dropped (placed again elsewhere)."""
        lost = {n for n, since in self._down.items() if now - since >= LOST_AFTER_S}
        for model, homes in self.homes.items():
            for name in lost & set(homes):
                del homes[name]
                log.warning("host %s lost: model %s is placed elsewhere", name, model)

    def _settled(self, now: float) -> bool:
        if not self._settled_yet:
            every = {a.name for a in self.profile.hosts}
            self._settled_yet = every <= self._seen or now - self._started >= ATTACH_GRACE_S
        return self._settled_yet

    # -- one group of a model's tasks ------------------------------------------------------

    def _place(
        self,
        queue: TaskQueue,
        group: waiting.Demand,
        hosts: dict[str, Host],
        claim: dict[str, set[str]],
        now: float,
    ) -> None:
        model = group.model
        homes = self.homes.setdefault(model, {})
        for host in hosts.values():  # where it is loaded already, it is at home
            if host.name not in homes and host.is_loaded(model):
                homes[host.name] = Home(now)
        eligible = [h for h in hosts.values() if h.admits(group)]
        serving = [h for h in eligible if h.name in homes and h.models.has(model)]
        if not serving:
            in_pull = [h for h in eligible if h.name in homes and homes[h.name].pulling]
            if in_pull:
                self._reasons[group.key] = self._pulling(queue, model, in_pull[0])
                return
            chosen, why = self.choose(queue, model, eligible, now)
            if chosen is None:
                self._reasons[group.key] = why
                return
            if not chosen.models.has(model):
                self._reasons[group.key] = self.pull(queue, model, chosen, now)
                return
            homes[chosen.name] = Home(now)
            serving = [chosen]
        elif group.host is None:
            self._scale_out(queue, group, eligible, serving, now)
        for host in serving:
            claim[host.name].add(model)
            homes[host.name].pulling = None  # there now
        if any(h.is_loaded(model) for h in serving):
            self._reasons[group.key] = None
        else:
            self._reasons[group.key] = "waiting: loading on " + ", ".join(h.name for h in serving)

    def _scale_out(
        self,
        queue: TaskQueue,
        group: waiting.Demand,
        eligible: list[Host],
        serving: list[Host],
        now: float,
    ) -> None:
        """One more home for the group's model when its backlog per home with the model loaded
        exceeds the scale-out depth (and every home has it loaded: one new home at a time). Runs
        beyond the model's `parallel` on a home wait inside its agent: they are backlog too."""
        model, homes = group.model, self.homes[group.model]
        par = getattr(self.profile.models.get(model), "parallel", 1)
        over = [h.running[model] - par for h in serving]  # > 0: waiting there; < 0: room
        backlog = group.queued + sum(
            max(o, 0) - min(h.free_slots, max(-o, 0)) for h, o in zip(serving, over, strict=True)
        )
        if backlog <= self.depth * len(serving) or not all(h.is_loaded(model) for h in serving):
            return
        others = [h for h in eligible if h.name not in homes]
        chosen, _ = self.choose(queue, model, others, now)
        if chosen is not None and chosen.models.has(model):
            homes[chosen.name] = Home(now)
            serving.append(chosen)
            log.info("model %s: scaled out to %s (%d queued)", model, chosen.name, group.queued)

    def choose(
        self, queue: TaskQueue, model: str, eligible: list[Host], now: float
    ) -> tuple[Host | None, str]:
        """A new home for `model` among `eligible` (see the module docstring), or None and why."""
        if not self._settled(now):
            return None, "waiting: hosts are attaching"
        if not eligible:
            return None, "waiting: no connected host may run it"
        row = self.sizes.row(queue.store, model)
        need = self.sizes.need(model)
        options: list[tuple[tuple[Any, ...], Host]] = []
        largest, full = -1, []
        for host in eligible:
            has = host.models.has(model)
            if not has and not pulling.pullable(row, host.name):
                continue
            avail = self._available(host, model)
            if need is not None and avail is not None and need > avail:
                largest = max(largest, avail)
                continue
            busy, placed = self._occupancy(host, model)
            cap = host.config.max_loaded_models
            if busy >= cap:
                full.append(host.name)
                continue
            evicts = placed >= cap
            in_pull = pulling.copy_state(row, host.name) == registry.PULLING
            first = (not host.is_loaded(model), not has, not in_pull, evicts)
            options.append(((*first, busy, placed, -(avail or 0), host.name), host))
        if options:
            return min(options, key=lambda o: o[0])[1], ""
        if full:
            return None, f"waiting: no room (max_loaded_models busy) on {', '.join(full)}"
        if largest >= 0 and need is not None:
            return None, (
                f"fits nowhere: needs {need / GIB:.1f} GiB, largest free {largest / GIB:.1f} GiB"
            )
        return None, f"waiting: no host has {model}; pull it with `bitinglip models pull`"

    def _occupancy(self, host: Host, model: str) -> tuple[int, int]:
        """(models placed on `host` with work or replicas, models placed or loaded there),
        `model` not counted."""
        placed = {m for m, homes in self.homes.items() if host.name in homes and m != model}
        busy = sum(
            1
            for m in placed
            if self._demand[m] or host.running[m] or self.homes[m][host.name].replica
        )
        return busy, max(
            len(placed), len(host.loaded - frozenset(filter(None, [host.models.path(model)])))
        )

    def _available(self, host: Host, model: str) -> int | None:
        """Memory a new model may use on `host`: its budget less what its busy models need,
        else its free memory (telemetry) less what models placed and not loaded yet need."""
        budget = host.config.memory_budget_gib
        others = [m for m, homes in self.homes.items() if host.name in homes and m != model]
        if budget is not None:
            held = [m for m in others if self._demand[m] or host.serves(m)]
            return int(budget * GIB) - sum((self.sizes.need(m) or 0) for m in held)
        if host.mem_free is None:
            return None
        pending = [m for m in others if not host.is_loaded(m)]
        return host.mem_free - sum((self.sizes.need(m) or 0) for m in pending)

    # -- pulls -----------------------------------------------------------------------------

    def pull(self, queue: TaskQueue, model: str, host: Host, now: float) -> str:
        ticket, reason = pulling.start(queue, self.sizes, model, host.config)
        if ticket is not None:
            self.homes[model][host.name] = Home(now, pulling=ticket)
        return reason

    def _pulling(self, queue: TaskQueue, model: str, host: Host) -> str:
        ended, reason = pulling.status(queue, self.homes[model][host.name].pulling, host.name)
        if ended:  # it ended without a copy: placed again
            del self.homes[model][host.name]
            self.sizes.forget(model)
        return reason

    def _forget_idle(self, hosts: dict[str, Host], now: float) -> None:
        for model, homes in self.homes.items():
            if self._demand[model]:
                continue
            for name, home in list(homes.items()):
                host = hosts.get(name)
                if home.replica or home.pulling is not None or now - home.since < HOME_IDLE_S:
                    continue
                if host is not None and host.serves(model):
                    continue
                del homes[name]
