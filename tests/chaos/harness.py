"""The parent's side of the chaos tests: child processes, and the queue's invariants.

`Child` runs a real process (`sys.executable`), collects its stdout and stderr lines in threads
and kills it with SIGKILL. `queue_problems` reads a state database after a crash and lists every
broken invariant as a sentence, so that a failure says all that is wrong at once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bitinglip.control.queue.tasks import TERMINAL, TaskState
from bitinglip.control.store.db import Store

ROLES = Path(__file__).with_name("roles.py")
STATES = frozenset(s.value for s in TaskState)
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
OPERATOR_RETRY = "retried by the operator"


@dataclass
class Child:
    """A child process whose output lines are collected as they come."""

    name: str
    proc: subprocess.Popen[str]
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, argv: list[str], *, stdin: bool = False) -> Child:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        child = cls(name, proc)
        assert proc.stdout is not None and proc.stderr is not None
        for stream, lines in ((proc.stdout, child.out), (proc.stderr, child.err)):
            reader = threading.Thread(target=child._read, args=(stream, lines), daemon=True)
            reader.start()
            child.readers.append(reader)
        return child

    @classmethod
    def role(cls, name: str, *args: str, stdin: bool = False) -> Child:
        return cls.start(name, [sys.executable, str(ROLES), *args], stdin=stdin)

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self.changed:
                lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, found: Callable[[Child], bool], timeout: float) -> None:
        """Wait until `found(self)`; fail with the child's output if it dies or time runs out."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not found(self):
                if self.proc.poll() is not None and not any(r.is_alive() for r in self.readers):
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) early\n" + self.describe()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name}: timed out after {timeout}s\n" + self.describe()
                    )
                self.changed.wait(min(left, 0.1))

    def has_out(self, prefix: str) -> bool:
        with self.changed:
            return any(line.startswith(prefix) for line in self.out)

    def has_err(self, text: str) -> bool:
        with self.changed:
            return any(text in line for line in self.err)

    def out_lines(self) -> list[str]:
        with self.changed:
            return list(self.out)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL (the process may already be gone), then reap it and drain its output."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.finish(10)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return rc

    def describe(self) -> str:
        with self.changed:
            out, err = self.out[-20:], self.err[-40:]
        return (
            f"--- {self.name} stdout (tail)\n"
            + "\n".join(out)
            + (f"\n--- {self.name} stderr (tail)\n" + "\n".join(err))
        )


# -- invariants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int
    state: str
    attempt: int
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    payload: Any
    result: Any
    finished_at: float | None
    idempotency_key: str | None
    host: str | None
    ran_on: str | None


def rows(store: Store) -> dict[int, Row]:
    with store.read() as conn:
        return read_rows(conn)


def read_rows(conn: sqlite3.Connection) -> dict[int, Row]:
    found = conn.execute(
        "SELECT id, state, attempt, lease_owner, lease_token, lease_expires_at, payload,"
        " result, finished_at, idempotency_key, host, ran_on FROM tasks ORDER BY id"
    ).fetchall()
    return {r[0]: _row(r) for r in found}


def _row(r: tuple[Any, ...]) -> Row:
    values = list(r)
    values[6] = json.loads(values[6])  # payload
    values[7] = None if values[7] is None else json.loads(values[7])  # result
    return Row(*values)


Events = dict[int, list[tuple[str | None, str, int, str | None, float]]]


def events(store: Store) -> Events:
    with store.read() as conn:
        return read_events(conn)


def read_events(conn: sqlite3.Connection) -> Events:
    """task id -> [(from_state, to_state, attempt, detail, at)] in commit order."""
    by_task: Events = {}
    for task_id, src, dst, attempt, detail, at in conn.execute(
        "SELECT task_id, from_state, to_state, attempt, detail, at FROM task_events ORDER BY id"
    ):
        by_task.setdefault(task_id, []).append((src, dst, attempt, detail, at))
    return by_task


def storage_problems(store: Store) -> list[str]:
    problems = []
    check = [r[0] for r in store.conn.execute("PRAGMA integrity_check").fetchall()]
    if check != ["ok"]:
        problems.append(f"PRAGMA integrity_check: {check[:5]}")
    orphans = store.conn.execute("PRAGMA foreign_key_check").fetchall()
    if orphans:
        problems.append(f"PRAGMA foreign_key_check: {orphans[:5]}")
    return problems


def queue_problems(store: Store, terminal_seen: Mapping[int, str]) -> list[str]:
    """Every invariant of the queue that the database breaks, as sentences.

    - the file is sound (integrity_check, foreign_key_check);
    - task ids are 1..max with none missing; every task has one known state, and the columns
      that go with it (a lease when running, none otherwise, a result and finish when done);
    - every task that was seen terminal (`terminal_seen`) is still in that state;
    - each task's events form a chain from `queued` to its current state, none leaving a
      terminal state (no operator retry happens in these tests);
    - fencing and attempts agree with the events: lease_token = claims, attempt = 1 + requeues
      (every requeue in these tests is a lease expiry, which costs an attempt; none is a
      release).
    """
    problems = storage_problems(store)
    with store.read() as conn:  # one snapshot: other processes may still be at work
        tasks, log = read_rows(conn), read_events(conn)
    if tasks and sorted(tasks) != list(range(1, max(tasks) + 1)):
        missing = sorted(set(range(1, max(tasks) + 1)) - set(tasks))
        problems.append(f"task ids missing: {missing[:20]} (of 1..{max(tasks)})")
    for task in tasks.values():
        problems += _row_problems(task)
        seen = terminal_seen.get(task.id)
        if seen is not None and task.state != seen:
            problems.append(f"task {task.id}: was {seen}, now {task.state}")
        problems += _event_problems(task, log.get(task.id, []))
    stray = set(log) - set(tasks)
    if stray:
        problems.append(f"events of tasks that do not exist: {sorted(stray)[:20]}")
    return problems


def _row_problems(task: Row) -> list[str]:
    where = f"task {task.id} ({task.state})"
    if task.state not in STATES:
        return [f"{where}: unknown state"]
    leased = task.lease_owner is not None and task.lease_expires_at is not None
    if task.state == TaskState.RUNNING and not leased:
        return [f"{where}: running without a lease"]
    if task.state != TaskState.RUNNING and (task.lease_owner or task.lease_expires_at):
        return [f"{where}: holds a lease ({task.lease_owner})"]
    if task.state == TaskState.SUCCEEDED and (task.finished_at is None or task.result is None):
        return [f"{where}: no result or finish time"]
    if task.state == TaskState.SUCCEEDED and task.result != task.payload:
        return [f"{where}: echo result {task.result!r} is not its payload {task.payload!r}"]
    return []


def _event_problems(
    task: Row, chain: list[tuple[str | None, str, int, str | None, float]]
) -> list[str]:
    where = f"task {task.id}"
    problems = []
    moves = [(src, dst, detail) for src, dst, _, detail, _ in chain if src != dst]
    state = TaskState.QUEUED.value
    for src, dst, detail in moves:
        if src != state:
            problems.append(f"{where}: event {src}->{dst} follows state {state}")
        if src in TERMINAL_VALUES and detail != OPERATOR_RETRY:
            problems.append(f"{where}: left terminal state {src} for {dst} ({detail})")
        state = dst
    if state != task.state:
        problems.append(f"{where}: events end in {state}, the row says {task.state}")
    claims = sum(1 for src, dst, _ in moves if (src, dst) == ("queued", "running"))
    requeues = sum(1 for src, dst, _ in moves if (src, dst) == ("running", "queued"))
    if task.lease_token != claims:
        problems.append(f"{where}: lease_token {task.lease_token} after {claims} claims")
    if task.attempt != 1 + requeues:
        problems.append(f"{where}: attempt {task.attempt} after {requeues} requeues")
    return problems
