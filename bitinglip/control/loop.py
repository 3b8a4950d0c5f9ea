"""The controller's loop: holds the controller lease, runs the reaper, checkpoints the WAL, and
executes the built-in `echo` task kind in process.

It sleeps on its doorbell until new work is committed, a retry comes due, a lease needs renewing
or the reaper is due; it never polls the queue in a tight loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bitinglip.config import Profile
from bitinglip.control import controller
from bitinglip.control.db import Store, open_store
from bitinglip.control.doorbell import Doorbell
from bitinglip.control.tasks import TaskQueue

log = logging.getLogger(__name__)

ECHO_BATCH = 512
CHECKPOINT_EVERY_S = 1.0


class ControlLoop:
    """Run with `run()` in one thread; `stop()` from any thread."""

    def __init__(self, profile: Profile, owner: str | None = None) -> None:
        self.profile = profile
        self.owner = owner or controller.new_owner_id()
        self.doorbell = Doorbell(profile.db_path)
        self.finished = threading.Condition()  # notified after results are committed
        self.is_controller = threading.Event()
        self._stop = threading.Event()
        local = next((h for h in profile.hosts if h.kind == "local"), None)
        self.host = local.name if local else None
        self.labels = dict(local.labels) if local else {}

    def stop(self) -> None:
        self._stop.set()
        self.doorbell.ring()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, on_state: Callable[[str], None] | None = None) -> None:
        """Become the controller (waiting as an observer while another holds it), then serve.

        Returns after `stop()`; the controller lease is released on the way out.
        """
        try:
            store = open_store(self.profile.db_path, self.profile.durability)
        except BaseException:
            self.doorbell.close()
            raise
        queue = TaskQueue(store, self.profile.queue)
        try:
            self._serve(store, queue, on_state or (lambda _s: None))
        finally:
            if self.is_controller.is_set():
                controller.release(store, self.owner)
            self.doorbell.close()
            store.close()

    def _serve(self, store: Store, queue: TaskQueue, on_state: Callable[[str], None]) -> None:
        lease_s = self.profile.controller_lease_s
        reaper_s = self.profile.queue.reaper_interval_s
        renew_at = reap_at = checkpoint_at = 0.0
        written = (-1, -1)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= renew_at:
                self._hold_lease(store, lease_s, on_state)
                renew_at = now + lease_s / 3
            if not self.is_controller.is_set():
                self._stop.wait(min(lease_s / 3, 0.5))
                continue
            if now >= reap_at:
                queue.reap()
                reap_at = now + reaper_s
            if store.durability == "normal" and now >= checkpoint_at:
                # data_version moves on other connections' commits, total_changes on ours.
                now_written = (store.data_version(), store.conn.total_changes)
                if now_written != written:
                    store.checkpoint()
                    written = now_written
                checkpoint_at = now + CHECKPOINT_EVERY_S
            if self._run_echo(queue):
                continue
            wake = min(renew_at, reap_at) - time.monotonic()
            due = queue.next_due(("echo",))
            if due is not None:
                wake = min(wake, due - time.time())
            self.doorbell.wait(max(wake, 0.0005))

    def _hold_lease(self, store: Store, lease_s: float, on_state: Callable[[str], None]) -> None:
        held = controller.try_acquire(store, self.owner, lease_s, self.doorbell.name)
        if held and not self.is_controller.is_set():
            self.is_controller.set()
            on_state("controller")
        elif not held and self.is_controller.is_set():
            self.is_controller.clear()
            log.warning("lost the controller lease; observing")
            on_state("observer")

    def _run_echo(self, queue: TaskQueue) -> int:
        """Echo: the result is the payload. Claims and completes a batch in two commits."""
        claims = queue.claim(
            self.owner, limit=ECHO_BATCH, kinds=("echo",), host=self.host, labels=self.labels
        )
        if not claims:
            return 0
        queue.complete_many([(c.task_id, c.token, c.payload) for c in claims])
        with self.finished:
            self.finished.notify_all()
        return len(claims)
