"""`bitinglip models pull` to the local host's agent, against the fake hub: pinned, verified,
merged, quarantined on a bad byte, and a branch that moves on never changes a registered model."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import load_profile, parse_profile
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.models import registry
from bitinglip.control.plane import open_control_plane
from bitinglip.control.store.db import open_store
from bitinglip.errors import InputError
from tests.agents.conftest import passive_openmp, wait_for  # noqa: F401
from tests.cli.conftest import Cli
from tests.conftest import FAST_QUEUE
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub

pytestmark = pytest.mark.slow

REPO = "org/tiny-GGUF"
Q8 = tiny_gguf(seed=1, n_layers=3)
Q4 = tiny_gguf(seed=2, n_layers=2)


@pytest.fixture
def commit(hub: Hub) -> str:  # noqa: F811
    return hub.add_repo(REPO, {"tiny-Q8_0.gguf": Q8, "tiny-Q4_K_M.gguf": Q4})


def test_pull_pins_downloads_and_verifies(cli: Cli, commit: str) -> None:
    pulled = cli.json("models", "pull", f"{REPO}:Q8_0")
    assert (pulled["commit"], pulled["file"]) == (commit, "tiny-Q8_0.gguf")
    assert pulled["sha256"] == hashlib.sha256(Q8).hexdigest()
    [copy] = pulled["hosts"]
    assert copy["host"] == "local" and copy["state"] == "ready"
    path = Path(copy["path"])
    assert path.read_bytes() == Q8
    assert path.is_relative_to(cli.data_dir / "models")
    assert not list(path.parent.glob("*.partial"))
    [model] = cli.registered()
    assert model["commit"] == commit and model["hosts"]["local"]["state"] == "ready"
    again = cli.json("models", "pull", f"{REPO}:Q8_0")
    assert again["hosts"][0]["action"] == "already"


def test_a_flipped_bit_is_quarantined_never_ready(cli: Cli, hub: Hub, commit: str) -> None:  # noqa: F811
    hub.fault(REPO, "tiny-Q4_K_M.gguf", "flip")
    result = cli("models", "pull", f"{REPO}:Q4_K_M")
    assert result.exit_code == 1
    assert "sha256" in result.stderr and "quarantined" in result.stderr
    [model] = cli.registered()
    assert model["hosts"]["local"]["state"] == "quarantined"
    assert not list((cli.data_dir / "models").rglob("tiny-Q4_K_M.gguf"))
    assert list((cli.data_dir / "models" / ".quarantine").iterdir())


def test_concurrent_pulls_of_one_file_to_one_host_merge(cli: Cli, commit: str) -> None:
    profile = load_profile(data_dir=cli.data_dir)
    with open_control_plane(profile) as plane:
        _, first = plane.models.pull(f"{REPO}:Q8_0")
        _, second = plane.models.pull(f"{REPO}:Q8_0")
    assert [t.action for t in first] == ["queued"]
    assert [t.action for t in second] == ["joined"]
    assert first[0].task_id == second[0].task_id


def test_a_registered_model_keeps_its_commit_when_the_branch_moves(
    cli: Cli,
    hub: Hub,  # noqa: F811
    commit: str,
) -> None:
    cli.json("models", "pull", f"{REPO}:Q8_0")
    newer = hub.commit(REPO, {"tiny-Q8_0.gguf": tiny_gguf(seed=9, n_layers=3)})
    [model] = cli.registered()
    assert model["commit"] == commit  # unchanged: the registry holds what was pulled
    pulled = cli.json("models", "pull", f"{REPO}:Q8_0")
    assert pulled["commit"] == newer  # a new pull pins the new commit: a new registration
    commits = sorted(m["commit"] for m in cli.registered())
    assert commits == sorted([commit, newer])


def test_unknown_quant_and_gated_repo_are_one_line(cli: Cli, hub: Hub, commit: str) -> None:  # noqa: F811
    missing = cli("models", "pull", f"{REPO}:Q2_K")
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1
    hub.add_repo("org/gated-GGUF", {"g-Q8_0.gguf": Q8}, gated=True)
    gated = cli("models", "pull", "org/gated-GGUF")
    assert gated.exit_code == 1 and "HF_TOKEN" in gated.stderr
    assert len(gated.stderr.strip().splitlines()) == 1


def test_run_pulls_a_hub_alias_where_it_fits_then_generates(
    cli: Cli,
    hub: Hub,  # noqa: F811
    tmp_path: Path,
    demo_model: Path,
    passive_openmp: None,  # noqa: F811
) -> None:
    """A `[models.X] source = "hf:..."` alias on no host yet: `run` pins it, pulls it to the
    host it fits (the only one here), verified, then generates with it; the next run pulls
    nothing."""
    commit = hub.add_repo("org/gemma-GGUF", {"gemma-3-270m-Q4_K_M.gguf": demo_model})
    profile = tmp_path / "hf.toml"
    profile.write_text(
        FAST_QUEUE + '\n[models.gemma-hf]\nsource = "hf:org/gemma-GGUF"\n'
        'file = "gemma-3-270m-Q4_K_M.gguf"\n'
    )
    args = ("--profile", profile, "run", "gemma-hf", "One, two,", "--max-tokens", "4")
    first = cli.ok(*args, "--temperature", "0", "--seed", "1")
    assert first.stdout.strip()
    assert "pulling gemma-3-270m-Q4_K_M.gguf to local" in first.stderr
    [model] = cli.registered("--profile", profile)
    assert model["alias"] == "gemma-hf" and model["commit"] == commit
    assert model["hosts"]["local"]["state"] == "ready"
    second = cli.ok(*args, "--temperature", "0", "--seed", "1")
    assert "pulling" not in second.stderr and second.stdout == first.stdout


def test_an_alias_that_fits_nowhere_is_refused_before_any_byte(
    hub: Hub,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Placement reads the GGUF header and the stored telemetry: a 2-layer model with a 128k
    context on a GPU with 64 MiB free fits nowhere, so nothing is pulled."""
    hub.add_repo("org/tiny-GGUF", {"tiny-Q8_0.gguf": Q8})
    text = (
        '[[hosts]]\nname = "gpu-1"\nkind = "ssh"\naddress = "127.0.0.1"\nport = 1\n\n'
        '[models.tiny]\nsource = "hf:org/tiny-GGUF"\n'
    )
    profile = parse_profile(text, name="fit", path=None, data_dir=tmp_path / "data")
    gpu = {"index": 0, "name": "Tiny GPU", "memory_total_bytes": 64 << 20, "memory_used_bytes": 0}
    snapshot = {"at": time.time(), "ram_total_bytes": 1 << 30, "ram_used_bytes": 0, "gpus": [gpu]}
    with open_control_plane(profile) as plane:
        TelemetryRing().record(plane.store, [("gpu-1", snapshot)])
        with pytest.raises(InputError, match="fits on no host"):
            plane.models.place_alias("tiny", ctx=131072)
        assert plane.tasks() == []
        gpu["memory_total_bytes"] = 8 << 30
        snapshot["at"] = time.time() + 1
        TelemetryRing().record(plane.store, [("gpu-1", snapshot)])
        placed = plane.models.place_alias("tiny", ctx=131072)
    assert placed is not None and [t.host for t in placed[1]] == ["gpu-1"]
    assert not [
        r
        for r in hub.requests
        if r.method == "GET" and "resolve" in r.path and "range" not in r.headers
    ]  # headers only: every GET was a range


def test_cache_quota_evicts_the_least_recently_used_never_a_loaded_one(
    cli: Cli,
    hub: Hub,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Quota for three 40 KiB files: pulling a fourth evicts the least recently used copy that
    is not loaded (its file deleted by the agent), never the loaded one, even when it is older."""
    files = {f"m{i}-Q8_0.gguf": bytes([i]) * (40 << 10) for i in range(4)}
    for i, (name, data) in enumerate(files.items()):
        hub.add_repo(f"org/m{i}-GGUF", {name: data})
    profile = tmp_path / "quota.toml"
    profile.write_text(
        f'[[hosts]]\nname = "local"\nkind = "local"\ncache_quota_gib = {130 * 1024 / 2**30!r}\n'
    )
    base = ("--profile", profile)

    def pull(i: int) -> dict[str, Any]:
        result: dict[str, Any] = cli.json(*base, "models", "pull", f"org/m{i}-GGUF")
        return result

    paths = [Path(pull(i)["hosts"][0]["path"]) for i in range(3)]
    store = open_store(cli.data_dir / "state.db")
    try:
        ids = {m["repo"]: m["id"] for m in registry.rows(store)}
        registry.touch(store, "local", ids["org/m1-GGUF"], time.time() + 10)
        registry.touch(store, "local", ids["org/m2-GGUF"], time.time() + 20)
        registry.set_loaded(store, "local", ids["org/m0-GGUF"], True)  # as an agent reports it
    finally:
        store.close()
    pull(3)
    states = {
        m["repo"]: m["hosts"].get("local", {}).get("state") for m in cli.json(*base, "models", "ls")
    }
    assert states == {
        "org/m0-GGUF": "ready",
        "org/m1-GGUF": None,
        "org/m2-GGUF": "ready",
        "org/m3-GGUF": "ready",
    }
    wait_for(lambda: not paths[1].exists(), 30, "the evicted file to be deleted")
    assert paths[0].exists() and paths[2].exists()


@pytest.mark.parametrize("name", ["../evil.gguf", "a/../../evil.gguf", "sub\\evil.gguf"])
def test_a_listing_with_an_escaping_name_is_refused_before_any_write(
    cli: Cli,
    hub: Hub,  # noqa: F811
    name: str,
) -> None:
    """Whatever the hub lists, a file name that would leave the model dir is refused by the
    control plane before a task exists (and by the agent again, see tests/agents)."""
    hub.add_repo("org/evil-GGUF", {name: Q8})
    before = sorted(p for p in cli.cwd.rglob("*") if "evil" in p.name)
    result = cli("models", "pull", f"org/evil-GGUF:{name}")
    assert result.exit_code == 2, result.stderr
    assert "refused before anything was written" in result.stderr
    assert sorted(p for p in cli.cwd.rglob("*") if "evil" in p.name) == before
    assert cli.json("tasks", "ls") == []


def test_the_token_comes_from_the_profiles_env_reference_and_is_never_stored(
    cli: Cli,
    hub: Hub,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hub.token is not None
    monkeypatch.setenv("HF_TOKEN", "")  # empty counts as unset; restored after the test
    monkeypatch.setenv("LAB_HUB_TOKEN", hub.token)
    hub.add_repo("org/gated-GGUF", {"g-Q8_0.gguf": Q8}, gated=True)
    profile = tmp_path / "lab.toml"
    profile.write_text(
        '[hub]\ntoken_env = "LAB_HUB_TOKEN"\n\n[[hosts]]\nname = "local"\nkind = "local"\n'
    )
    pulled = cli.json("--profile", profile, "models", "pull", "org/gated-GGUF")
    assert pulled["hosts"][0]["state"] == "ready"
    for path in cli.data_dir.rglob("*"):
        if path.is_file() and not path.name.endswith(".gguf"):
            assert hub.token.encode() not in path.read_bytes(), path


def test_pull_via_operator_to_the_local_host(cli: Cli, commit: str) -> None:
    pulled = cli.json("models", "pull", f"{REPO}:Q8_0", "--via-operator")
    [copy] = pulled["hosts"]
    assert copy["state"] == "ready" and Path(copy["path"]).read_bytes() == Q8
    assert cli.json("tasks", "ls") == []  # no agent was asked: this process did it
