"""Streaming job intake: a file is read line by line into a staging file, then queued in one
transaction; large files keep their order and ids, and a bad line anywhere queues nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.errors import InputError


def echo_file(path: Path, lines: int, bad: dict[int, str] | None = None) -> Path:
    """`lines` echo lines with ids (`n0`, `n1`...), some replaced by `bad` (line number: text)."""
    bad = bad or {}
    with path.open("w", encoding="utf-8") as out:
        for n in range(lines):
            out.write(
                bad.get(n + 1) or f'{{"kind": "echo", "id": "n{n}", "payload": {{"n": {n}}}}}'
            )
            out.write("\n")
    return path


def nothing_queued(plane: ControlPlane) -> bool:
    conn = plane.store.conn
    (tasks,) = conn.execute("SELECT count(*) FROM tasks").fetchone()
    (jobs,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return (tasks, jobs) == (0, 0) and set(plane.task_counts().values()) == {0}


def no_staging_left(plane: ControlPlane) -> bool:
    return not list(plane.store.path.parent.glob(".intake-*"))


def test_a_large_file_queues_every_line_in_order_with_its_id(
    tmp_path: Path, plane: ControlPlane
) -> None:
    lines = 50_000
    job = plane.submit_job(echo_file(tmp_path / "big.jsonl", lines))
    assert (job.total, job.counts["queued"]) == (lines, lines)
    rows = plane.store.conn.execute(
        "SELECT id, line_no, custom_id, payload, state FROM tasks WHERE job_id = ? ORDER BY id",
        (job.id,),
    ).fetchall()
    first = rows[0][0]
    assert [r[0] for r in rows] == list(range(first, first + lines))  # consecutive ids
    assert all(
        (line_no, custom_id, json.loads(payload), state) == (n + 1, f"n{n}", {"n": n}, "queued")
        for n, (_, line_no, custom_id, payload, state) in enumerate(rows)
    )
    assert plane.task_counts()["queued"] == lines
    assert no_staging_left(plane)


def test_an_id_repeated_far_apart_is_named_with_both_lines(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """The two lines are chunks apart: the staging file's index finds it, not a set in memory."""
    repeat = '{"kind": "echo", "id": "n2"}'
    path = echo_file(tmp_path / "ids.jsonl", 30_000, {25_001: repeat})
    with pytest.raises(InputError) as err:
        plane.submit_job(path)
    assert str(err.value) == (f"{path}:25001: id 'n2' repeats line 3; give each line its own id")
    assert nothing_queued(plane) and no_staging_left(plane)


def test_the_first_bad_line_is_named_when_a_repeat_comes_before_it(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """A repeated id at line 10 and broken JSON at line 11 (the same chunk): line 10 is named."""
    path = echo_file(tmp_path / "two.jsonl", 20, {10: '{"kind": "echo", "id": "n0"}', 11: "{"})
    with pytest.raises(InputError, match=r":10: id 'n0' repeats line 1;"):
        plane.submit_job(path)
    assert nothing_queued(plane) and no_staging_left(plane)


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path, plane: ControlPlane) -> None:
    path = echo_file(tmp_path / "latin1.jsonl", 3)
    path.write_bytes(path.read_bytes() + b'{"kind": "echo", "payload": {"x": "caf\xe9"}}\n')
    with pytest.raises(InputError, match=r"latin1.jsonl:4: not UTF-8 text"):
        plane.submit_job(path)
    assert nothing_queued(plane) and no_staging_left(plane)


def test_progress_reports_lines_and_bytes_up_to_the_end(
    tmp_path: Path, plane: ControlPlane
) -> None:
    path = echo_file(tmp_path / "p.jsonl", 20_000)
    calls: list[tuple[int, int, int]] = []
    plane.submit_job(path, progress=lambda *call: calls.append(call))
    size = path.stat().st_size
    assert len(calls) >= 3 and calls[-1] == (20_000, size, size)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)  # bytes only grow
    assert all(c[2] == size for c in calls)
