"""What one /v1/embeddings request may ask for: inputs × the model's embedding width (640 for
gemma-3-270m, from its GGUF header) up to 2^20 floats. A large normal request (700 short
inputs: an ~18 KB body, a ~9.6 MB answer) goes through `bitinglip serve` on the built-in default
profile and leaves the host's slot free; one over the cap is a 400 that says the limit, what was
asked and what to do, and queues nothing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bitinglip.config import DEFAULT_PROFILE_TOML, parse_profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.gateway.server import Served
from bitinglip.gateway.widths import MAX_EMBED_FLOATS
from tests.cli.conftest import COMMAND, hermetic_env
from tests.gateway.conftest import MODEL, assert_error_object, needs_model, request

pytestmark = needs_model

WIDTH = 640  # gemma-3-270m's embedding_length
WORDS = ["red", "green", "blue", "cat", "dog", "sun", "tree", "house"]
ANSWER_WITHIN_S = 300.0  # generous: 700 embeddings on a loaded 2-core machine take ~a minute


def test_a_request_over_the_float_cap_is_a_400(served: Served, observer: ControlPlane) -> None:
    before = sum(observer.status()["tasks"].values())
    most = MAX_EMBED_FLOATS // WIDTH  # 1638
    body = {"model": MODEL, "input": ["x"] * (most + 1)}
    error = assert_error_object(request(served, "POST", "/v1/embeddings", body), 400)
    assert error["param"] == "input" and error["code"] == "request_too_large"
    message = error["message"]
    assert f"{most + 1} embeddings of {MODEL} ({WIDTH} floats each)" in message
    assert f"over the limit of {MAX_EMBED_FLOATS:,} per request" in message
    assert f"send at most {most} inputs per request" in message
    too_many = {"model": MODEL, "input": ["x"] * 2049}
    assert assert_error_object(request(served, "POST", "/v1/embeddings", too_many), 400)
    assert sum(observer.status()["tasks"].values()) == before  # nothing queued


def post_json(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    sent = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(sent, timeout=timeout) as reply:
        return int(reply.status), reply.read()


@pytest.mark.slow
def test_700_inputs_through_serve_answer_and_free_the_slot(
    tmp_path: Path, demo_model: Path
) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o700)
    (data / "models" / f"{MODEL}.gguf").symlink_to(demo_model)  # what serve would assemble
    proc = subprocess.Popen(
        [*COMMAND, "--data-dir", str(data), "serve", "--port", "0"],
        cwd=tmp_path,
        env=hermetic_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = []  # the lines before it (a warning, say)
        while not (line := proc.stderr.readline()).startswith("bitinglip: serving") and line:
            said.append(line)
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)/v1 \(profile default,", line)
        assert found, said
        # The report's ~18 KB body ("short input number N" x 700) at 3 tokens an input, not 8:
        # a word and a run of spaces (llama.cpp's time is the tokens', ~10 ms each here).
        inputs = [f"{WORDS[i % len(WORDS)]:<22}" for i in range(700)]
        body = json.dumps({"model": MODEL, "input": inputs}).encode()
        assert 15_000 < len(body) < 30_000
        status, answer = post_json(f"{found.group(1)}/v1/embeddings", body, ANSWER_WITHIN_S)
        assert status == 200
        vectors = [d["embedding"] for d in json.loads(answer)["data"]]
        assert len(vectors) == 700 and {len(v) for v in vectors} == {WIDTH}
        assert len(answer) > 5_000_000  # over one 8 MiB protocol line? ~9.6 MB as JSON here
        profile = parse_profile(DEFAULT_PROFILE_TOML, name="default", path=None, data_dir=data)
        with open_control_plane(profile) as plane:
            deadline = time.monotonic() + 30
            while (counts := plane.status()["tasks"])["running"] and time.monotonic() < deadline:
                time.sleep(0.2)
        assert counts["running"] == counts["queued"] == 0 and counts["succeeded"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
