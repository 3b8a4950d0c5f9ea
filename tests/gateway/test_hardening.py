"""What a web page, an anonymous caller and a hostile body can do to the gateway: a foreign Host
and a non-JSON POST are refused before anything is read; without a key nobody learns host
names, pids or paths (/health is the status alone, /metrics and /v1/models leave hosts out, a
failed task is a generic message with its id); bodies nested too deeply, numbers too long and
non-string roles are 400s logged in one line, never 500s with a traceback."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskState
from bitinglip.gateway.server import Served
from tests.gateway.conftest import (
    KEY,
    MODEL,
    assert_error_object,
    client,
    needs_model,
    request,
)

pytestmark = needs_model

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BEARER = {"Authorization": f"Bearer {KEY}"}
Start = Callable[..., AbstractContextManager[Served]]


def tasks_in(plane: ControlPlane) -> int:
    return sum(plane.status()["tasks"].values())


# -- item 7: Host and Content-Type -----------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.7", "[fe80::1]:80"])
def test_a_foreign_host_is_refused_without_keys(
    served: Served, observer: ControlPlane, host: str
) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1."""
    before = tasks_in(observer)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    for method, path, sent in (("POST", COMPLETIONS, body), ("GET", "/v1/models", None)):
        reply = request(served, method, path, sent, headers={"Host": host})
        error = assert_error_object(reply, 421)
        assert error["code"] == "misdirected_request"
        assert "localhost" in error["message"] and "\n" not in error["message"]
    assert_error_object(request(served, "GET", "/health", headers={"Host": host}), 421)
    assert tasks_in(observer) == before  # nothing queued


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}"]
)
def test_loopback_hosts_are_answered_without_keys(served: Served, host: str) -> None:
    reply = request(served, "GET", "/v1/models", headers={"Host": host.format(port=served.port)})
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_post_that_is_not_json_is_refused(
    served: Served, observer: ControlPlane, content_type: str | None
) -> None:
    """CSRF: a page may POST text/plain to localhost without a preflight."""
    before = tasks_in(observer)
    raw = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
    reply = request(served, "POST", COMPLETIONS, raw, headers={"Content-Type": content_type})
    error = assert_error_object(reply, 415)
    assert error["code"] == "unsupported_media_type"
    assert "application/json" in error["message"]
    assert tasks_in(observer) == before


def test_json_with_a_charset_passes(served: Served) -> None:
    headers = {"Content-Type": "Application/JSON; charset=utf-8"}
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    assert request(served, "POST", COMPLETIONS, body, headers=headers).status == 200


def test_with_keys_any_host_may_call_with_the_key_and_posts_are_still_json(
    keyed: Served,
) -> None:
    foreign = {"Host": "gateway.example.org", **BEARER}
    assert request(keyed, "GET", "/v1/models", headers=foreign).status == 200
    assert_error_object(request(keyed, "GET", "/v1/models", headers={"Host": "x.example"}), 401)
    raw = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
    plain = {"Content-Type": "text/plain", **BEARER}
    assert_error_object(request(keyed, "POST", COMPLETIONS, raw, headers=plain), 415)
    assert client(keyed, KEY).completions.create(model=MODEL, prompt="hi", max_tokens=1).choices


# -- item 8: what callers without a key learn ---------------------------------------------------


def wait_health(served: Served, headers: dict[str, str] | None = None) -> dict[str, object]:
    """/health once the bridge has refreshed after the agent said hello."""
    deadline = time.monotonic() + 30
    while True:
        reply = request(served, "GET", "/health", headers=headers)
        found = reply.json()
        if found["status"] == "ok" or time.monotonic() > deadline:
            assert reply.status == 200, found
            return dict(found)
        time.sleep(0.2)


def test_health_without_a_key_is_the_status_alone(served: Served, keyed: Served) -> None:
    assert wait_health(served) == {"status": "ok"}
    assert wait_health(keyed) == {"status": "ok"}
    wrong = {"Authorization": "Bearer sk-wrong"}
    assert request(keyed, "GET", "/health", headers=wrong).json() == {"status": "ok"}


def test_health_with_the_key_has_the_controller_and_hosts(keyed: Served) -> None:
    health = wait_health(keyed, BEARER)
    assert health["embedded"] is True
    controller = health["controller"]
    assert isinstance(controller, dict) and controller["alive"] is True and controller["pid"]
    hosts = health["hosts"]
    assert isinstance(hosts, list) and len(hosts) == 1
    host = hosts[0]
    assert host["name"] == "local" and host["healthy"] and host["connected"]


def host_labelled(served: Served, headers: dict[str, str] | None = None) -> list[str]:
    reply = request(served, "GET", "/metrics", headers=headers)
    assert reply.status == 200
    return [line for line in reply.body.decode().splitlines() if 'host="' in line]


def test_metrics_without_a_key_leave_hosts_out(served: Served, keyed: Served) -> None:
    client(served).completions.create(model=MODEL, prompt="hi", max_tokens=1)
    reply = request(served, "GET", "/metrics").body.decode()
    assert "bitinglip_tasks{" in reply
    assert re.search(r"^bitinglip_controller_up 1(\.0)?$", reply, re.MULTILINE)
    assert host_labelled(served) == []
    assert "bitinglip_host_" not in reply
    deadline = time.monotonic() + 10  # the keyed gateway's agent reports within a second or so
    while not (found := host_labelled(keyed, BEARER)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(re.fullmatch(r'bitinglip_host_connected\{host="local"\} 1(\.0)?', x) for x in found)


def test_models_without_a_key_name_no_hosts(served: Served) -> None:
    [model] = request(served, "GET", "/v1/models").json()["data"]
    assert set(model) == {"id", "object", "created", "owned_by", "source", "names"}
    assert set(request(served, "GET", f"/v1/models/{MODEL}").json()) == set(model)


def test_a_failed_task_is_a_generic_message_with_its_id(
    serve_profile: Start, tmp_path: Path
) -> None:
    """A broken model file: the agent's error names its path; the client learns only the task's
    id and where the operator reads why, and `bitinglip tasks show` keeps the details."""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 4096)
    with serve_profile(junk) as served:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        reply = request(served, "POST", COMPLETIONS, body)
        assert reply.status in (400, 502), reply.body
        message = assert_error_object(reply, reply.status)["message"]
        found = re.search(r"\(task (\d+); ", message)
        assert found, message
        task_id = int(found.group(1))
        assert message.endswith(
            f"(task {task_id}; the operator can see why with: bitinglip tasks show {task_id})"
        ), message
        profile = served.bridge.profile
        assert str(profile.data_dir) not in message and "gguf" not in message.lower()
        with open_control_plane(profile) as plane:
            task = plane.wait(task_id, timeout=30)
        assert task.state in (TaskState.FAILED, TaskState.DEAD)
        assert task.error and "gguf" in task.error.lower()  # the operator's details


def test_a_prompt_over_the_context_says_so_and_no_more(served: Served) -> None:
    body = {"model": MODEL, "prompt": "word " * 20000, "max_tokens": 2}
    error = assert_error_object(request(served, "POST", COMPLETIONS, body), 400)
    assert error["message"].startswith(
        "the task failed: the prompt is longer than the model's context window (task "
    )
    assert "Requested tokens" not in error["message"]


# -- item 10: bodies that broke the parser -------------------------------------------------------

HOSTILE = [
    (COMPLETIONS, b'{"model": "x", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    (COMPLETIONS, b"[" * 100_000),
    (COMPLETIONS, b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    (COMPLETIONS, b'{"model": "gemma-3-270m", "prompt": "hi", "seed": ' + b"9" * 5000 + b"}"),
    (CHAT, json.dumps({"model": MODEL, "messages": [{"role": 5, "content": "hi"}]}).encode()),
    (COMPLETIONS, json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2**70}).encode()),
    (COMPLETIONS, json.dumps({"model": MODEL, "prompt": "hi", "top_k": 2**70}).encode()),
    (COMPLETIONS, json.dumps({"model": MODEL, "prompt": "hi", "seed": 2**70}).encode()),
    (
        CHAT,
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": -1}
        ).encode(),
    ),
    (
        CHAT,
        json.dumps({"model": MODEL, "messages": [{"role": ["user"], "content": "hi"}]}).encode(),
    ),
    (
        CHAT,
        json.dumps({"model": MODEL, "messages": [{"role": {"a": 1}, "content": "hi"}]}).encode(),
    ),
]


@pytest.mark.parametrize(("path", "raw"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bodies_are_400s_in_one_log_line(
    served: Served,
    observer: ControlPlane,
    caplog: pytest.LogCaptureFixture,
    path: str,
    raw: bytes,
) -> None:
    before = tasks_in(observer)
    with caplog.at_level(logging.INFO, logger="bitinglip.gateway"):
        error = assert_error_object(request(served, "POST", path, raw), 400)
    assert "\n" not in error["message"] and len(error["message"]) < 400
    mine = [r for r in caplog.records if r.name.startswith("bitinglip.gateway")]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert mine[0].levelno == logging.INFO and mine[0].exc_info is None
    assert "\n" not in mine[0].getMessage()
    assert tasks_in(observer) == before
