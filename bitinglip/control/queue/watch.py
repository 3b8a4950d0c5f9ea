"""Watching many tasks at once (the gateway's open requests): what is new about each of them
since the last look, in one read transaction.

`follow_step` does this for one task (its events too); a server with many requests in flight
would pay a few statements per task per commit. Here one statement reads the states of every
watched task, one the new output of all those reading output, and one each the row of a task
that ended. When a task runs again (a retry, or a requeue after a lost runner) its output starts
over: the step says so (`restarted`) and carries the new run's output from its start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from bitinglip.control.queue.tasks import TERMINAL
from bitinglip.control.queue.views import Task, get_task
from bitinglip.control.store.db import Store


class WatchMark(NamedTuple):
    """How far a watcher has read one task: the last output chunk and lease token seen;
    `output`: whether it reads the task's output at all (else only its end). A tuple: a scan
    makes one per task that moved, hundreds a second with many requests in flight."""

    seq: int = 0
    token: int | None = None
    output: bool = True


@dataclass(frozen=True)
class WatchStep:
    """What is new about one watched task: its `mark` now, output `chunks` (the new run's, from
    its start, when `restarted`), and the task itself once it ended (`final`)."""

    mark: WatchMark
    chunks: list[str] = field(default_factory=list)
    restarted: bool = False
    final: Task | None = None


def watch_steps(store: Store, marks: Mapping[int, WatchMark]) -> dict[int, WatchStep]:
    """A step for each watched task with something new (output, a new run, its end); a task
    whose mark did not move, or that is not in the database, has none."""
    if not marks:
        return {}
    with store.read() as conn:
        ids = list(marks)
        states = conn.execute(
            f"SELECT id, state, lease_token FROM tasks WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        moved: dict[int, WatchMark] = {}
        restarted: set[int] = set()
        ended: list[int] = []
        for task_id, state, token in states:
            mark = marks[task_id]
            if token != mark.token:
                seq = mark.seq
                if mark.token is not None and seq > 0:
                    restarted.add(task_id)  # a retry: its output starts over
                    seq = 0
                moved[task_id] = WatchMark(seq, token, mark.output)
            if state in TERMINAL:
                ended.append(task_id)
        chunks = _new_output(store, marks, moved)
        final = {task_id: get_task(store, task_id) for task_id in ended}
    steps = {}
    for task_id in moved.keys() | chunks.keys() | final.keys():
        mark = moved.get(task_id, marks[task_id])
        new = chunks.get(task_id)
        if new:
            mark = WatchMark(new[-1][0], mark.token, mark.output)
        data = [d for _, d in new] if new else []
        steps[task_id] = WatchStep(mark, data, task_id in restarted, final.get(task_id))
    return steps


def _new_output(
    store: Store, marks: Mapping[int, WatchMark], moved: Mapping[int, WatchMark]
) -> dict[int, list[tuple[int, str]]]:
    """(seq, data) of every chunk past each mark (`moved`'s where it has one), of the tasks
    reading output: one statement."""
    reading = [(i, moved.get(i, m).seq) for i, m in marks.items() if m.output]
    found: dict[int, list[tuple[int, str]]] = {}
    if not reading:
        return found
    values = ",".join(["(?,?)"] * len(reading))
    rows = store.conn.execute(
        f"WITH w(id, seq) AS (VALUES {values}) SELECT o.task_id, o.seq, o.data"
        " FROM w JOIN task_output o ON o.task_id = w.id AND o.seq > w.seq"
        " ORDER BY o.task_id, o.seq",
        [x for pair in reading for x in pair],
    ).fetchall()
    for task_id, seq, data in rows:
        found.setdefault(task_id, []).append((seq, data))
    return found
