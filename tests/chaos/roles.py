"""The child processes of the chaos tests: `python roles.py ROLE ARGS...`.

Each role talks to the parent through stdout lines written only after the work they describe is
committed (flushed at once, so a kill -9 loses nothing the parent could have read). A role that
hits an unexpected error dies with a traceback on stderr and a non-zero exit, which the parent
reports.

- feeder:    submits echo tasks in small transactions through the ControlPlane (which rings the
             controller's doorbell); idempotency keys make a restarted feeder resume, not repeat.
- runner:    a fake runner for host "b": claims a few tasks, heartbeats them, completes each after
             a random hold; it is the one holding leases when it is killed.
- committer: commits small transactions as fast as it can and acks each id after COMMIT.
- claimer:   one of several processes racing claim(limit=1) + complete on one database.
- hog:       commits short (5 ms) write transactions back to back, like a busy writer.
- zygote:    forks a committer for each `DB DURABILITY` line on stdin, one at a time, so that
             a test killing many committers pays the imports (~0.4 s a process) once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from bitinglip.config import QueueConfig, load_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store.db import open_store
from bitinglip.errors import BitinglipError, StaleLeaseError

# The crash test's workload: every twentieth task is pinned to host "b"; only the runner
# serves it.
PINNED_EVERY = 20
RUNNER_HOST = "b"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def crash_spec(index: int) -> TaskSpec:
    host = RUNNER_HOST if index % PINNED_EVERY == 0 else None
    return TaskSpec("echo", {"n": index}, host=host, idempotency_key=f"crash-{index}")


def feeder(profile_path: str, data_dir: str, total: int, chunk: int, pause_s: float) -> None:
    """Submit tasks 0..total-1 in transactions of `chunk`; ack `ack INDEX ID` after each commit."""
    profile = load_profile(profile_path, data_dir=data_dir)
    with open_control_plane(profile) as plane:
        say("ready")
        for start in range(0, total, chunk):
            indexes = range(start, min(start + chunk, total))
            ids = plane.submit_many([crash_spec(i) for i in indexes])
            for index, task_id in zip(indexes, ids, strict=True):
                say(f"ack {index} {task_id}")
            time.sleep(pause_s)
    say("done")


def runner(profile_path: str, data_dir: str, seed: int) -> None:
    """Serve host "b" forever: claim 1-3 tasks at a time, hold up to 6, heartbeat every 0.2 s."""
    profile = load_profile(profile_path, data_dir=data_dir)
    store = open_store(profile.db_path, profile.durability)
    queue = TaskQueue(store, profile.queue)
    owner = f"fake-runner:{os.getpid()}"
    rng = random.Random(seed)
    held: dict[int, tuple[int, object, float]] = {}  # task id -> (token, payload, complete at)
    next_beat = 0.0
    say(f"ready {owner}")
    while True:
        now = time.monotonic()
        if len(held) < 6:
            claims = queue.claim(owner, limit=rng.randint(1, 3), kinds=("echo",), host=RUNNER_HOST)
            for c in claims:
                held[c.task_id] = (c.token, c.payload, now + rng.uniform(0.02, 0.2))
                say(f"claimed {c.task_id} {c.token}")
        due = [(i, token, payload) for i, (token, payload, at) in held.items() if at <= now]
        if due:
            stale = set(queue.complete_many(due))
            for task_id, _, _ in due:
                del held[task_id]
                say(f"{'stale' if task_id in stale else 'completed'} {task_id}")
        if held and now >= next_beat:
            beat = queue.heartbeat(owner, {i: token for i, (token, _, _) in held.items()})
            for task_id in beat.lost:
                del held[task_id]
                say(f"lost {task_id}")
            next_beat = now + 0.2
        time.sleep(0.01)


def committer(db_path: str, durability: str) -> None:
    """Commit forever: one task, three tasks, or a raw jobs row through Store.write(), in turn.

    Prints `task ID TAG` / `job ID TAG` only after the COMMIT returned.
    """
    store = open_store(Path(db_path), durability)
    queue = TaskQueue(store, QueueConfig())
    pid = os.getpid()
    say("ready")
    n = 0
    while True:
        n += 1
        if n % 3 == 0:
            tag = f"{pid}-{n}"
            with store.write() as conn:
                cur = conn.execute(
                    "INSERT INTO jobs (name, format, total, created_at)"
                    " VALUES (?, 'bitinglip', 0, ?)",
                    (tag, time.time()),
                )
            say(f"job {cur.lastrowid} {tag}")
        elif n % 3 == 1:
            tag = f"{pid}-{n}"
            say(f"task {queue.submit(TaskSpec('echo', {'tag': tag}))} {tag}")
        else:
            tags = [f"{pid}-{n}.{k}" for k in range(3)]
            ids = queue.submit_many([TaskSpec("echo", {"tag": t}) for t in tags])
            for task_id, tag in zip(ids, tags, strict=True):
                say(f"task {task_id} {tag}")


def zygote() -> None:
    """For each `DB DURABILITY` line on stdin: fork a committer (a fresh process in all but its
    imports: this one is single-threaded and has opened nothing), say `forked PID`, and once it
    is gone `exit PID STATUS`. The committer's own lines come between on the same stdout (each
    one write, so whole); the parent kills it."""
    while line := sys.stdin.readline():
        db_path, durability = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                committer(db_path, durability)
            except BaseException:  # noqa: BLE001 - the fork must never return into this loop
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(1)
        say(f"forked {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def claimer(db_path: str, durability: str, owner: str, count: int) -> None:
    """After `go` on stdin, do `count` claim(limit=1) + complete pairs; print a JSON summary.

    Errors that reach this caller (a locked database, a stale lease) are counted, not raised, so
    that the parent sees all of them.
    """
    store = open_store(Path(db_path), durability)
    queue = TaskQueue(store, QueueConfig(lease_ttl_s=120.0))
    say("ready")
    sys.stdin.readline()
    started = time.monotonic()
    completed: list[int] = []
    errors: Counter[str] = Counter()  # distinct error -> how many times
    empty = stale = 0
    slowest = 0.0
    for _ in range(count + 50):
        if len(completed) == count:
            break
        asked = time.monotonic()
        try:
            claims = queue.claim(owner, limit=1, kinds=("echo",))
        except (sqlite3.Error, BitinglipError) as exc:
            errors[f"claim: {type(exc).__name__}: {exc}"] += 1
            continue
        finally:
            slowest = max(slowest, time.monotonic() - asked)
        if not claims:
            empty += 1
            continue
        claim = claims[0]
        try:
            queue.complete(claim.task_id, claim.token, claim.payload)
        except StaleLeaseError:
            stale += 1
            continue
        except (sqlite3.Error, BitinglipError) as exc:
            errors[f"complete: {type(exc).__name__}: {exc}"] += 1
            continue
        completed.append(claim.task_id)
    summary = {
        "owner": owner,
        "completed": completed,
        "errors": dict(errors),
        "empty_claims": empty,
        "stale": stale,
        "slowest_claim_s": round(slowest, 3),
        "seconds": time.monotonic() - started,
    }
    say(json.dumps(summary))


def hog(db_path: str, seconds: float) -> None:
    """Hold the write lock in 5 ms transactions, one right after the other, for `seconds`."""
    store = open_store(Path(db_path))
    end = time.monotonic() + seconds
    say("ready")
    while time.monotonic() < end:
        with store.write() as conn:
            conn.execute(
                "INSERT INTO jobs (name, format, total, created_at)"
                " VALUES ('hog', 'bitinglip', 0, ?)",
                (time.time(),),
            )
            time.sleep(0.005)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="roles.py")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("feeder")
    p.add_argument("profile")
    p.add_argument("data_dir")
    p.add_argument("--total", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--pause", type=float, default=0.004)
    p = sub.add_parser("runner")
    p.add_argument("profile")
    p.add_argument("data_dir")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("committer")
    p.add_argument("db")
    p.add_argument("durability")
    p = sub.add_parser("claimer")
    p.add_argument("db")
    p.add_argument("durability")
    p.add_argument("owner")
    p.add_argument("--count", type=int, default=1000)
    p = sub.add_parser("hog")
    p.add_argument("db")
    p.add_argument("--seconds", type=float, default=15.0)
    sub.add_parser("zygote")
    args = parser.parse_args(argv)
    if args.role == "feeder":
        feeder(args.profile, args.data_dir, args.total, args.chunk, args.pause)
    elif args.role == "runner":
        runner(args.profile, args.data_dir, args.seed)
    elif args.role == "committer":
        committer(args.db, args.durability)
    elif args.role == "claimer":
        claimer(args.db, args.durability, args.owner, args.count)
    elif args.role == "hog":
        hog(args.db, args.seconds)
    else:
        zygote()


if __name__ == "__main__":
    main(sys.argv[1:])
