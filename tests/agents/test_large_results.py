"""Results larger than a protocol line: split into `result_part` lines by the agent, joined by the
control plane's session; over the cap, or a line over the line limit, the ONE run fails at once.

The session tests use the real LocalTransport and a real agent subprocess. Where the agent must
behave otherwise than by default (lower limits, or an agent that does not split), its process is
started through a small `python` wrapper that sets protocol constants before running the agent:
the same code, other numbers.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bitinglip_agent import protocol
from bitinglip_agent.protocol import FROM_AGENT, Parts, ProtocolError

from bitinglip.control.transport.local import LocalTransport
from bitinglip.control.transport.sessions import AgentSession, Incoming

ANSWER_S = 60.0  # generous: a loaded 2-core machine; a run left in flight never answers


# -- the protocol's functions ----------------------------------------------------------------


def _lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def test_a_long_result_goes_in_parts_and_joins_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "RESULT_PART_BYTES", 100)
    result = {"text": 'quotes " and \\ backslashes, ünïcödé ✓ ' * 20, "n": list(range(50))}
    line = protocol.encode("result", "7.1", result=result)
    sent = protocol.split_result(line, "7.1")
    parts = _lines(sent)
    assert len(parts) > 5 and {p["type"] for p in parts} == {"result_part"}
    assert [p["part"] for p in parts] == list(range(len(parts)))
    joiner = Parts()
    got = [joiner.add(protocol.decode(raw, FROM_AGENT)) for raw in sent.splitlines(keepends=True)]
    assert got[:-1] == [None] * (len(parts) - 1)
    assert got[-1] is not None and got[-1]["type"] == "result" and got[-1]["result"] == result


def test_a_short_result_is_one_line_as_before() -> None:
    line = protocol.encode("result", "7.1", result={"x": 1})
    assert protocol.split_result(line, "7.1") is line


def test_parts_over_the_cap_fail_the_run_and_the_rest_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protocol, "RESULT_PART_BYTES", 100)
    sent = protocol.split_result(protocol.encode("result", "7.1", result="x" * 1000), "7.1")
    monkeypatch.setattr(protocol, "RESULT_MAX_BYTES", 250)
    joiner = Parts()
    messages = [protocol.decode(raw, FROM_AGENT) for raw in sent.splitlines(keepends=True)]
    assert joiner.add(messages[0]) is None and joiner.add(messages[1]) is None
    with pytest.raises(ProtocolError) as refused:
        joiner.add(messages[2])  # 300 characters now: over the cap, at once
    assert refused.value.code == "result_too_large" and refused.value.msg_id == "7.1"
    assert all(joiner.add(m) is None for m in messages[3:])  # the rest: dropped quietly
    # The next result of another run joins as usual.
    again = protocol.split_result(protocol.encode("result", "8.1", result="y" * 150), "8.1")
    ends = [joiner.add(protocol.decode(r, FROM_AGENT)) for r in again.splitlines(keepends=True)]
    assert ends[-1] is not None and ends[-1]["result"] == "y" * 150


def test_parts_of_two_results_interleaved_fail_the_intruder_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One result is joined at a time: what an agent can make the control plane hold is bounded
    by one result's cap, whatever it sends."""
    monkeypatch.setattr(protocol, "RESULT_PART_BYTES", 100)
    first, second = (
        [
            protocol.decode(raw, FROM_AGENT)
            for raw in protocol.split_result(
                protocol.encode("result", run_id, result=run_id * 200), run_id
            ).splitlines(keepends=True)
        ]
        for run_id in ("1.1", "2.1")
    )
    joiner = Parts()
    assert joiner.add(first[0]) is None
    with pytest.raises(ProtocolError) as refused:
        joiner.add(second[0])
    assert refused.value.code == "malformed" and refused.value.msg_id == "2.1"
    assert all(joiner.add(m) is None for m in second[1:])  # the intruder's rest: dropped
    ends = [joiner.add(m) for m in first[1:]]
    assert ends[-1] is not None and ends[-1]["result"] == "1.1" * 200


def test_an_over_long_line_is_refused_with_the_id_its_start_names() -> None:
    line = protocol.encode("result", "12.3", result="z" * (protocol.MAX_LINE_BYTES + 10))
    with pytest.raises(ProtocolError) as refused:
        protocol.decode(line[: protocol.MAX_LINE_BYTES + 1], FROM_AGENT)  # as read_line cuts it
    assert refused.value.code == "line_too_long" and refused.value.msg_id == "12.3"


# -- a real agent behind a real session ------------------------------------------------------


Session = tuple[AgentSession, "queue.Queue[Incoming]"]


def _wrapper(tmp_path: Path, **constants: int) -> str:
    """A `python` for LocalTransport that sets protocol constants, then runs the agent."""
    sets = "".join(f"p.{name} = {value}; " for name, value in constants.items())
    code = (
        f"import bitinglip_agent.protocol as p; {sets}"
        "import runpy; runpy.run_module('bitinglip_agent', run_name='__main__')"
    )
    path = tmp_path / "agent-python"
    path.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} -c "{code}" "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def start_session() -> Iterator[Any]:
    started: list[AgentSession] = []

    def start(python: str | None = None) -> Session:
        inbox: queue.Queue[Incoming] = queue.Queue()
        transport = LocalTransport("local", ["--telemetry-interval", "0"], python=python)
        session = AgentSession("local", transport, inbox.put)
        started.append(session)
        session.start()
        _next(inbox, "hello")
        return session, inbox

    yield start
    for session in started:
        session.shutdown()


def _next(inbox: queue.Queue[Incoming], *types: str) -> dict[str, Any]:
    deadline = time.monotonic() + ANSWER_S
    while True:
        try:
            incoming = inbox.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"no {'/'.join(types)} in {ANSWER_S:g} s") from None
        assert incoming.msg is not None, f"the agent went away: {incoming.reason}"
        if incoming.msg["type"] in types:
            return incoming.msg


def _echo(session: AgentSession, task_id: int, payload: object) -> str:
    session.run([(task_id, 1, "echo", {"id": task_id, "kind": "echo", "payload": payload})])
    return f"{task_id}.1"


def test_a_result_of_several_parts_arrives_whole(start_session: Any) -> None:
    """The default part size: a 3 MiB result goes as parts and comes to the loop as one."""
    session, inbox = start_session()
    payload = {"vectors": [[0.123456789] * 1000 for _ in range(300)], "note": 'a "quote" ✓'}
    assert len(json.dumps(payload)) > 3 * protocol.RESULT_PART_BYTES
    run_id = _echo(session, 1, payload)
    msg = _next(inbox, "result", "error")
    assert msg["type"] == "result" and msg["id"] == run_id
    assert msg["result"] == payload


def test_small_parts_from_the_agent_join_in_order(start_session: Any, tmp_path: Path) -> None:
    session, inbox = start_session(_wrapper(tmp_path, RESULT_PART_BYTES=1000))
    payloads = [[f'item {n} ✓ "{i}"' for i in range(300)] for n in range(3)]
    ids = [_echo(session, n + 1, payload) for n, payload in enumerate(payloads)]
    got = {}
    for _ in ids:
        msg = _next(inbox, "result", "error")
        got[msg["id"]] = msg.get("result", msg)
    assert got == dict(zip(ids, payloads, strict=True))


def test_a_result_over_the_agents_cap_fails_its_run_at_once(
    start_session: Any, tmp_path: Path
) -> None:
    session, inbox = start_session(_wrapper(tmp_path, RESULT_MAX_BYTES=1 << 20))
    big = _echo(session, 1, "x" * (2 << 20))
    small = _echo(session, 2, "fine")
    failed = _next(inbox, "result", "error")
    assert failed["type"] == "error" and failed["id"] == big
    assert failed["code"] == "result_too_large" and "1 MiB" in failed["message"]
    assert _next(inbox, "result", "error") == {
        "v": 1,
        "type": "result",
        "id": small,
        "result": "fine",
    }


def test_a_result_over_the_control_planes_cap_fails_its_run_at_once(
    start_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent (default cap) sends it in parts; the session stops at the cap, not the end."""
    monkeypatch.setattr(protocol, "RESULT_MAX_BYTES", 2 << 20)
    session, inbox = start_session()
    big = _echo(session, 1, "x" * (6 << 20))
    failed = _next(inbox, "result", "error")
    assert failed["type"] == "error" and failed["id"] == big
    assert failed["code"] == "result_too_large" and failed["retryable"] is False
    assert "2 MiB" in failed["message"], failed["message"]
    after = _echo(session, 2, "after")
    assert _next(inbox, "result", "error")["id"] == after  # still serving


def test_an_over_long_result_line_fails_its_run_at_once(start_session: Any, tmp_path: Path) -> None:
    """An agent that sends a result in one line over the line limit (this one accepts long
    lines and does not split): the session refuses the line and fails the run it names."""
    huge = 1 << 40
    python = _wrapper(tmp_path, MAX_LINE_BYTES=huge, RESULT_PART_BYTES=huge)
    session, inbox = start_session(python)
    big = _echo(session, 1, "x" * (protocol.MAX_LINE_BYTES + 100))
    failed = _next(inbox, "result", "error")
    assert failed["type"] == "error" and failed["id"] == big and failed["code"] == "line_too_long"
    assert "8 MiB" in failed["message"]
    after = _echo(session, 2, "after")
    assert _next(inbox, "result", "error")["id"] == after


def test_an_over_long_run_line_fails_that_run_at_once(start_session: Any) -> None:
    """The agent refuses a `run` over the line limit and names it: the run fails at once."""
    session, inbox = start_session()
    big = _echo(session, 1, "x" * (protocol.MAX_LINE_BYTES + 100))
    failed = _next(inbox, "result", "error")
    assert failed["type"] == "error" and failed["id"] == big and failed["code"] == "line_too_long"
    after = _echo(session, 2, "after")
    assert _next(inbox, "result", "error")["id"] == after
