"""Jobs from JSONL: both line formats, all-or-nothing checks, export in the input's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.job_file import ROW, JobFile
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.errors import InputError
from tests.conftest import NOWHERE


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


OPENAI_CHAT: dict[str, Any] = {
    "custom_id": "req-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {
        "model": "gemma-3-270m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    },
}


def rows(file: JobFile) -> list[dict[str, Any]]:
    """The file's rows by column name."""
    return [dict(zip(ROW, row, strict=True)) for row in file.rows()]


def test_native_lines_become_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"kind": "echo", "payload": {"x": 1}, "id": "a"},
        "",
        {"kind": "generate", "model": "m", "prompt": "p", "max_tokens": 4, "seed": 1},
        {"kind": "chat", "model": "m", "messages": [{"role": "user", "content": "c"}]},
    )
    file = JobFile(path)
    found = rows(file)
    assert file.format == "bitinglip"
    assert [(r["kind"], r["line_no"], r["custom_id"]) for r in found] == [
        ("echo", 1, "a"),
        ("generate", 3, None),
        ("chat", 4, None),
    ]
    assert found[1]["payload"] == {"prompt": "p", "max_tokens": 4, "seed": 1}


def test_openai_batch_lines_become_rows(tmp_path: Path) -> None:
    emb = {
        "custom_id": "e",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "m", "input": ["a", "b"]},
    }
    file = JobFile(write(tmp_path, OPENAI_CHAT, emb))
    found = rows(file)
    assert file.format == "openai"
    assert [(r["kind"], r["model"], r["custom_id"]) for r in found] == [
        ("chat", "gemma-3-270m", "req-1"),
        ("embed", "m", "e"),
    ]
    assert found[0]["payload"]["max_tokens"] == 8 and "model" not in found[0]["payload"]


@pytest.mark.parametrize(
    ("lines", "where", "says"),
    [
        (['{"kind": "echo"}', '{"kind": "echo"', '{"kind": "echo"}'], ":2:", "not valid JSON"),
        (["[1, 2]"], ":1:", "JSON object"),
        (['{"kind": "echo"}', json.dumps(OPENAI_CHAT)], ":2:", "one format per file"),
        (['{"kind": "echo", "colour": 1}'], ":1:", "unknown key 'colour'"),
        (['{"kind": "teleport"}'], ":1:", "kind must be one of"),
        (['{"kind": "generate", "prompt": "p"}'], ":1:", "'model' is required"),
        (['{"kind": "chat", "model": "m", "messages": []}'], ":1:", "non-empty list"),
        (['{"kind": "echo", "id": "x"}', '{"kind": "echo", "id": "x"}'], ":2:", "repeats line 1"),
        (['{"kind": "echo", "priority": "high"}'], ":1:", "'priority' must be a int"),
        ([json.dumps({**OPENAI_CHAT, "method": "GET"})], ":1:", "method must be"),
        ([json.dumps({**OPENAI_CHAT, "url": "/v1/images"})], ":1:", "not supported"),
        (
            [json.dumps({k: v for k, v in OPENAI_CHAT.items() if k != "custom_id"})],
            ":1:",
            "needs custom_id",
        ),
        ([json.dumps({**OPENAI_CHAT, "body": {"messages": []}})], ":1:", "'model' is required"),
        (['{"kind": "echo", "max_attempts": 0}'], ":1:", "max_attempts must be at least 1"),
        (['{"kind": "echo"}', '{"kind": "echo", "payload": {"x": NaN}}'], ":2:", "NaN is not"),
        (['{"kind": "echo", "payload": {"x": 1e999}}'], ":1:", "a number out of range"),
        (['{"kind": "echo", "payload": {"immediate": "yes"}}'], ":1:", "payload immediate"),
    ],
)
def test_bad_lines_name_their_line_and_queue_nothing(
    tmp_path: Path, plane: ControlPlane, lines: list[str], where: str, says: str
) -> None:
    path = write(tmp_path, *lines)
    with pytest.raises(InputError) as err:
        plane.submit_job(path)
    assert f"{path}{where}" in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)
    assert sum(plane.status()["tasks"].values()) == 0 and plane.jobs() == []


def test_empty_and_missing_files_are_refused(tmp_path: Path, plane: ControlPlane) -> None:
    with pytest.raises(InputError, match="no tasks"):
        plane.submit_job(write(tmp_path, ""))
    with pytest.raises(InputError, match="no such file"):
        plane.submit_job(tmp_path / "nope.jsonl")


def test_a_job_runs_and_exports_in_its_own_format(tmp_path: Path, plane: ControlPlane) -> None:
    path = write(
        tmp_path,
        {"kind": "echo", "payload": {"n": 1}, "id": "first"},
        {"kind": "echo", "payload": {"n": 2}},
        {"kind": "generate", "model": "gemma-3-270m", "prompt": "never", "labels": NOWHERE},
    )
    job = plane.submit_job(path)
    assert (job.total, job.format, job.counts["queued"]) == (3, "bitinglip", 3)
    with plane.embedded():
        for task in plane.tasks(job_id=job.id):
            if task.kind == "echo":
                plane.wait(task.id, timeout=10)
    job = plane.job(job.id)
    assert (job.counts["succeeded"], job.counts["queued"], job.done) == (2, 1, 2)
    lines = [json.loads(line) for line in plane.export_job(job.id)]
    assert [(ln["id"], ln["line"], ln["state"], ln["result"]) for ln in lines] == [
        ("first", 1, "succeeded", {"n": 1}),
        (None, 2, "succeeded", {"n": 2}),
        (None, 3, "queued", None),
    ]


def test_openai_export_has_one_line_per_request(tmp_path: Path, plane: ControlPlane) -> None:
    job = plane.submit_job(write(tmp_path, OPENAI_CHAT, {**OPENAI_CHAT, "custom_id": "req-2"}))
    (first, second) = sorted(plane.tasks(job_id=job.id), key=lambda t: t.id)
    (claim,) = plane.queue.claim("test-runner", limit=1, kinds=("chat",))
    assert claim.task_id == first.id
    plane.queue.complete(
        first.id,
        claim.token,
        {
            "text": "Hello!",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        },
    )
    lines = [json.loads(line) for line in plane.export_job(job.id)]
    assert [ln["custom_id"] for ln in lines] == ["req-1", "req-2"]
    body = lines[0]["response"]["body"]
    assert lines[0]["response"]["status_code"] == 200 and lines[0]["error"] is None
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert body["usage"]["total_tokens"] == 5
    assert lines[1]["response"] is None and lines[1]["error"]["code"] == "not_finished"
    assert plane.task(second.id).state == TaskState.QUEUED


# -- a job file carries only work -----------------------------------------------------------

PULL: dict[str, Any] = {
    "kind": "pull",
    "payload": {"url": "http://attacker.invalid/x.gguf", "dest": "/tmp/x"},
}
REMOVE = {"kind": "remove", "payload": {"dest": "/home/me/models/gemma.gguf"}}


OPENAI_SMUGGLES = [
    {**OPENAI_CHAT, "custom_id": "req-3", "body": {**OPENAI_CHAT["body"], "kind": "pull"}},
    {**OPENAI_CHAT, "custom_id": "req-3", "url": "/v1/pull"},
    {**OPENAI_CHAT, "custom_id": "req-3", "url": "pull"},
]


@pytest.mark.parametrize(
    ("good", "hostile"),
    [
        *[({"kind": "echo"}, line) for line in (PULL, REMOVE, {"kind": "bench"}, {"kind": "PULL"})],
        *[(OPENAI_CHAT, line) for line in OPENAI_SMUGGLES],
    ],
)
def test_a_file_with_a_non_work_line_is_refused_whole(
    tmp_path: Path, plane: ControlPlane, good: dict[str, object], hostile: dict[str, object]
) -> None:
    """Two good lines, then the hostile one: one line names it, and nothing is queued."""
    second = {**good, "custom_id": "req-2"} if "custom_id" in good else good
    path = write(tmp_path, good, second, hostile)
    with pytest.raises(InputError) as err:
        plane.submit_job(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ") and "\n" not in message
    assert "bitinglip models" in message or "/v1/chat/completions" in message
    if "kind" in hostile:
        assert "echo, generate, chat, embed" in message
    assert sum(plane.status()["tasks"].values()) == 0 and plane.jobs() == []


def test_an_openai_body_carries_only_what_a_run_reads(tmp_path: Path) -> None:
    body = {**OPENAI_CHAT["body"], "dest": "/x", "url": "http://attacker.invalid/", "n": 2}
    (row,) = rows(JobFile(write(tmp_path, {**OPENAI_CHAT, "body": body})))
    assert row["kind"] == "chat"
    assert row["payload"] == {"messages": body["messages"], "max_tokens": 8}


def test_the_queue_refuses_a_job_of_other_kinds(plane: ControlPlane) -> None:
    """Below the file parser too: a job of a pull queues nothing."""
    specs = [TaskSpec("echo"), TaskSpec("pull", payload=PULL["payload"])]
    with pytest.raises(InputError, match="a job runs only echo, generate, chat, embed, not 'pull'"):
        plane.queue.submit_job("hostile", None, "bitinglip", specs)
    assert sum(plane.status()["tasks"].values()) == 0 and plane.jobs() == []
