"""Many streams at once through one gateway, and a client that hangs up mid-stream: its task is
canceled, and the other streams finish untouched."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.tasks import TaskState
from bitinglip.gateway.server import Served
from tests.gateway.conftest import MODEL, client, needs_model

pytestmark = needs_model

STREAMS = 32


def stream_one(served: Served, n: int) -> tuple[str, str | None]:
    chunks = list(
        client(served).completions.create(
            model=MODEL, prompt=f"Count to {n}:", max_tokens=3, temperature=0, seed=n, stream=True
        )
    )
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason


def start_leaver(served: Served) -> tuple[http.client.HTTPConnection, int]:
    """A long stream, read until its first text arrives (its task is running then)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    body = {"model": MODEL, "prompt": "Tell a long story:", "max_tokens": 400, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    task_id = int(response.getheader("X-Bitinglip-Task") or 0)
    while True:
        line = response.readline()
        assert line, "the stream ended before any text"
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["text"]:
            return conn, task_id


def test_32_streams_complete_while_a_client_that_left_is_canceled(
    served: Served, observer: ControlPlane
) -> None:
    leaver, leaver_task = start_leaver(served)
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(stream_one, served, n) for n in range(STREAMS)]
        time.sleep(0.3)
        assert observer.task(leaver_task).state == TaskState.RUNNING
        assert leaver.sock is not None
        leaver.sock.shutdown(socket.SHUT_RDWR)  # hang up mid-stream
        leaver.close()
        results = [f.result(timeout=120) for f in futures]
    assert len(results) == STREAMS
    for text, finish in results:
        assert text and finish in ("stop", "length")
    task = observer.wait(leaver_task, timeout=10)
    assert task.state == TaskState.CANCELED
    assert len(observer.output(leaver_task)) < 400 * 4  # stopped well before its 400 tokens
    counts = observer.status()["tasks"]
    assert counts["queued"] == counts["running"] == 0
