"""Crash: kill -9 the control plane (and a runner holding leases) mid-work, restart, check.

Each seed runs a fleet over a fresh database: `bitinglip up` (the real controller loop, which
runs echo tasks in process: the profile has no local host, so it starts no agent), a feeder that
submits 1,000 echo tasks in transactions of ten, and a fake runner serving host "b" (every
twentieth task is pinned there; the controller does not serve "b") that holds leases while it
works. At a seeded random moment inside the feeding window they get SIGKILL in a seeded order;
for about a third of the seeds the runner survives and keeps heartbeating while a new controller
takes over. Then:

- right after the kill: the database is sound and the queue's invariants hold (see
  `harness.queue_problems`): no id missing, every acked submission present, one valid state per
  task, no terminal task moved back, events that chain and agree with fencing token and attempt;
- after the restart: every lease the killed processes held is requeued by the reaper within
  lease TTL + reaper interval of the later of its expiry and the new controller's start; every
  running task holds a live lease; a surviving runner never loses a lease it kept renewing;
- the restarted fleet finishes the work: all 1,000 tasks succeed, each once, and every pinned
  task ran on host "b".
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from bitinglip.control.queue.tasks import TERMINAL
from bitinglip.control.store.db import Store, open_store

from .harness import Child, Row, events, queue_problems, rows
from .roles import RUNNER_HOST, crash_spec

TOTAL = 1000
SEEDS = 20
LEASE_TTL_S = 1.0
REAPER_S = 0.2
SLACK_S = 0.6  # scheduling delay on a loaded 2-core machine
FEED_WINDOW_S = 0.5  # about how long the feeder takes; kills land uniformly inside it
PROFILE = f"""\
durability = "{{durability}}"

[controller]
lease_s = 1.0

[queue]
lease_ttl_s = {LEASE_TTL_S}
reaper_interval_s = {REAPER_S}
max_attempts = 10
retry_backoff_s = 0.05
retry_backoff_max_s = 0.2

# The controller runs its share through this machine's agent; tasks pinned to the SSH host
# are the external runner's (nothing listens at its address: the controller's attempts to
# reach it are refused at once and backed off).
[[hosts]]
name = "here"
kind = "local"

[[hosts]]
name = "{RUNNER_HOST}"
kind = "ssh"
address = "127.0.0.1"
port = 9
"""


class Lease(NamedTuple):
    owner: str | None
    token: int
    expires_at: float | None


class Fleet:
    """A controller (`bitinglip up`), a feeder and a fake runner (a new one unless given)."""

    def __init__(
        self, profile: Path, data_dir: Path, seed: int, runner: Child | None = None
    ) -> None:
        where = ["--profile", str(profile), "--data-dir", str(data_dir)]
        self.controller = Child.start(
            "controller", [sys.executable, "-m", "bitinglip", *where, "up"]
        )
        self.feeder = Child.role("feeder", "feeder", str(profile), str(data_dir))
        self.runner = runner or Child.role(
            "runner", "runner", str(profile), str(data_dir), "--seed", str(seed)
        )
        self.children = (self.controller, self.feeder, self.runner)

    def wait_ready(self) -> float:
        """Wait until all three are at work; returns the time the controller took the lease."""
        self.controller.wait_for(lambda c: c.has_err(": controller of "), 20)
        up = time.time()
        self.feeder.wait_for(lambda c: c.has_out("ready"), 20)
        self.runner.wait_for(lambda c: c.has_out("ready"), 20)
        return up

    def runner_owner(self) -> str:
        return next(ln.split()[1] for ln in self.runner.out_lines() if ln.startswith("ready "))

    def check_alive(self) -> None:
        """Only the feeder may have ended (when it finished), and only with status 0."""
        for child in self.children:
            rc = child.proc.poll()
            if rc is not None and (child is not self.feeder or rc != 0):
                raise AssertionError(f"{child.name} exited ({rc})\n{self.describe()}")

    def kill(self, rng: random.Random, spare: Child | None = None) -> None:
        for child in rng.sample(self.children, len(self.children)):
            if child is not spare:
                child.kill()

    def acked(self) -> dict[int, int]:
        """Submission index -> task id, for every submission the feeder saw committed."""
        acks = (line.split() for line in self.feeder.out_lines() if line.startswith("ack "))
        return {int(index): int(task_id) for _, index, task_id in acks}

    def describe(self) -> str:
        return "\n".join(child.describe() for child in self.children)


class Watcher:
    """Polls the database; remembers the first terminal state seen for every task and notes
    every task that later shows another state."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.terminal: dict[int, str] = {}
        self.problems: list[str] = []

    def poll(self) -> None:
        with self.store.read() as conn:
            now = dict(conn.execute("SELECT id, state FROM tasks"))
        for task_id, seen in self.terminal.items():
            if now.get(task_id) != seen:
                self.problems.append(f"task {task_id}: was {seen}, then {now.get(task_id)}")
        for task_id, state in now.items():
            if state in TERMINAL:
                self.terminal.setdefault(task_id, state)

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
        self.poll()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEEDS))
def test_kill_9_mid_work_loses_nothing_and_a_restart_finishes_it(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    durability = "full" if seed % 4 == 3 else "normal"
    profile = tmp_path / "chaos.toml"
    profile.write_text(PROFILE.format(durability=durability))
    data_dir = tmp_path / "data"
    store = open_store(data_dir / "state.db", durability)
    watcher = Watcher(store)
    first = Fleet(profile, data_dir, seed)
    spare = first.runner if rng.random() < 1 / 3 else None
    children = list(first.children)
    try:
        first.wait_ready()
        watcher.poll_for(rng.uniform(0.0, FEED_WINDOW_S))
        first.check_alive()
        first.kill(rng, spare)
        acked = first.acked()
        survivor = first.runner_owner() if spare else None
        orphans = _check_after_kill(store, watcher, acked, first, survivor)

        second = Fleet(profile, data_dir, seed + 1000, runner=spare)
        children += second.children
        up = second.wait_ready()
        _check_orphans_requeued(store, watcher, orphans, up)
        _wait_all_succeeded(store, watcher, second)
        second.check_alive()
        assert second.controller.stop() == 0, second.controller.describe()
        lost = [ln for ln in second.runner.out_lines() if ln.startswith(("lost", "stale"))]
        assert not (spare and lost), f"the surviving runner lost leases it renewed: {lost}"
    finally:
        for child in children:
            child.kill()
    _check_final(store, watcher, acked, second.acked())
    store.close()


def _check_after_kill(
    store: Store, watcher: Watcher, acked: dict[int, int], fleet: Fleet, survivor: str | None
) -> dict[int, Lease]:
    """The invariants right after the kill; returns the leases the killed processes held."""
    watcher.poll()
    problems = watcher.problems + queue_problems(store, watcher.terminal)
    tasks = rows(store)
    for index, task_id in acked.items():
        task = tasks.get(task_id)
        if task is None or task.idempotency_key != f"crash-{index}":
            problems.append(f"acked submission {index} (task {task_id}) is not in the database")
    assert not problems, "\n".join(problems[:30]) + "\n" + fleet.describe()
    return {
        t.id: Lease(t.lease_owner, t.lease_token, t.lease_expires_at)
        for t in tasks.values()
        if t.state == "running" and t.lease_owner != survivor
    }


def _check_orphans_requeued(
    store: Store, watcher: Watcher, orphans: dict[int, Lease], up: float
) -> None:
    """Every lease of the killed processes is requeued within lease TTL + reaper interval,
    by a "lease expired" move; every running task holds a live lease."""
    deadline = time.monotonic() + LEASE_TTL_S + REAPER_S + SLACK_S
    while True:
        watcher.poll()
        tasks = rows(store)
        held = [i for i, lease in orphans.items() if _holds(tasks[i], lease)]
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not held, f"leases of killed processes not reaped in time: {held[:20]}"
    stale_after = time.time() - REAPER_S - SLACK_S
    expired = [
        t.id
        for t in tasks.values()
        if t.state == "running" and t.lease_expires_at is not None
        if t.lease_expires_at < stale_after
    ]
    assert not expired, f"running tasks whose lease expired long ago: {expired[:20]}"
    log = events(store)
    late = []
    for task_id, lease in orphans.items():
        moves = [(src, dst, detail, at) for src, dst, _, detail, at in log[task_id] if src != dst]
        claims = [n for n, move in enumerate(moves) if move[:2] == ("queued", "running")]
        nxt = claims[lease.token - 1] + 1
        src, dst, detail, at = moves[nxt] if nxt < len(moves) else (None, "", None, 0.0)
        due = max(lease.expires_at or 0.0, up) + REAPER_S
        if (src, dst) != ("running", "queued") or "lease expired" not in (detail or ""):
            late.append(f"task {task_id}: the dead lease ended with {src}->{dst} ({detail})")
        elif at > due + SLACK_S:
            late.append(f"task {task_id}: requeued {at - due:.2f}s after it was due")
    assert not late, "\n".join(late[:20])


def _holds(task: Row, lease: Lease) -> bool:
    return task.state == "running" and task.lease_token == lease.token


def _wait_all_succeeded(store: Store, watcher: Watcher, fleet: Fleet) -> None:
    deadline = time.monotonic() + 30
    done = 0
    while time.monotonic() < deadline:
        watcher.poll()
        with store.read() as conn:
            done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'succeeded'").fetchone()[
                0
            ]
        if done == TOTAL and fleet.feeder.has_out("done"):
            return
        fleet.check_alive()
        time.sleep(0.05)
    raise AssertionError(f"only {done} of {TOTAL} tasks succeeded in 30 s\n{fleet.describe()}")


def _check_final(
    store: Store, watcher: Watcher, before: dict[int, int], after: dict[int, int]
) -> None:
    """All 1,000 submissions are there once, under the ids first acked, and succeeded once."""
    watcher.poll()
    problems = watcher.problems + queue_problems(store, watcher.terminal)
    tasks = rows(store)
    if sorted(tasks) != list(range(1, TOTAL + 1)):
        problems.append(f"{len(tasks)} tasks, ids {min(tasks)}..{max(tasks)}; want 1..{TOTAL}")
    moved = {i: (before[i], after.get(i)) for i in before if after.get(i) != before[i]}
    if moved:
        problems.append(f"idempotent resubmission gave other ids: {list(moved.items())[:10]}")
    by_key = {t.idempotency_key: t for t in tasks.values()}
    for index in range(TOTAL):
        spec = crash_spec(index)
        task = by_key.get(spec.idempotency_key)
        if task is None or task.payload != spec.payload or task.host != spec.host:
            problems.append(f"submission {index} missing or different: {task}")
        elif task.state != "succeeded":
            problems.append(f"task {task.id}: {task.state}, not succeeded")
        elif spec.host is not None and task.ran_on != spec.host:
            problems.append(f"task {task.id} pinned to {spec.host} ran on {task.ran_on}")
    with store.read() as conn:
        twice = conn.execute(
            "SELECT task_id, count(*) FROM task_events WHERE to_state = 'succeeded'"
            " GROUP BY task_id HAVING count(*) != 1"
        ).fetchall()
    if twice:
        problems.append(f"tasks that succeeded more than once: {twice[:10]}")
    assert not problems, "\n".join(problems[:30])
