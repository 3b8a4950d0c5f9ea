"""The controller's loop: holds the controller lease, runs the reaper, checkpoints the WAL, and
dispatches work to the hosts' agents (local and SSH), or, for a profile with no hosts, runs
`echo` in process.

It sleeps on its doorbell until new work is committed, an agent says something, a retry comes
due, a lease needs renewing or the reaper is due; it never polls the queue in a tight loop.
On `stop()` it stops taking work, gives running tasks `shutdown_grace_s` to finish, and releases
what is left back to the queue without an attempt penalty.

A step that fails is logged and retried after a backoff (faults.py); when the loop cannot
go on, `run()` raises the reason (and `failure` keeps it).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitinglip_agent.protocol import LIGHT_KINDS, MODEL_KINDS, SERVE_KINDS, TaskKind

from bitinglip.config import Profile
from bitinglip.control.queue.retention import RetentionTurns
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime import controller
from bitinglip.control.runtime.dispatcher import Dispatcher
from bitinglip.control.runtime.doorbell import Doorbell
from bitinglip.control.runtime.faults import Faults
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import BitinglipError, StoreError

log = logging.getLogger(__name__)

ECHO_BATCH = 512
CHECKPOINT_EVERY_S = 1.0


@dataclass
class _Timers:
    renew_at: float = 0.0
    reap_at: float = 0.0
    checkpoint_at: float = 0.0
    prune_at: float = 0.0
    written: tuple[int, int] = (-1, -1)


class ControlLoop:
    """Run with `run()` in one thread; `stop()` from any thread (or a signal handler)."""

    def __init__(self, profile: Profile, owner: str | None = None) -> None:
        self.profile = profile
        self.owner = owner or controller.new_owner_id()
        self.doorbell = Doorbell(profile.db_path)
        self.finished = threading.Condition()  # notified after results or output are committed
        self.commits = 0  # counts those notifications, so a waiter never misses one
        self.is_controller = threading.Event()
        self._stop = threading.Event()
        self.faults = Faults(profile.give_up_after_s)
        self.failure: BitinglipError | None = None  # why `run()` gave up, if it did
        self.ended = threading.Event()  # set once `run()` has returned or raised
        self.dispatcher: Dispatcher | None = None
        self.retention: RetentionTurns | None = None  # pruning as `[retention]` says
        if profile.hosts:
            self.dispatcher = Dispatcher(profile, self.owner, self.doorbell.ring)

    def stop(self) -> None:
        self._stop.set()
        self.doorbell.ring()

    def run(self, on_state: Callable[[str], None] | None = None) -> None:
        """Become the controller (waiting as an observer while another holds it), then serve.

        Returns after `stop()`; the controller lease is released on the way out.
        """
        try:
            store = open_store(self.profile.db_path, self.profile.durability)
        except BaseException:
            self.doorbell.close()
            self.ended.set()
            raise
        queue = TaskQueue(store, self.profile.queue)
        try:
            self._serve(store, queue, on_state or (lambda _s: None))
            if self.is_controller.is_set():
                self._drain(store, queue)
        except BitinglipError as exc:
            self.failure = exc
            raise
        finally:
            self._let_go(store, queue)
            self.doorbell.close()
            store.close()
            self.ended.set()

    def _let_go(self, store: Store, queue: TaskQueue) -> None:
        """Running tasks back to the queue, agents stopped, the lease released. After a failure
        the database may refuse: then leases expire on their own, and the failure is what
        `run()` raises."""
        if isinstance(self.failure, StoreError):  # each write would wait out the failure again
            log.warning("stopping without releasing tasks or the lease: they expire")
            if self.dispatcher is not None:
                self.dispatcher.stop_agents()
            return
        try:
            if self.dispatcher is not None:
                self.dispatcher.release_all(queue, "released: the controller stopped")
            if self.is_controller.is_set():
                controller.release(store, self.owner)
        except (BitinglipError, sqlite3.Error) as exc:
            if self.failure is None:
                raise
            log.warning("stopping: tasks and lease not released (%s); they expire", exc)

    def _serve(self, store: Store, queue: TaskQueue, on_state: Callable[[str], None]) -> None:
        timers = _Timers()
        self.retention = RetentionTurns(store, self.profile.retention)
        while not self._stop.is_set():
            try:
                self._turn(store, queue, on_state, timers)
            except Exception as exc:  # noqa: BLE001 - the loop boundary: log, back off, maybe stop
                self._stop.wait(self.faults.failed(exc))
                continue
            self.faults.ok()

    def _turn(
        self,
        store: Store,
        queue: TaskQueue,
        on_state: Callable[[str], None],
        timers: _Timers,
    ) -> None:
        lease_s = self.profile.controller_lease_s
        now = time.monotonic()
        if now >= timers.renew_at:
            self._hold_lease(store, queue, lease_s, on_state)
            timers.renew_at = now + lease_s / 3
        if not self.is_controller.is_set():
            self._stop.wait(min(lease_s / 3, 0.5))
            return
        if store.durability == "normal" and now >= timers.checkpoint_at:
            # data_version moves on other connections' commits, total_changes on ours.
            now_written = (store.data_version(), store.conn.total_changes)
            if now_written != timers.written:
                store.checkpoint()
                timers.written = now_written
            timers.checkpoint_at = now + CHECKPOINT_EVERY_S
        busy = self._work(queue)
        if now >= timers.reap_at:  # after the work: results received in time are stored first
            queue.reap()
            timers.reap_at = now + self.profile.queue.reaper_interval_s
        if not busy and now >= timers.prune_at and self.retention is not None:
            timers.prune_at = now + self.retention.turn()  # a batch, never before a claim
        if not busy:
            self._sleep(queue, min(timers.renew_at, timers.reap_at, timers.prune_at))

    def _work(self, queue: TaskQueue) -> bool:
        if self.dispatcher is None:
            return self._run_echo(queue) > 0
        changes = queue.store.conn.total_changes
        busy = self.dispatcher.step(queue)
        if queue.store.conn.total_changes != changes:
            self._notify()  # waiters in this process re-read at once
        return busy

    def _sleep(self, queue: TaskQueue, timer_at: float) -> None:
        wake = timer_at - time.monotonic()
        kinds = (
            (TaskKind.ECHO,)
            if self.dispatcher is None
            else (*LIGHT_KINDS, *MODEL_KINDS, *SERVE_KINDS)
        )
        due = queue.next_due(kinds)
        if due is not None:
            wake = min(wake, due - time.time())
        if self.dispatcher is not None:
            wake = min(wake, self.dispatcher.next_wake())
        self.doorbell.wait(max(wake, 0.0005))

    def _drain(self, store: Store, queue: TaskQueue) -> None:
        """After stop: no new claims; running tasks get the grace period to finish."""
        dispatcher = self.dispatcher
        if dispatcher is None or not dispatcher.inflight:
            return
        dispatcher.accepting = False
        deadline = time.monotonic() + self.profile.shutdown_grace_s
        log.info(
            "waiting up to %.0fs for %d running tasks",
            self.profile.shutdown_grace_s,
            dispatcher.inflight,
        )
        while dispatcher.inflight and time.monotonic() < deadline:
            if not self._work(queue):
                self.doorbell.wait(min(deadline - time.monotonic(), dispatcher.next_wake()))
        del store

    def _notify(self) -> None:
        with self.finished:
            self.commits += 1
            self.finished.notify_all()

    def _hold_lease(
        self, store: Store, queue: TaskQueue, lease_s: float, on_state: Callable[[str], None]
    ) -> None:
        held = controller.try_acquire(store, self.owner, lease_s, self.doorbell.name)
        if held and not self.is_controller.is_set():
            self.is_controller.set()
            on_state("controller")
        elif not held and self.is_controller.is_set():
            self.is_controller.clear()
            log.warning("lost the controller lease; observing")
            if self.dispatcher is not None:
                self.dispatcher.release_all(queue, "released: the controller lost its lease")
            on_state("observer")

    def _run_echo(self, queue: TaskQueue) -> int:
        """Echo in process: the result is the payload. A batch in two commits."""
        claims = queue.claim(self.owner, limit=ECHO_BATCH, kinds=(TaskKind.ECHO,))
        if not claims:
            return 0
        queue.complete_many([(c.task_id, c.token, c.payload) for c in claims])
        self._notify()
        return len(claims)
