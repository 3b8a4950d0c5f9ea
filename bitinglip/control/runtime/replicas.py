"""Replicas: a model with `[models.NAME] min_replicas = N` is kept loaded on N hosts.

Every REPLICAS_EVERY_S, for each such model: the hosts where it is loaded are its homes (those
loaded first, then by name, are its replicas); while fewer than N ready hosts hold a replica,
another home is chosen by placement's rules (`Placement.choose`: where it fits and has room,
pulled there first when no copy is), so a lost host's replicas are placed again elsewhere. A
replica host where the model is neither loaded nor busy is sent a `load` task pinned to it
(`keep_alive_s` -1: it stays), again after LOAD_AGAIN_S if it is still not loaded.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from bitinglip_agent.protocol import TaskKind

from bitinglip.config import Profile
from bitinglip.control.queue.intake import TaskSpec
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.host_models import Home, Host

if TYPE_CHECKING:
    from bitinglip.control.runtime.placement import Placement

log = logging.getLogger("bitinglip.control.runtime.dispatcher")

REPLICAS_EVERY_S = 1.0  # min_replicas is checked this often
LOAD_AGAIN_S = 30.0  # a replica's load is sent again after this when the model is not loaded


class Replicas:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.due_at = 0.0  # monotonic
        self._loads: dict[tuple[str, str], float] = {}  # (model, host) -> when a load was sent
        self.wanted = any(a.min_replicas > 0 for a in profile.models.values())

    def keep(
        self, placement: Placement, queue: TaskQueue, hosts: dict[str, Host], now: float
    ) -> None:
        """Choose, pull and load replicas where fewer than wanted are ready."""
        self.due_at = now + REPLICAS_EVERY_S
        for model, alias in self.profile.models.items():
            if alias.min_replicas > 0:
                ready = self._homes(placement, queue, model, alias.min_replicas, hosts, now)
                for name in ready:
                    self._load(queue, model, hosts[name], now)

    def _homes(
        self,
        placement: Placement,
        queue: TaskQueue,
        model: str,
        wanted: int,
        hosts: dict[str, Host],
        now: float,
    ) -> list[str]:
        """The model's replica hosts among the ready ones, new ones chosen as needed."""
        homes = placement.homes.setdefault(model, {})
        for host in hosts.values():
            if host.is_loaded(model) and host.name not in homes:
                homes[host.name] = Home(now)
        ready = sorted(
            (n for n in homes if n in hosts), key=lambda n: (not hosts[n].is_loaded(model), n)
        )[:wanted]
        for name, home in homes.items():
            if name in hosts:
                home.replica = name in ready
        while len(ready) < wanted:
            others = [h for h in hosts.values() if h.name not in homes]
            chosen, why = placement.choose(queue, model, others, now)
            if chosen is None:
                log.debug("model %s: %d of %d replicas: %s", model, len(ready), wanted, why)
                break
            if chosen.models.has(model):
                homes[chosen.name] = Home(now)
            else:
                placement.pull(queue, model, chosen, now)
            if chosen.name not in homes:  # the pull could not start
                break
            homes[chosen.name].replica = True
            ready.append(chosen.name)
        return ready

    def _load(self, queue: TaskQueue, model: str, host: Host, now: float) -> None:
        """A `load` task for `model` on `host`, unless it is loaded, busy or loading there."""
        if not host.models.has(model) or host.serves(model):
            return
        if now - self._loads.get((model, host.name), -math.inf) < LOAD_AGAIN_S:
            return
        self._loads[(model, host.name)] = now
        queue.submit(
            TaskSpec(kind=TaskKind.LOAD, model=model, host=host.name, payload={"keep_alive_s": -1})
        )
        log.info("model %s: loading a replica on %s", model, host.name)
