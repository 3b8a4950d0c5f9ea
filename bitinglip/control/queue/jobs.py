"""Jobs: a JSONL file whose lines became child tasks (read and checked by `job_file.py`,
queued by `job_stage.py`), their progress, and the export of their results in the format the
lines came in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bitinglip_agent.protocol import TaskKind, TaskState

from bitinglip.control.queue.views import Task, counts, job_tasks
from bitinglip.control.store.db import Store
from bitinglip.errors import NotFoundError


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    source: str | None
    format: str
    total: int
    created_at: float
    counts: dict[str, int]

    @property
    def deleted(self) -> int:
        """Tasks whose rows retention deleted (they had all finished)."""
        return max(self.total - sum(self.counts.values()), 0)

    @property
    def done(self) -> int:
        return self.deleted + sum(
            n for s, n in self.counts.items() if s not in (TaskState.QUEUED, TaskState.RUNNING)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "total": self.total,
            "done": self.done,
            "deleted": self.deleted,
            "created_at": self.created_at,
            "counts": self.counts,
        }


def get_job(store: Store, job_id: int) -> Job:
    row = store.conn.execute(
        "SELECT id, name, source, format, total, created_at FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no job {job_id}; list jobs with `bitinglip jobs ls`")
    job_id, name, source, fmt, total, created_at = row
    return Job(job_id, name, source, fmt, total, created_at, counts(store, job_id=job_id))


def list_jobs(store: Store, limit: int = 50) -> list[Job]:
    ids = [
        r[0] for r in store.conn.execute("SELECT id FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
    ]
    return [get_job(store, i) for i in ids]


def export_lines(store: Store, job_id: int) -> Iterator[str]:
    """One JSON line per input line of the job, in input order, in the job's format. A task
    whose outputs retention pruned is a `pruned` error on its line; tasks whose rows it
    deleted are one `pruned` error line each at the end (their line numbers went with them).
    A job with no row left is a NotFoundError, before any line."""
    job = get_job(store, job_id)
    if job.deleted and job.deleted == job.total:
        raise NotFoundError(
            f"job {job_id}: all {job.total} of its tasks were deleted by retention"
            " (`[retention] tasks` in the profile); nothing is left to export"
        )
    return _export(store, job)


def _export(store: Store, job: Job) -> Iterator[str]:
    render = _openai_line if job.format == "openai" else _native_line
    for task in job_tasks(store, job.id):
        yield json.dumps(render(task), ensure_ascii=False)
    deleted = json.dumps(_deleted_line(job), ensure_ascii=False)
    for _ in range(job.deleted):
        yield deleted


def _pruned_message(task: Task) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(task.pruned_at or 0))
    return (
        f"task {task.id}'s result was pruned by retention on {when} (`[retention] outputs` in"
        " the profile); submit the line again to get it"
    )


def _deleted_line(job: Job) -> dict[str, Any]:
    message = (
        f"{job.deleted} of job {job.id}'s tasks were deleted by retention (`[retention] tasks`"
        " in the profile), with their lines and ids; submit them again to get their results"
    )
    if job.format == "openai":
        return {
            "id": None,
            "custom_id": None,
            "response": None,
            "error": {"code": "pruned", "message": message},
        }
    return {
        "id": None,
        "line": None,
        "task_id": None,
        "kind": None,
        "state": None,
        "attempt": None,
        "result": None,
        "error": message,
        "error_kind": "pruned",
        "pruned_at": None,
    }


def _native_line(task: Task) -> dict[str, Any]:
    lost = task.pruned_at is not None and task.state == TaskState.SUCCEEDED
    return {
        "id": task.custom_id,
        "line": task.line_no,
        "task_id": task.id,
        "kind": task.kind,
        "state": task.state.value,
        "attempt": task.attempt,
        "result": task.result,
        "error": _pruned_message(task) if lost else task.error,
        "error_kind": "pruned" if lost else task.error_kind,
        "pruned_at": task.pruned_at,
    }


def _openai_line(task: Task) -> dict[str, Any]:
    request_id = f"bitinglip-task-{task.id}"
    line: dict[str, Any] = {
        "id": request_id,
        "custom_id": task.custom_id,
        "response": None,
        "error": None,
    }
    if task.state == TaskState.SUCCEEDED and task.pruned_at is not None:
        line["error"] = {"code": "pruned", "message": _pruned_message(task)}
    elif task.state == TaskState.SUCCEEDED:
        body = openai_body(task)
        line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
    elif task.state in (TaskState.QUEUED, TaskState.RUNNING):
        line["error"] = {"code": "not_finished", "message": f"task {task.id} is {task.state}"}
    else:
        line["error"] = {
            "code": task.error_kind or task.state.value,
            "message": task.error or f"task {task.id} is {task.state}",
        }
    return line


def openai_body(task: Task) -> dict[str, Any]:
    """An OpenAI response body from a finished task's result."""
    result = task.result if isinstance(task.result, dict) else {"text": task.result}
    created = int(task.finished_at or time.time())
    common = {
        "id": f"bitinglip-task-{task.id}",
        "created": created,
        "model": task.model,
        "usage": result.get("usage"),
    }
    if task.kind == TaskKind.EMBED:
        vectors = result.get("embeddings") or []
        return {
            "object": "list",
            "model": task.model,
            "usage": result.get("usage"),
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
        }
    choice: dict[str, Any] = {"index": 0, "finish_reason": result.get("finish_reason")}
    if task.kind == TaskKind.CHAT:
        choice["message"] = {"role": "assistant", "content": result.get("text")}
        return {"object": "chat.completion", "choices": [choice], **common}
    choice["text"] = result.get("text")
    return {"object": "text_completion", "choices": [choice], **common}
