"""Jobs: a JSONL file whose lines become child tasks, and the export of their results.

A line is either a BitingLip task object or a line of the OpenAI Batch API format (`custom_id`,
`method`, `url`, `body`), so existing batch files run unchanged. One file holds one format.
The whole file is checked before anything is queued: a bad line is reported with its number and
nothing of the file is queued. A file carries only work (`JOB_KINDS`: echo, generate, chat,
embed): a file someone hands you cannot pull from a URL of its choosing or remove model files.
Export writes results in the format the lines came in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bitinglip_agent.protocol import JOB_KINDS, TaskKind, TaskState

from bitinglip.control.queue.tasks import TaskSpec
from bitinglip.control.queue.views import Task, counts, job_tasks
from bitinglip.control.store.db import Store
from bitinglip.errors import InputError, NotFoundError

PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repeat_penalty")
NATIVE_KEYS = frozenset(
    {
        "kind",
        "id",
        "payload",
        "model",
        "prompt",
        "messages",
        "input",
        "priority",
        "max_attempts",
        "host",
        "labels",
        *PARAMS,
    }
)
OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
OPENAI_URLS = {
    "/v1/chat/completions": TaskKind.CHAT,
    "/v1/completions": TaskKind.GENERATE,
    "/v1/embeddings": TaskKind.EMBED,
}
BODY_FIELD = {TaskKind.CHAT: "messages", TaskKind.GENERATE: "prompt", TaskKind.EMBED: "input"}
ONLY_WORK = " (a job file carries only work: pull and remove models with `bitinglip models`)"


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


def parse_jsonl(path: Path) -> tuple[str, list[TaskSpec]]:
    """Read and check a whole batch file; returns its format and one spec per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give the path of a JSONL batch file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it as UTF-8 text: {exc}") from None
    fmt: str | None = None
    specs: list[TaskSpec] = []
    seen_ids: dict[str, int] = {}
    for line_no, line in _lines(text):
        where = f"{path}:{line_no}"
        obj = _json_object(line, where)
        line_fmt = "openai" if "custom_id" in obj or "url" in obj else "bitinglip"
        if fmt is not None and line_fmt != fmt:
            raise InputError(f"{where}: a {line_fmt} line in a {fmt} file; use one format per file")
        fmt = line_fmt
        spec = _openai_spec(obj, where) if fmt == "openai" else _native_spec(obj, where)
        spec = replace(spec, line_no=line_no)
        if spec.custom_id is not None:
            if spec.custom_id in seen_ids:
                raise InputError(
                    f"{where}: id {spec.custom_id!r} repeats line {seen_ids[spec.custom_id]};"
                    " give each line its own id"
                )
            seen_ids[spec.custom_id] = line_no
        specs.append(spec)
    if not specs:
        raise InputError(f"{path}: no tasks in the file; put one JSON object per line")
    assert fmt is not None
    return fmt, specs


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield line_no, line


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object, not {type(obj).__name__}")
    return obj


def _native_spec(obj: dict[str, Any], where: str) -> TaskSpec:
    unknown = sorted(set(obj) - NATIVE_KEYS)
    if unknown:
        raise InputError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(NATIVE_KEYS))}"
        )
    kind = obj.get("kind")
    if kind not in JOB_KINDS:
        raise InputError(
            f"{where}: kind must be one of {', '.join(JOB_KINDS)}, not {kind!r}{ONLY_WORK}"
        )
    payload = dict(_typed(obj, "payload", dict, where) or {})
    if kind in BODY_FIELD:
        field = BODY_FIELD[kind]
        if field not in obj:
            raise InputError(f"{where}: a {kind} line needs {field!r}")
        payload[field] = _check_body_field(kind, obj[field], where)
        _typed(obj, "model", str, where, required=True)
    payload.update({p: obj[p] for p in PARAMS if p in obj})
    custom_id = obj.get("id")
    if custom_id is not None and not isinstance(custom_id, (str, int)):
        raise InputError(f"{where}: id must be a string or a number")
    labels = _typed(obj, "labels", dict, where)
    return TaskSpec(
        kind=kind,
        payload=payload,
        model=_typed(obj, "model", str, where),
        host=_typed(obj, "host", str, where),
        labels=labels,
        priority=_typed(obj, "priority", int, where) or 0,
        max_attempts=_typed(obj, "max_attempts", int, where),
        custom_id=None if custom_id is None else str(custom_id),
    )


def _openai_spec(obj: dict[str, Any], where: str) -> TaskSpec:
    missing = sorted(OPENAI_KEYS - set(obj))
    if missing:
        raise InputError(f"{where}: an OpenAI batch line needs {', '.join(missing)}")
    unknown = sorted(set(obj) - OPENAI_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} in an OpenAI batch line")
    custom_id = _typed(obj, "custom_id", str, where, required=True)
    if obj["method"] != "POST":
        raise InputError(f'{where}: method must be "POST", not {obj["method"]!r}')
    kind = OPENAI_URLS.get(obj["url"])
    if kind is None:
        raise InputError(
            f"{where}: url {obj['url']!r} is not supported; use one of {', '.join(OPENAI_URLS)}"
        )
    body = _typed(obj, "body", dict, where, required=True)
    if "kind" in body:  # the url alone says what runs
        raise InputError(f"{where}: body must not name a kind; the url sets it{ONLY_WORK}")
    model = _typed(body, "model", str, f"{where}: body", required=True)
    field = BODY_FIELD[kind]
    if field not in body:
        raise InputError(f"{where}: body needs {field!r} for {obj['url']}")
    _check_body_field(kind, body[field], where)
    # Only what a run reads: the input and the generation parameters (other keys are dropped).
    payload = {k: body[k] for k in (field, *PARAMS) if k in body}
    return TaskSpec(kind=kind, payload=payload, model=model, custom_id=custom_id)


def _check_body_field(kind: str, value: Any, where: str) -> Any:
    if kind == TaskKind.GENERATE and not isinstance(value, str):
        raise InputError(f"{where}: prompt must be a string")
    if kind == TaskKind.CHAT and not (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    ):
        raise InputError(
            f'{where}: messages must be a non-empty list of {{"role", "content"}} objects'
        )
    if kind == TaskKind.EMBED and not isinstance(value, (str, list)):
        raise InputError(f"{where}: input must be a string or a list of strings")
    return value


def _typed(obj: dict[str, Any], key: str, typ: type, where: str, required: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise InputError(f"{where}: {key!r} is required")
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InputError(f"{where}: {key!r} must be a {typ.__name__}, not {type(value).__name__}")
    return value


# -- reading and exporting ---------------------------------------------------------------


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
