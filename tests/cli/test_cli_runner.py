"""The CLI in process through CliRunner: help everywhere, tasks, jobs, exports and exit codes.

Each test gets its own data dir under `tmp_path` (see conftest.py). Nothing runs a task unless a
test asks for it: `--wait` embeds a controller for the duration, and `run_until_done` runs one in
this process through the control plane's own API. Model tasks that must stay queued while a
controller runs are pinned away from every host (`--label gpu=none`); real inference is in
test_inference_cli.py.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from bitinglip import __version__
from bitinglip.cli import app
from bitinglip.config import load_profile
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TERMINAL
from tests.cli.conftest import MODEL, NOWHERE, NOWHERE_LABELS, Cli, stderr_lines, write_jsonl

STATES = ["queued", "running", "succeeded", "failed", "canceled", "dead"]
ZERO = dict.fromkeys(STATES, 0)

OPENAI_CHAT = {
    "custom_id": "r1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
}
OPENAI_COMPLETION = {
    "custom_id": "r2",
    "method": "POST",
    "url": "/v1/completions",
    "body": {"model": MODEL, "prompt": "once upon"},
}
OPENAI_EMBED = {
    "custom_id": "r3",
    "method": "POST",
    "url": "/v1/embeddings",
    "body": {"model": MODEL, "input": ["a", "b"]},
}


def command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of the app, as argv prefixes (the root is `()`)."""
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        if isinstance(command, TyperGroup):
            for name in sorted(command.commands):
                walk(command.commands[name], (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def command_at(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def words(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def one_error_line(stderr: str) -> str:
    lines = stderr_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bitinglip: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_until_done(cli: Cli, ids: list[int], timeout: float = 10) -> None:
    """Run a controller in this process until every task in `ids` is in a terminal state."""
    profile = load_profile(None, data_dir=cli.data_dir, cwd=cli.cwd)
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None, "another controller holds the lease"
        for task_id in ids:
            assert plane.wait(task_id, timeout).state in TERMINAL


def submit(cli: Cli, *args: str) -> int:
    return int(cli.ok("tasks", "submit", *args).stdout)


@pytest.fixture
def drop_models(cli: Cli) -> Iterator[None]:
    """Remove what a test assembled into the data dir (250 MB) rather than keep it in tmp."""
    yield
    shutil.rmtree(cli.data_dir / "models", ignore_errors=True)


# -- help ------------------------------------------------------------------------------------


def test_the_command_tree_has_every_documented_command() -> None:
    paths = set(command_paths())
    expected = {
        ("up",), ("status",), ("tasks",), ("jobs",), ("profiles",), ("bench",), ("db",),
        ("tasks", "submit"), ("tasks", "ls"), ("tasks", "show"), ("tasks", "cancel"),
        ("tasks", "retry"), ("jobs", "submit"), ("jobs", "ls"), ("jobs", "show"),
        ("jobs", "export"), ("db", "backup"), ("profiles", "ls"), ("profiles", "show"),
        ("profiles", "check"), ("bench", "queue"),
    }  # fmt: skip
    assert expected <= paths, expected - paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "(root)")
def test_every_command_has_help(cli: Cli, path: tuple[str, ...]) -> None:
    command = command_at(path)
    help_text = (command.help or command.short_help or "").strip()
    assert help_text, f"{' '.join(path)} has no help text"
    result = cli(*path, "--help", data_dir=False)
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout
    assert words(help_text.splitlines()[0])[:40] in words(result.stdout)


def test_the_root_command_prints_its_version(cli: Cli) -> None:
    result = cli("--version", data_dir=False)
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


# -- status ----------------------------------------------------------------------------------


def test_status_json_shape_on_a_fresh_data_dir(cli: Cli) -> None:
    info = cli.json("status")
    assert set(info) == {"profile", "database", "durability", "controller", "tasks", "hosts"}
    assert info["profile"] == "default"
    assert info["database"] == str(cli.data_dir / "state.db")
    assert info["durability"] in ("normal", "full")
    assert info["controller"] is None
    assert info["tasks"] == ZERO
    assert info["hosts"] == ["local"]
    assert (cli.data_dir / "state.db").is_file()


def test_status_text_lists_the_counts(cli: Cli) -> None:
    submit(cli, "echo")
    out = cli.ok("status").stdout
    assert "controller  none" in out
    assert re.search(r"^queued\s+1$", out, re.MULTILINE), out
    assert re.search(r"^succeeded\s+0$", out, re.MULTILINE), out


# -- tasks: submit, ls, show -----------------------------------------------------------------


def test_submit_then_ls_and_show(cli: Cli) -> None:
    task_id = submit(
        cli, "echo", "--payload", '{"n": 1}', "--priority", "5", "--label", "zone=a",
        "--max-attempts", "2",
    )  # fmt: skip
    listed = cli.json("tasks", "ls")
    assert [t["id"] for t in listed] == [task_id]
    task = listed[0]
    assert task["state"] == "queued" and task["kind"] == "echo"
    assert task["payload"] == {"n": 1}
    assert task["priority"] == 5 and task["max_attempts"] == 2
    assert task["labels"] == {"zone": "a"}
    shown = cli.json("tasks", "show", str(task_id))
    assert shown["id"] == task_id and shown["payload"] == {"n": 1}
    assert isinstance(shown["events"], list)
    assert shown["output"] == ""
    text = cli.ok("tasks", "show", str(task_id)).stdout
    assert re.search(r'^payload\s+\{"n": 1\}$', text, re.MULTILINE), text
    table = cli.ok("tasks", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "KIND", "STATE"]
    assert table[1].split()[:3] == [str(task_id), "echo", "queued"]


def test_submit_json_prints_the_id(cli: Cli) -> None:
    first = cli.json("tasks", "submit", "echo")
    second = cli.json("tasks", "submit", "echo")
    assert first == {"id": first["id"]} and second["id"] == first["id"] + 1


def test_ls_filters_by_state_and_limit(cli: Cli) -> None:
    ids = [submit(cli, "echo", "--payload", json.dumps({"i": i})) for i in range(3)]
    cli.ok("tasks", "cancel", str(ids[1]))
    assert [t["id"] for t in cli.json("tasks", "ls", "--state", "canceled")] == [ids[1]]
    assert [t["id"] for t in cli.json("tasks", "ls", "--state", "queued")] == [ids[2], ids[0]]
    assert [t["id"] for t in cli.json("tasks", "ls", "--limit", "2")] == [ids[2], ids[1]]
    assert cli("tasks", "ls", "--state", "bogus").exit_code == 2


def test_show_of_a_missing_task_exits_1(cli: Cli) -> None:
    cli.ok("status")
    result = cli("tasks", "show", "999")
    assert result.exit_code == 1
    assert "no task 999" in one_error_line(result.stderr)


# -- tasks: --wait ---------------------------------------------------------------------------


def test_wait_on_echo_prints_the_payload(cli: Cli) -> None:
    result = cli.ok("tasks", "submit", "echo", "--payload", '{"msg": "hi", "n": [1, 2]}', "--wait")
    assert result.stdout == '{"msg": "hi", "n": [1, 2]}\n'
    assert cli.counts() == {**ZERO, "succeeded": 1}
    assert cli.json("status")["controller"] is None  # the embedded controller let go


def test_wait_json_prints_the_finished_task(cli: Cli) -> None:
    task = cli.json("tasks", "submit", "echo", "--prompt", "hello", "--wait")
    assert task["state"] == "succeeded"
    assert task["payload"] == task["result"] == {"prompt": "hello"}
    assert task["ran_on"] == "local" and task["attempt"] == 1


def test_wait_also_runs_what_was_queued_before(cli: Cli) -> None:
    queued = submit(cli, "echo", "--payload", '{"first": true}')
    cli.ok("tasks", "submit", "echo", "--wait")
    run_until_done(cli, [queued])
    assert cli.json("tasks", "show", str(queued))["result"] == {"first": True}


@pytest.mark.parametrize("wait", [False, True], ids=["queue", "wait"])
@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("generate", "m"),
        ("chat", "m"),
        ("embed", "m"),
        ("generate", "no-such-file.gguf"),
    ],
)
def test_an_unknown_model_is_refused_at_submit_and_queues_nothing(
    cli: Cli, kind: str, model: str, wait: bool
) -> None:
    """Neither an alias of the profile nor an existing .gguf file: exit 2 before anything runs."""
    args = ["tasks", "submit", kind, "--model", model, "--prompt", "hi"]
    result = cli(*args, *(["--wait"] if wait else []))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = one_error_line(result.stderr)
    assert line.startswith(f"bitinglip: unknown model {model!r}"), line
    assert MODEL in line  # names the aliases there are
    assert result.stdout == ""
    assert cli.counts() == ZERO
    assert cli.json("tasks", "ls") == []
    assert not (cli.data_dir / "models").exists()


@pytest.mark.usefixtures("drop_models")
def test_generate_without_wait_is_queued(cli: Cli) -> None:
    task_id = submit(cli, "generate", "--model", MODEL, "--prompt", "once", "--label", NOWHERE)
    task = cli.json("tasks", "show", str(task_id))
    assert task["state"] == "queued" and task["model"] == MODEL
    assert task["payload"] == {"prompt": "once"}
    assert task["labels"] == NOWHERE_LABELS


def test_a_gguf_path_is_a_model_name(cli: Cli, tmp_path: Path) -> None:
    """An existing .gguf file is accepted at submit (its content is checked when it runs)."""
    path = tmp_path / "weights" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    task_id = submit(cli, "chat", "--model", str(path), "--prompt", "hi", "--label", NOWHERE)
    task = cli.json("tasks", "show", str(task_id))
    assert task["state"] == "queued" and task["model"] == str(path)
    assert task["payload"] == {"messages": [{"role": "user", "content": "hi"}]}
    missing = cli("tasks", "submit", "chat", "--model", str(path.with_name("gone.gguf")))
    assert missing.exit_code == 2
    assert "unknown model" in one_error_line(missing.stderr)
    assert cli.counts() == {**ZERO, "queued": 1}


@pytest.mark.usefixtures("drop_models")
def test_submit_without_wait_does_not_fetch_the_model(cli: Cli) -> None:
    result = cli.ok(
        "tasks", "submit", "generate", "--model", MODEL, "--prompt", "x", "--label", NOWHERE
    )
    assert result.stderr == ""
    assert not (cli.data_dir / "models" / f"{MODEL}.gguf").exists()


def test_a_rerun_task_shows_only_the_output_of_its_last_run(cli: Cli, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF")
    task_id = submit(cli, "generate", "--model", str(weights), "--prompt", "p", "--label", NOWHERE)
    profile = load_profile(None, data_dir=cli.data_dir, cwd=cli.cwd)
    with open_control_plane(profile) as plane:  # a runner, through the queue's own API
        [first] = plane.queue.claim("runner-1", kinds=["generate"], labels=NOWHERE_LABELS)
        plane.queue.append_output(task_id, first.token, "Once up")
        assert plane.queue.release([(task_id, first.token)], "released: stopping") == 1
        [second] = plane.queue.claim("runner-2", kinds=["generate"], labels=NOWHERE_LABELS)
        plane.queue.append_output(task_id, second.token, "Once upon a time")
        plane.queue.complete(task_id, second.token, {"text": "Once upon a time"})
    task = cli.json("tasks", "show", str(task_id))
    assert task["state"] == "succeeded" and task["attempt"] == 1
    assert task["result"] == {"text": "Once upon a time"}
    assert task["output"] == "Once upon a time"


# -- tasks: usage errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["echo", "--payload", "{not json"], "--payload is not valid JSON"),
        (["echo", "--payload", ""], "--payload is not valid JSON"),
        (["echo", "--payload", "[1, 2]"], "--payload must be a JSON object"),
        (["echo", "--payload", '"text"'], "--payload must be a JSON object"),
        (["echo", "--payload", "42"], "--payload must be a JSON object"),
        (["teleport"], "unknown task kind 'teleport'"),
        (["echo", "--host", "nope"], "unknown host 'nope'"),
        (["generate", "--prompt", "hi"], "needs a model"),
        (["echo", "--label", "zone"], "--label 'zone'"),
        (["echo", "--wait", "--payload", "[]"], "--payload must be a JSON object"),
        (["teleport", "--wait"], "unknown task kind 'teleport'"),
    ],
)
def test_bad_submissions_exit_2_and_queue_nothing(cli: Cli, args: list[str], says: str) -> None:
    result = cli("tasks", "submit", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert says in one_error_line(result.stderr)
    assert result.stdout == ""
    assert cli.counts() == ZERO


def test_max_attempts_below_one_is_a_usage_error(cli: Cli) -> None:
    assert cli("tasks", "submit", "echo", "--max-attempts", "0").exit_code == 2
    assert cli.counts() == ZERO


def test_an_idempotency_key_returns_the_first_task(cli: Cli) -> None:
    first = submit(cli, "echo", "--idempotency-key", "k1", "--payload", '{"v": 1}')
    again = submit(cli, "echo", "--idempotency-key", "k1", "--payload", '{"v": 2}')
    other = submit(cli, "echo", "--idempotency-key", "k2")
    assert again == first and other != first
    assert cli.counts()["queued"] == 2
    assert cli.json("tasks", "show", str(first))["payload"] == {"v": 1}


# -- tasks: cancel and retry -----------------------------------------------------------------


def test_cancel_a_queued_task(cli: Cli) -> None:
    task_id = submit(cli, "echo")
    result = cli.ok("tasks", "cancel", str(task_id))
    assert result.stdout.split() == [str(task_id), "canceled"]
    task = cli.json("tasks", "show", str(task_id))
    assert task["state"] == "canceled"
    assert [e["to_state"] for e in task["events"]][-1:] == ["canceled"]
    again = cli("tasks", "cancel", str(task_id))
    assert again.exit_code == 1
    assert "already canceled" in one_error_line(again.stderr)


def test_cancel_of_a_finished_task_exits_1(cli: Cli) -> None:
    task_id = cli.json("tasks", "submit", "echo", "--wait")["id"]
    result = cli("tasks", "cancel", str(task_id))
    assert result.exit_code == 1
    assert f"task {task_id}: already succeeded" in one_error_line(result.stderr)
    assert cli.json("tasks", "show", str(task_id))["state"] == "succeeded"


def test_cancel_of_several_reports_each(cli: Cli) -> None:
    task_id = submit(cli, "echo")
    result = cli("tasks", "cancel", str(task_id), "999")
    assert result.exit_code == 1
    assert result.stdout.split() == [str(task_id), "canceled"]
    assert "task 999: not found" in one_error_line(result.stderr)
    assert cli.json("tasks", "show", str(task_id))["state"] == "canceled"


def test_retry_of_a_canceled_task_queues_it_and_it_runs(cli: Cli) -> None:
    task_id = submit(cli, "echo", "--payload", '{"again": 1}')
    cli.ok("tasks", "cancel", str(task_id))
    result = cli.ok("tasks", "retry", str(task_id))
    assert result.stdout.split() == [str(task_id), "queued"]
    assert cli.json("tasks", "show", str(task_id))["state"] == "queued"
    run_until_done(cli, [task_id])
    task = cli.json("tasks", "show", str(task_id))
    assert task["state"] == "succeeded" and task["result"] == {"again": 1}
    moves = [(e["from_state"], e["to_state"]) for e in task["events"]]
    assert moves[-4:] == [
        ("queued", "canceled"), ("canceled", "queued"), ("queued", "running"),
        ("running", "succeeded"),
    ]  # fmt: skip


@pytest.mark.parametrize("ids", [["1"], ["999"]])
def test_retry_of_a_queued_or_missing_task_exits_1(cli: Cli, ids: list[str]) -> None:
    submit(cli, "echo")
    result = cli("tasks", "retry", *ids)
    assert result.exit_code == 1
    one_error_line(result.stderr)
    assert cli.json("tasks", "show", "1")["state"] == "queued"


# -- jobs: submit ----------------------------------------------------------------------------


def test_jobs_submit_a_native_file(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "native.jsonl",
        {"kind": "echo", "payload": {"n": 1}, "id": "a"},
        {"kind": "echo", "payload": {"n": 2}, "id": "b", "priority": 3},
        "",
        {"kind": "generate", "model": MODEL, "prompt": "p", "max_tokens": 4},
    )
    result = cli.ok("jobs", "submit", path)
    job_id = int(result.stdout)
    assert f"job {job_id}: 3 bitinglip tasks queued" in one_error_line(result.stderr)
    job = cli.json("jobs", "show", str(job_id))
    assert job["name"] == "native.jsonl" and job["format"] == "bitinglip"
    assert job["total"] == 3 and job["done"] == 0 and job["counts"]["queued"] == 3
    assert job["source"] == str(path.resolve())
    tasks = sorted(cli.json("tasks", "ls", "--job", str(job_id)), key=lambda t: t["line_no"])
    assert [(t["custom_id"], t["line_no"], t["kind"]) for t in tasks] == [
        ("a", 1, "echo"), ("b", 2, "echo"), (None, 4, "generate"),
    ]  # fmt: skip
    assert tasks[1]["priority"] == 3
    assert tasks[2]["payload"] == {"prompt": "p", "max_tokens": 4} and tasks[2]["model"] == MODEL
    assert [j["id"] for j in cli.json("jobs", "ls")] == [job_id]
    assert cli.counts()["queued"] == 3


def test_jobs_submit_an_openai_batch_file(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "batch.jsonl", OPENAI_CHAT, OPENAI_COMPLETION, OPENAI_EMBED)
    job = cli.json("jobs", "submit", path, "--name", "nightly")
    assert job["name"] == "nightly" and job["format"] == "openai" and job["total"] == 3
    tasks = sorted(cli.json("tasks", "ls", "--job", str(job["id"])), key=lambda t: t["line_no"])
    assert [(t["custom_id"], t["kind"], t["model"]) for t in tasks] == [
        ("r1", "chat", MODEL), ("r2", "generate", MODEL), ("r3", "embed", MODEL),
    ]  # fmt: skip
    assert tasks[0]["payload"] == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_jobs_ls_and_show_text(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "two.jsonl", {"kind": "echo"}, {"kind": "echo"})
    job_id = cli.ok("jobs", "submit", path).stdout.strip()
    table = cli.ok("jobs", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "FORMAT"]
    assert table[1].split()[:5] == [job_id, "two.jsonl", "bitinglip", "0", "2"]
    shown = cli.ok("jobs", "show", job_id).stdout
    assert re.search(r"^total\s+2$", shown, re.MULTILINE), shown
    assert cli("jobs", "show", "999").exit_code == 1


GOOD = {"kind": "echo", "payload": {"ok": True}}
NO_ID = {k: v for k, v in OPENAI_CHAT.items() if k != "custom_id"}

BAD_FILES: dict[str, tuple[list[object] | None, int | None, str]] = {
    "bad JSON at line 3": ([GOOD, GOOD, '{"kind": "echo",', GOOD], 3, "not valid JSON"),
    "not an object": ([GOOD, "[1, 2]"], 2, "must be a JSON object"),
    "mixed formats": ([GOOD, OPENAI_CHAT], 2, "one format per file"),
    "mixed formats, openai first": ([OPENAI_CHAT, "", GOOD], 3, "one format per file"),
    "unknown key": ([GOOD, {"kind": "echo", "colour": "red"}], 2, "unknown key 'colour'"),
    "unknown openai key": ([{**OPENAI_CHAT, "extra": 1}], 1, "unknown key 'extra'"),
    "missing custom_id": ([OPENAI_CHAT, NO_ID], 2, "custom_id"),
    "duplicate ids": ([{**GOOD, "id": "x"}, GOOD, {**GOOD, "id": "x"}], 3, "repeats line 1"),
    "duplicate custom_ids": ([OPENAI_CHAT, OPENAI_CHAT], 2, "repeats line 1"),
    "unknown kind": ([{"kind": "teleport"}], 1, "kind must be one of"),
    "generate without model": ([{"kind": "generate", "prompt": "p"}], 1, "'model' is required"),
    "unknown model": (
        [GOOD, {"kind": "generate", "model": "m", "prompt": "p"}],
        2,
        "unknown model 'm'",
    ),
    "unknown model, missing .gguf path": (
        [{"kind": "embed", "model": "/no/such/file.gguf", "input": "x"}],
        1,
        "unknown model '/no/such/file.gguf'",
    ),
    "unknown openai model": (
        [OPENAI_CHAT, "", {**OPENAI_EMBED, "body": {"model": "m", "input": "x"}}],
        3,
        "unknown model 'm'",
    ),
    "unknown host": ([GOOD, {**GOOD, "host": "nope"}], 2, "unknown host 'nope'"),
    "bad line after many good ones": ([GOOD] * 200 + ["{oops"], 201, "not valid JSON"),
    "empty file": ([], None, "no tasks"),
    "blank lines only": (["", "   ", ""], None, "no tasks"),
    "missing file": (None, None, "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_job_file_exits_2_and_queues_nothing(cli: Cli, tmp_path: Path, case: str) -> None:
    lines, line_no, says = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    if lines is not None:
        write_jsonl(path, *lines)
    cli.ok("status")  # the database exists before, so "nothing queued" is checked on it
    result = cli("jobs", "submit", path)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = one_error_line(result.stderr)
    where = f"{path}:{line_no}: " if line_no is not None else f"{path}: "
    assert line.startswith(f"bitinglip: {where}"), line
    assert says in line
    assert result.stdout == ""
    assert cli.counts() == ZERO
    assert cli.json("jobs", "ls") == []


# -- jobs: export ----------------------------------------------------------------------------


def test_export_native_after_the_controller_ran_the_job(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        {"kind": "echo", "payload": {"n": 1}, "id": "a"},
        {"kind": "generate", "model": MODEL, "prompt": "p", "id": 7, "labels": NOWHERE_LABELS},
        "",
        {"kind": "echo", "payload": {"n": 3}},
    )
    job_id = int(cli.ok("jobs", "submit", path).stdout)
    tasks = {t["line_no"]: t for t in cli.json("tasks", "ls", "--job", str(job_id))}
    run_until_done(cli, [tasks[1]["id"], tasks[4]["id"]])
    lines = cli.ok("jobs", "export", str(job_id)).stdout.splitlines()
    assert len(lines) == 3
    out = [json.loads(line) for line in lines]
    assert [(o["id"], o["line"], o["kind"], o["state"]) for o in out] == [
        ("a", 1, "echo", "succeeded"),
        ("7", 2, "generate", "queued"),
        (None, 4, "echo", "succeeded"),
    ]
    assert [o["result"] for o in out] == [{"n": 1}, None, {"n": 3}]
    assert [o["task_id"] for o in out] == [tasks[1]["id"], tasks[2]["id"], tasks[4]["id"]]
    assert all(o["error"] is None for o in out)
    job = cli.json("jobs", "show", str(job_id))
    assert job["done"] == 2 and job["counts"]["succeeded"] == 2 and job["counts"]["queued"] == 1


def test_export_openai_format(cli: Cli, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "batch.jsonl", OPENAI_CHAT, OPENAI_COMPLETION, OPENAI_EMBED)
    job_id = int(cli.ok("jobs", "submit", path).stdout)
    ids = {t["custom_id"]: t["id"] for t in cli.json("tasks", "ls", "--job", str(job_id))}
    cli.ok("tasks", "cancel", str(ids["r2"]))
    out = [json.loads(line) for line in cli.ok("jobs", "export", str(job_id)).stdout.splitlines()]
    assert [o["custom_id"] for o in out] == ["r1", "r2", "r3"]
    for line in out:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"] == f"bitinglip-task-{ids[line['custom_id']]}"
        assert line["response"] is None
    assert [o["error"]["code"] for o in out] == ["not_finished", "canceled", "not_finished"]


def test_export_of_a_missing_job_exits_1(cli: Cli) -> None:
    result = cli("jobs", "export", "999")
    assert result.exit_code == 1
    assert "no job 999" in one_error_line(result.stderr)
    assert result.stdout == ""


# -- profiles --------------------------------------------------------------------------------


def test_profiles_show_applies_the_data_dir_flag(cli: Cli) -> None:
    shown = cli.json("profiles", "show")
    assert shown["name"] == "default" and shown["path"] is None
    assert shown["data_dir"] == str(cli.data_dir)
    assert shown["db_path"] == str(cli.data_dir / "state.db")


def test_profiles_ls_and_check_find_the_builtin_default(cli: Cli) -> None:
    refs = cli.json("profiles", "ls")
    assert {"name": "default", "path": None, "origin": "builtin"} in refs
    result = cli.ok("profiles", "check")
    assert "ok  default  (built in)" in result.stdout
