"""The agent speaks the protocol on stdio and survives anything sent to it."""

from __future__ import annotations

import enum
import importlib.util
import json
import sys
from collections.abc import Iterator

import pytest
from bitinglip_agent import protocol
from bitinglip_agent.protocol import FROM_AGENT, TO_AGENT, ProtocolError

from tests.agents.agent_proc import AgentProc


@pytest.fixture
def agent() -> Iterator[AgentProc]:
    proc = AgentProc("--telemetry-interval", "0")
    yield proc
    proc.close()


@pytest.mark.parametrize("msg_type", sorted(TO_AGENT | FROM_AGENT))
def test_every_message_type_round_trips(msg_type: str) -> None:
    line = protocol.encode(msg_type, "id-1", payload={"x": [1, "ü"]})
    accepted = TO_AGENT if msg_type in TO_AGENT else FROM_AGENT
    msg = protocol.decode(line, accepted)
    assert (msg["v"], msg["type"], msg["id"], msg["payload"]) == (
        1,
        msg_type,
        "id-1",
        {"x": [1, "ü"]},
    )
    assert line.endswith(b"\n") and line.count(b"\n") == 1


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"v": 99, "type": "ping"}', "version_mismatch"),
        (b'{"v": 1, "type": "teleport"}', "unknown_type"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_decode_refuses_bad_lines(line: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(line, TO_AGENT)
    assert err.value.code == code


def test_hello_reports_version_facts_and_capabilities(agent: AgentProc) -> None:
    hello = agent.next("hello")
    assert hello["protocol"] == protocol.PROTOCOL_VERSION
    assert {"hostname", "os", "python", "cpu_count", "ram_bytes"} <= set(hello["host"])
    assert set(hello["capabilities"]) == {"llama_cpp", "huggingface_hub", "psutil", "pynvml"}
    assert hello["capabilities"]["psutil"] is True
    assert hello["kinds"] == list(protocol.KINDS)  # every kind the queue takes


def test_the_task_vocabulary_is_the_same_on_a_python_without_strenum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent host's python may be 3.9 (no enum.StrEnum): kinds and states are still their
    values wherever a string is (compared, looked up, formatted, sent as JSON)."""
    monkeypatch.setattr(sys, "version_info", (3, 9, 0))
    spec = importlib.util.spec_from_file_location("protocol_on_py39", protocol.__file__)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    monkeypatch.undo()
    assert old.StrEnum is not enum.StrEnum  # the stand-in, not 3.11's
    embed, canceled = old.TaskKind.EMBED, old.TaskState.CANCELED
    assert (embed == "embed", {"embed": 1}.get(embed), "chat" in old.MODEL_KINDS) == (True, 1, True)
    assert (str(embed), f"{embed}", f"{canceled:>9}|") == ("embed", "embed", " canceled|")
    assert ", ".join(old.JOB_KINDS) == "echo, generate, chat, embed"
    line = old.encode("hello", kinds=list(old.KINDS), done=sorted(old.TERMINAL))
    assert protocol.decode(line, FROM_AGENT)["kinds"] == list(protocol.KINDS)
    assert protocol.decode(line, FROM_AGENT)["done"] == sorted(protocol.TERMINAL)


def test_bad_messages_get_errors_and_the_agent_stays_up(agent: AgentProc) -> None:
    agent.next("hello")
    cases = [
        (b"{not json\n", "malformed"),
        (b'{"v": 1, "type": "teleport", "id": "t1"}\n', "unknown_type"),
        (b'{"v": 7, "type": "ping", "id": "p0"}\n', "version_mismatch"),
        (b"x" * (10 * 1024 * 1024) + b"\n", "line_too_long"),
        (b'{"v": 1, "type": "run", "id": "r0"}\n', "bad_request"),
        (b'{"v": 1, "type": "run", "id": "r1", "task": {"kind": "bench"}}\n', "unsupported"),
        (b'{"v": 1, "type": "run", "id": "r1", "task": {"kind": "pull"}}\n', "bad_request"),
        (b'{"v": 1, "type": "run", "id": "r2", "task": {"kind": "generate"}}\n', "bad_request"),
    ]
    for raw, code in cases:
        agent.send_raw(raw)
        reply = agent.next("error")
        assert reply["code"] == code, reply
        assert reply["retryable"] is False
    agent.send("ping", "p1")
    assert agent.next("pong")["id"] == "p1"


def test_echo_runs_at_once(agent: AgentProc) -> None:
    agent.send("run", "7.1", task={"id": 7, "kind": "echo", "payload": {"a": [1, 2]}})
    reply = agent.next("result")
    assert (reply["id"], reply["result"]) == ("7.1", {"a": [1, 2]})


def test_shutdown_and_eof_end_the_agent(agent: AgentProc) -> None:
    agent.next("hello")
    agent.send("shutdown")
    assert agent.proc.wait(10) == 0


def test_telemetry_is_pushed_at_the_interval() -> None:
    proc = AgentProc("--telemetry-interval", "0.1")
    try:
        first = proc.next("telemetry")["snapshot"]
        second = proc.next("telemetry")["snapshot"]
        assert 0.05 < second["at"] - first["at"] < 1.0
        json.dumps(second)
    finally:
        proc.close()


def test_without_optional_packages_it_says_so_and_reads_proc() -> None:
    proc = AgentProc("--telemetry-interval", "0.1", isolated=True)
    try:
        hello = proc.next("hello")
        assert not any(hello["capabilities"].values())
        snapshot = proc.next("telemetry")["snapshot"]
        assert snapshot["source"] == "proc" and snapshot["gpus"] == []
        assert "pynvml" in snapshot["gpu_error"]
        proc.send("run", "1.1", task={"id": 1, "kind": "echo", "payload": 5})
        assert proc.next("result")["result"] == 5
    finally:
        assert proc.close() == 0
