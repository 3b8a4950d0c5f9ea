"""`bitinglip models`: search, files, ls, inspect and rm, against the fake hub and real files."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import gguf
import pytest

from bitinglip.cli import app
from bitinglip.cli import models as models_cli
from bitinglip.control.models import hub as hf
from bitinglip.control.models import registry
from bitinglip.control.models.hub import HubFile
from bitinglip.control.store.db import Store, open_store
from bitinglip.readable import human_size
from tests.cli.conftest import Cli, Proc, stderr_lines
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub

REPO = "org/tiny-GGUF"
Q8 = tiny_gguf(seed=1, n_layers=3, context_length=512)
F16 = tiny_gguf(seed=2, file_type=1)
# 4 MiB of embeddings: inspecting it over the hub must read the header, not this.
BIG = tiny_gguf(seed=3, embedding_length=1 << 17)


@pytest.fixture
def commit(hub: Hub) -> str:  # noqa: F811
    return hub.add_repo(
        REPO,
        {"tiny-Q8_0.gguf": Q8, "tiny-F16.gguf": F16, "big-Q4_K_M.gguf": BIG, "README.md": b"x"},
        downloads=42,
        likes=7,
    )


def store_of(cli: Cli) -> Store:
    return open_store(cli.data_dir / "state.db")


def register_ready(cli: Cli, path: Path, data: bytes, host: str = "local") -> int:
    """Register a file of REPO as if pulled, its ready copy at `path` on `host`."""
    path.write_bytes(data)
    name = f"copy-{hf.parse_quant(path.name)}.gguf"
    file = HubFile(
        REPO, "c" * 40, name, len(data), hashlib.sha256(data).hexdigest(), hf.parse_quant(name), ""
    )
    store = store_of(cli)
    try:
        model_id = registry.register(store, file)
        registry.set_host_state(store, host, model_id, "ready", path=str(path))
    finally:
        store.close()
    return model_id


# -- the hub ---------------------------------------------------------------------------------


def test_search_as_table_and_json(cli: Cli, commit: str) -> None:
    found = cli.json("models", "search", "tiny", "--sort", "likes", "--limit", "5")
    assert [(r["id"], r["downloads"], r["likes"], r["gated"]) for r in found] == [
        (REPO, 42, 7, False)
    ]
    table = cli.ok("models", "search", "tiny").stdout.splitlines()
    assert table[0].split() == ["REPO", "DOWNLOADS", "LIKES", "UPDATED", "GATED"]
    assert table[1].split()[:3] == [REPO, "42", "7"]
    empty = cli.ok("models", "search", "nothing-like-this")
    assert empty.stdout == "" and "no repos match" in empty.stderr


def test_files_lists_quants_sizes_and_sha256(cli: Cli, commit: str) -> None:
    listed = cli.json("models", "files", REPO)
    assert (listed["repo"], listed["revision"], listed["commit"]) == (REPO, "main", commit)
    assert [(f["name"], f["quant"], f["size"]) for f in listed["files"]] == [
        ("big-Q4_K_M.gguf", "Q4_K_M", len(BIG)),
        ("tiny-F16.gguf", "F16", len(F16)),
        ("tiny-Q8_0.gguf", "Q8_0", len(Q8)),
    ]
    assert listed["files"][2]["sha256"] == hashlib.sha256(Q8).hexdigest()
    shown = cli.ok("models", "files", REPO)
    assert f"commit {commit}" in shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("tiny-Q8_0"))
    size = human_size(len(Q8))
    assert row.split() == [
        "tiny-Q8_0.gguf",
        "Q8_0",
        *size.split(),
        hashlib.sha256(Q8).hexdigest()[:12],
    ]


def test_inspect_a_hub_file_reads_only_its_header(cli: Cli, hub: Hub, commit: str) -> None:  # noqa: F811
    meta = cli.json("models", "inspect", f"{REPO}:q4_k_m")
    assert meta["read_from"] == "hub"
    assert (meta["architecture"], meta["layers"], meta["context_length"]) == ("llama", 2, 256)
    assert (meta["quant"], meta["file_size"]) == ("Q8_0", len(BIG))  # file_type in the header
    assert meta["parameters"] == 8 * (1 << 17) + 3 * (1 << 17)  # embeddings + 3 norms
    sent = hub.bytes_sent[f"{REPO}/big-Q4_K_M.gguf"]
    assert sent == meta["bytes_read"] and sent * 10 < len(BIG)


def test_inspect_a_local_file_agrees_with_gguf_py(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "local-Q8_0.gguf"
    path.write_bytes(Q8)
    meta = cli.json("models", "inspect", path)
    reader = gguf.GGUFReader(path)

    def field(key: str) -> Any:
        found = reader.get_field(key)
        assert found is not None
        return found.contents()

    assert meta["read_from"] == "file"
    assert meta["architecture"] == field("general.architecture") == "llama"
    assert meta["layers"] == field("llama.block_count") == 3
    assert meta["context_length"] == field("llama.context_length") == 512
    assert meta["parameters"] == sum(int(t.n_elements) for t in reader.tensors)
    assert meta["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert meta["tensor_count"] == len(reader.tensors)
    assert meta["quant"] == gguf.LlamaFileType(field("general.file_type")).name[len("MOSTLY_") :]
    text = cli.ok("models", "inspect", path).stdout
    assert "architecture  llama" in text and "layers        3" in text


def test_inspect_a_registered_model_reads_its_local_copy(
    cli: Cli,
    hub: Hub,  # noqa: F811
    tmp_path: Path,
) -> None:
    register_ready(cli, tmp_path / "copy-F16.gguf", F16)
    meta = cli.json("models", "inspect", f"{REPO}:F16")
    assert (meta["read_from"], meta["source"]) == ("local copy", str(tmp_path / "copy-F16.gguf"))
    assert hub.requests == []


def test_inspect_something_unknown_is_a_usage_error(cli: Cli) -> None:
    done = cli("models", "inspect", "no-such-thing")
    assert done.exit_code == 2
    assert stderr_lines(done.stderr) == [
        "bitinglip: 'no-such-thing' is not a file, an alias of profile default (gemma-3-270m), "
        "or a hub reference owner/repo[:FILE|:QUANT]"
    ]


# -- the registry ----------------------------------------------------------------------------


def test_ls_shows_each_model_and_its_copies(cli: Cli, tmp_path: Path) -> None:
    model_id = register_ready(cli, tmp_path / "copy-Q8_0.gguf", Q8)
    store = store_of(cli)
    registry.set_host_state(store, "gpu-1", model_id, "pulling", bytes_done=len(Q8) // 2)
    store.close()
    row, alias = cli.json("models", "ls")  # the registered model, then the profile's alias
    assert (alias["id"], alias["alias"], alias["hosts"]) == (None, "gemma-3-270m", {})
    assert (row["id"], row["repo"], row["commit"], row["quant"]) == (
        model_id,
        REPO,
        "c" * 40,
        "Q8_0",
    )
    assert {h: c["state"] for h, c in row["hosts"].items()} == {
        "gpu-1": "pulling",
        "local": "ready",
    }
    table = cli.ok("models", "ls").stdout.splitlines()
    assert table[0].split() == ["ID", "ALIAS", "REPO", "FILE", "QUANT", "SIZE", "COMMIT", "HOSTS"]
    assert table[1].endswith("gpu-1: pulling 50%; local: ready")
    assert table[2].split()[:2] == ["-", "gemma-3-270m"] and table[2].endswith("not pulled")


def test_rm_asks_then_deletes_the_local_copy_and_forgets_the_model(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "copy-Q8_0.gguf"
    register_ready(cli, path, Q8)
    refused = cli("models", "rm", f"{REPO}:Q8_0")  # no terminal, no --yes
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    monkeypatch.setattr(models_cli, "_stdin_is_tty", lambda: True)
    argv = ["--data-dir", str(cli.data_dir), "models", "rm", f"{REPO}:Q8_0"]
    kept = cli.runner.invoke(app, argv, input="n\n", catch_exceptions=False)
    assert kept.exit_code == 1 and "kept; nothing deleted" in kept.stderr
    assert path.exists()
    done = cli.runner.invoke(app, argv, input="y\n", catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    size = human_size(len(Q8))
    assert f"Delete {REPO}:copy-Q8_0.gguf@cccccccccccc ({size}) from local? [y/N]" in done.stdout
    assert f"removed {REPO}:copy-Q8_0.gguf@cccccccccccc from local ({path})" in done.stderr
    assert not path.exists()
    assert cli.registered() == []


def test_rm_refuses_a_copy_being_pulled_and_queues_an_ssh_hosts_removal(
    cli: Cli, tmp_path: Path
) -> None:
    profile = tmp_path / "fleet.toml"
    profile.write_text(
        '[[hosts]]\nname = "local"\nkind = "local"\n\n'
        '[[hosts]]\nname = "gpu-1"\nkind = "ssh"\naddress = "127.0.0.1"\n',
        encoding="utf-8",
    )
    model_id = register_ready(cli, tmp_path / "copy-Q8_0.gguf", Q8)
    store = store_of(cli)
    registry.set_host_state(store, "gpu-1", model_id, "ready", path="/srv/m.gguf")
    registry.set_host_state(store, "local", model_id, "pulling")
    store.close()
    done = cli("--profile", profile, "models", "rm", str(model_id), "--yes")
    assert done.exit_code == 1
    assert stderr_lines(done.stderr)[-1] == (
        f"bitinglip: 1 of 2 copies kept: local: {REPO}:copy-Q8_0.gguf on local is being pulled; "
        "cancel its pull first"
    )
    # The SSH host's copy is forgotten and its agent will delete the file: a `remove` task.
    [remove] = cli.json("--profile", profile, "tasks", "ls")
    assert (remove["kind"], remove["host"]) == ("remove", "gpu-1")
    missing = cli("models", "rm", f"{REPO}:Q8_0", "--host", "gpu-9", "--yes")
    assert missing.exit_code == 1 and "has no copy on host gpu-9; it is on local" in (
        missing.stderr
    )
    assert cli("models", "rm", "org/absent", "--yes").exit_code == 1


def test_rm_of_a_host_gone_from_the_profile_forgets_its_copy(cli: Cli, tmp_path: Path) -> None:
    model_id = register_ready(cli, tmp_path / "copy-Q8_0.gguf", Q8, host="retired")
    cli.ok("models", "rm", str(model_id), "--host", "retired", "--yes")
    (row,) = cli.registered()  # --host keeps the registration
    assert row["hosts"] == {}


# -- as a process ----------------------------------------------------------------------------


def test_models_commands_as_processes(proc: Proc, hub: Hub, commit: str) -> None:  # noqa: F811
    proc.env["HF_ENDPOINT"] = hub.url
    assert [r["id"] for r in proc.json("models", "search", "tiny")] == [REPO]
    assert proc.json("models", "files", REPO)["commit"] == commit
    assert proc.json("models", "inspect", f"{REPO}:Q8_0")["layers"] == 3
    hub.add_repo("org/gated", {"g-Q8_0.gguf": Q8}, gated=True)
    gated = proc("models", "inspect", "org/gated")
    assert gated.returncode == 1
    assert stderr_lines(gated.stderr) == [
        "bitinglip: org/gated is gated or private: the hub refused access (401); accept its "
        "terms on the hub and set HF_TOKEN"
    ]
    proc.env["HF_TOKEN"] = hub.token or ""
    assert proc.json("models", "inspect", "org/gated")["quant"] == "Q8_0"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        proc.env["HF_ENDPOINT"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = proc("models", "search", "tiny")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert len(stderr_lines(down.stderr)) == 1
    assert "bitinglip: cannot reach the hub at http://127.0.0.1:" in down.stderr


def test_every_models_command_has_help(cli: Cli) -> None:
    for command in ("search", "files", "ls", "inspect", "rm", "pull", "fit", "load", "unload"):
        done = cli("models", command, "--help")
        assert done.exit_code == 0 and f"models {command} [OPTIONS]" in done.stdout


def test_json_output_is_valid_for_empty_listings(cli: Cli) -> None:
    assert cli.registered() == []  # no model registered: only the profile's alias is listed
