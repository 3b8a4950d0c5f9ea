"""`bitinglip models fit` against the fake hub: ten quant files, headers only, one command.

The files are llama-shaped GGUFs of ~100 MB each whose tensor data is a sparse hole, so the only
way to read ≤ 1% of them is to stop at the header. The hub counts what it sent per file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bitinglip.cli import app
from bitinglip.config import load_profile
from bitinglip.control.fleet.telemetry_ring import GIB, TelemetryRing
from bitinglip.control.models import hub as hub_client
from bitinglip.control.store.db import open_store
from tests.control.gguf_model import Spec, write_model
from tests.hub.server import Hub

REPO = "fit-org/Fit-Model-GGUF"
# (quant in the name, general.file_type, FFN width: bigger quants, bigger files)
QUANTS = [
    ("IQ2_XS", 20, 1024),
    ("Q2_K", 10, 1280),
    ("Q3_K_M", 12, 1536),
    ("Q4_0", 2, 1792),
    ("Q4_K_M", 15, 2048),
    ("Q5_K_M", 17, 2304),
    ("Q6_K", 18, 2560),
    ("Q8_0", 7, 2816),
    ("BF16", 32, 3072),
    ("F16", 1, 3328),
]
GPUS = [  # free: 0.5 GiB (nothing), 1.05 GiB (a few layers), 23 GiB (everything)
    {"index": 0, "name": "busy", "memory_used_bytes": 79 * GIB + GIB // 2},
    {"index": 1, "name": "tight", "memory_used_bytes": 79 * GIB - GIB // 20},
    {"index": 2, "name": "free", "memory_used_bytes": 57 * GIB},
]


@pytest.fixture
def repo(hub: Hub, tmp_path: Path) -> dict[str, int]:
    """The ten files on the hub, by name with their sizes; the hub has hashed them already."""
    files: dict[str, Path] = {}
    for quant, file_type, ffn in QUANTS:
        spec = Spec(layers=4, embd=1024, ffn=ffn, heads=16, kv_heads=4, vocab=8192, ctx_train=32768)
        name = f"Fit-Model-{quant}.gguf"
        files[name] = write_model(tmp_path / name, replace(spec, file_type=file_type)).path
    hub.add_repo(REPO, dict(files))
    hub_client.list_gguf(REPO)  # the real hub has its hashes ready; do not time ours
    return {name: path.stat().st_size for name, path in files.items()}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir whose state database holds telemetry of the default profile's `local` host."""
    folder = tmp_path / "data"
    profile = load_profile(None, data_dir=str(folder))
    store = open_store(profile.db_path)
    gpus = [gpu | {"memory_total_bytes": 80 * GIB} for gpu in GPUS]
    snapshot = {"at": time.time(), "gpus": gpus, "ram_total_bytes": 64 * GIB, "ram_used_bytes": 0}
    TelemetryRing().record(store, [("local", snapshot)])
    store.close()
    return folder


def fit_json(data_dir: Path, *args: str) -> tuple[dict[str, Any], float]:
    argv = ["--data-dir", str(data_dir), "models", "fit", REPO, "--json", *args]
    started = time.perf_counter()
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report: dict[str, Any] = json.loads(result.stdout)
    return report, seconds


def test_fit_reads_only_headers_of_ten_quants(
    hub: Hub, repo: dict[str, int], data_dir: Path
) -> None:
    sent_before = sum(hub.bytes_sent.values())
    report, seconds = fit_json(data_dir)
    sent = sum(hub.bytes_sent.values()) - sent_before
    total = sum(repo.values())
    print(f"\nmodels fit, 10 files: {seconds:.3f} s in process, {sent:,} of {total:,} bytes")
    assert report["bytes_total"] == total
    assert report["bytes_read"] == sent
    assert sent <= total // 100
    file_gets = [r for r in hub.requests if "/resolve/" in r.path and r.method == "GET"]
    assert len(file_gets) == len(QUANTS)
    assert all(r.headers.get("range", "").startswith("bytes=0-") for r in file_gets)
    verdicts = report["verdicts"]
    assert len(verdicts) == len(QUANTS) * len(GPUS)
    by_gpu = {g["index"]: [v for v in verdicts if v["gpu"] == g["index"]] for g in GPUS}
    assert {v["verdict"] for v in by_gpu[0]} == {"does not fit"}
    assert {v["verdict"] for v in by_gpu[2]} == {"fits"}
    assert [v["quant"] for v in by_gpu[2]] == [q for q, _, _ in QUANTS]
    tight = [v["layers_on_gpu"] for v in by_gpu[1]]
    assert all(v["verdict"] == "partial" for v in by_gpu[1]), by_gpu[1]
    assert tight == sorted(tight, reverse=True) and tight[0] > tight[-1]  # bigger, fewer layers


def test_fit_as_a_command(hub: Hub, repo: dict[str, int], data_dir: Path) -> None:
    """The whole command in a fresh process (imports included), the hub's numbers printed."""
    argv = [sys.executable, "-m", "bitinglip", "--data-dir", str(data_dir), "models", "fit", REPO]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    print(f"\nmodels fit, 10 files, as a process: {seconds:.3f} s\n{done.stdout}{done.stderr}")
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "QUANT",
        "HOST",
        "GPU",
        "DEVICE",
        "VERDICT",
        "LAYERS",
        "NEED",
        "GIB",
        "FREE",
        "GIB",
    ]
    assert len(lines) == 1 + len(QUANTS) * len(GPUS)
    assert "read " in done.stderr and "Traceback" not in done.stderr


def test_without_telemetry_it_prints_the_needs(
    hub: Hub, repo: dict[str, int], tmp_path: Path
) -> None:
    argv = ["--data-dir", str(tmp_path / "empty"), "models", "fit", REPO, "--ctx", "8192"]
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "no telemetry stored yet" in result.stderr
    assert "local: no telemetry yet" in result.stderr
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [q for q, _, _ in QUANTS]


def test_a_repo_without_gguf_files_is_one_line(hub: Hub, tmp_path: Path) -> None:
    hub.add_repo("fit-org/empty", {"README.md": b"# nothing"})
    argv = ["--data-dir", str(tmp_path / "d"), "models", "fit", "fit-org/empty"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("bitinglip: fit-org/empty@")
        and "has no .gguf files" in result.stderr
    )
