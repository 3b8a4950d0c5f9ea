"""The registry keeps the memory facts of a model's GGUF header (`models.facts`, migration 5),
so placement sizes a registered model whose copies are all on SSH hosts with its KV cache,
through the same `model_need` as `models fit` and `gpu_layers = "auto"`.

Real SQLite files, the fake hub on 127.0.0.1, GGUFs written with gguf-py (tensor data a sparse
hole). Sizes as in test_model_need.py: `Spec()` takes 1024 B of f16 KV cache a token.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitinglip.cli import app
from bitinglip.config import ModelAlias
from bitinglip.control.models import gguf_meta, registry
from bitinglip.control.models.gguf_header import FIRST_READ, GGUFHeader
from bitinglip.control.models.refs import HubFile
from bitinglip.control.models.settings import auto_gpu_layers, local_header, model_need
from bitinglip.control.plane import open_control_plane
from bitinglip.control.queue.tasks import TaskQueue
from bitinglip.control.runtime.host_models import Copy, Host, HostModels, Seen
from bitinglip.control.runtime.model_sizes import LOAD_FACTOR, ModelSizes
from bitinglip.control.runtime.placement import ATTACH_GRACE_S, Placement
from bitinglip.control.store import schema
from bitinglip.control.store.db import Store, open_store
from tests.control.gguf_model import Spec, tensors, write_model
from tests.control.test_model_need import BIG, F16_TOKEN, GIB, WEIGHTS, make_profile
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.server import Hub

REPO = "org/m-GGUF"
SSH = '[[hosts]]\nname = "gpu"\nkind = "ssh"\naddress = "gpu.example"\n'
ALIAS = f'[models.m]\nsource = "hf:{REPO}"\nn_ctx = 8192\nparallel = 2\n'


def header_of(path: Path) -> GGUFHeader:
    stat = path.stat()
    header = local_header(str(path), stat.st_size, stat.st_mtime_ns)
    assert header is not None
    return header


def hub_file(path: Path, facts: dict[str, object] | None = None) -> HubFile:
    return HubFile(
        repo=REPO,
        commit="a" * 40,
        name="m.gguf",
        size=path.stat().st_size,
        sha256="b" * 64,
        quant="Q8_0",
        url="http://127.0.0.1:1/m.gguf",
        facts=facts,
    )


def ready_on_gpu(store: Store, file: HubFile) -> int:
    """Register `file`, its one copy ready on the SSH host `gpu` (a path there, not here)."""
    model_id = registry.register(store, file)
    registry.set_host_state(store, "gpu", model_id, "ready", path="/srv/models/m.gguf")
    return model_id


# -- the facts --------------------------------------------------------------------------------

SHAPES = [
    Spec(),
    BIG,
    Spec(key_length=64, value_length=48),  # K and V of other widths than embd / heads
    Spec(kv_heads_per_layer=(2, 0, 2, 1)),  # a hybrid: no KV cache in layer 1
]
CACHES = [(None, None), ("q8_0", None), ("q4_0", "q8_0")]


@pytest.mark.parametrize("spec", SHAPES)
@pytest.mark.parametrize(("cache_k", "cache_v"), CACHES)
def test_the_facts_give_the_estimate_of_the_header_they_came_from(
    tmp_path: Path, spec: Spec, cache_k: str | None, cache_v: str | None
) -> None:
    """Every number of the estimate (weights, each layer, each layer's KV cache, input and
    output), through JSON as the registry keeps them."""
    header = header_of(write_model(tmp_path / "m.gguf", spec).path)
    facts = json.loads(json.dumps(gguf_meta.header_facts(header)))
    again = gguf_meta.header_from_facts(facts, "org/m:m.gguf")
    assert again is not None
    alias = ModelAlias("m", "", n_ctx=4096, parallel=3, cache_type_k=cache_k, cache_type_v=cache_v)
    real, kept = model_need(alias, header), model_need(alias, again)
    assert kept.weights_bytes == real.weights_bytes == sum(t[3] for t in tensors(spec))
    assert kept.layer_bytes == real.layer_bytes
    assert kept.kv_layer_bytes == real.kv_layer_bytes
    assert (kept.input_bytes, kept.output_bytes) == (real.input_bytes, real.output_bytes)
    assert (kept.quant, kept.file_size, kept.notes) == (real.quant, real.file_size, real.notes)
    # Partial offloads (auto's 1 GiB margin, then part of the model): the layers decide.
    layers = {
        auto_gpu_layers(alias, GIB + real.total(0) * share // 8, again)
        - auto_gpu_layers(alias, GIB + real.total(0) * share // 8, header)
        for share in range(1, 8)
    }
    assert layers == {0}
    assert 0 < auto_gpu_layers(alias, GIB + real.total(0) // 2, again) < real.layers


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"layer_bytes": [1, -1]},
        {"head_count": True},
        {"input_bytes": 1.5},
        {"key_length": "64"},
        {"head_count_kv_per_layer": [2, None]},
    ],
)
def test_facts_of_another_shape_are_not_read(tmp_path: Path, change: dict[str, object]) -> None:
    header = header_of(write_model(tmp_path / "m.gguf", Spec()).path)
    facts = gguf_meta.header_facts(header) | change
    assert gguf_meta.header_from_facts(facts, "m") is None
    missing = gguf_meta.header_facts(header)
    del missing["layer_bytes"]
    assert gguf_meta.header_from_facts(missing, "m") is None


# -- the migration ----------------------------------------------------------------------------


def test_the_migration_keeps_the_rows_without_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of migration 4 gets the column; its models keep every value, facts NULL,
    and are sized as before (file size × 1.2) until a header is read."""
    assert [name for name, _ in schema.MIGRATIONS][3:5] == ["placement", "model_facts"]
    profile = make_profile(tmp_path, ALIAS, SSH)
    written = write_model(tmp_path / "m.gguf", Spec()).path
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        old = open_store(profile.db_path)
        assert old.conn.execute("PRAGMA user_version").fetchone()[0] == 4
        file = hub_file(written)
        with old.write() as conn:  # as the registry of migration 4 wrote it
            model_id = conn.execute(
                'INSERT INTO models (repo, "commit", file, quant, size, sha256, created_at)'
                " VALUES (?, ?, ?, ?, ?, ?, 10.0)",
                (file.repo, file.commit, file.name, file.quant, file.size, file.sha256),
            ).lastrowid
        assert model_id is not None
        registry.set_host_state(old, "gpu", model_id, "ready", path="/srv/models/m.gguf")
        before = registry.get(old, model_id)
        old.close()

    store = open_store(profile.db_path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS) >= 5
    assert registry.get(store, model_id) == before
    assert registry.facts(store, model_id) is None
    sizes = ModelSizes(profile)
    assert sizes.row(store, "m") is not None
    assert sizes.need("m") == int(written.stat().st_size * LOAD_FACTOR)
    # Registering it again with its facts (a header read anyway) fills them, once.
    facts = gguf_meta.header_facts(header_of(written))
    assert registry.register(store, hub_file(written, facts)) == model_id
    assert registry.facts(store, model_id) == facts
    assert not registry.set_facts(store, model_id, {"v": 1})
    assert registry.facts(store, model_id) == facts
    store.close()


def test_a_copy_on_this_machine_fills_the_facts_of_an_old_row(tmp_path: Path) -> None:
    """A row without facts with a ready copy on the local host: the header placement reads of
    it is kept, so the model is sized the same once that copy is gone."""
    local = '[[hosts]]\nname = "local"\nkind = "local"\n'
    profile = make_profile(tmp_path, ALIAS, local + SSH)
    written = write_model(tmp_path / "m.gguf", Spec()).path
    store = open_store(profile.db_path)
    model_id = ready_on_gpu(store, hub_file(written))
    registry.set_host_state(store, "local", model_id, "ready", path=str(written))
    sizes = ModelSizes(profile, ttl_s=0.0)
    assert sizes.row(store, "m") is not None
    assert sizes.need("m") == WEIGHTS + 16384 * F16_TOKEN
    assert registry.facts(store, model_id) == gguf_meta.header_facts(header_of(written))
    registry.forget_host_copy(store, "local", model_id)
    written.unlink()
    fresh = ModelSizes(profile)
    assert fresh.row(store, "m") is not None
    assert fresh.need("m") == WEIGHTS + 16384 * F16_TOKEN
    store.close()


# -- from the hub -----------------------------------------------------------------------------


def test_models_pull_registers_the_facts_and_need_is_what_models_fit_prints(
    tmp_path: Path,
    hub: Hub,  # noqa: F811
) -> None:
    """`models pull` to an SSH host reads the header (range reads only) and keeps its facts;
    placement's need() of the model, whose one copy is on that host, is `models fit --ctx
    (n_ctx × parallel) --margin-gib 0`'s need_bytes (it was the file size × 1.2)."""
    written = write_model(tmp_path / "m.gguf", Spec()).path
    commit = hub.add_repo(REPO, {"m.gguf": written})
    profile = make_profile(tmp_path, ALIAS, SSH)
    with open_control_plane(profile) as plane:
        file, [ticket] = plane.models.pull(REPO, hosts=["gpu"])
        assert (file.commit, ticket.host, ticket.action) == (commit, "gpu", "queued")
        stored = registry.facts(plane.store, ticket.model_id)
        assert file.to_dict().keys() == {"repo", "commit", "name", "size", "sha256", "quant", "url"}
    assert stored == gguf_meta.header_facts(header_of(written))
    header_only = [f"bytes=0-{FIRST_READ - 1}"]  # the header, read once: no weights
    assert [r.headers.get("range") for r in hub.requests if "resolve" in r.path] == header_only

    store = open_store(profile.db_path)
    registry.set_host_state(store, "gpu", ticket.model_id, "ready", path="/srv/m.gguf")
    sizes = ModelSizes(profile)
    assert sizes.row(store, "m") is not None
    store.close()
    argv = ["--data-dir", str(tmp_path / "fit"), "models", "fit", REPO, "--json"]
    argv += ["--ctx", str(8192 * 2), "--margin-gib", "0"]
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    [printed] = json.loads(result.stdout)["needs"]
    assert sizes.need("m") == printed["need_bytes"] == WEIGHTS + 16384 * F16_TOKEN
    assert sizes.need("m") != int(written.stat().st_size * LOAD_FACTOR)


def test_a_header_that_cannot_be_read_leaves_no_facts_and_the_pull_goes_on(
    tmp_path: Path,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {"m.gguf": b"not a gguf" * 100})
    profile = make_profile(tmp_path, ALIAS, SSH)
    with open_control_plane(profile) as plane:
        file, [ticket] = plane.models.pull(REPO, hosts=["gpu"])
        assert (file.facts, ticket.action) == (None, "queued")
        assert registry.facts(plane.store, ticket.model_id) is None
        registry.set_host_state(plane.store, "gpu", ticket.model_id, "ready", path="/srv/m.gguf")
        sizes = ModelSizes(profile)
        assert sizes.row(plane.store, "m") is not None
    assert sizes.need("m") == int(1000 * LOAD_FACTOR)


def test_placing_an_alias_keeps_the_header_it_read_once(
    tmp_path: Path,
    hub: Hub,  # noqa: F811
) -> None:
    """Pull-then-place reads the header for the fit; registering the file keeps its facts
    from that one read."""
    written = write_model(tmp_path / "m.gguf", Spec()).path
    hub.add_repo(REPO, {"m.gguf": written})
    profile = make_profile(tmp_path, ALIAS, SSH)
    with open_control_plane(profile) as plane:
        placed = plane.models.place_alias("m", ctx=16384)
        assert placed is not None
        file, [ticket] = placed
        assert ticket.host == "gpu"
        assert registry.facts(plane.store, ticket.model_id) == file.facts
    assert file.facts == gguf_meta.header_facts(header_of(written))
    ranged = [r.headers.get("range") for r in hub.requests if "resolve" in r.path]
    assert ranged == [f"bytes=0-{FIRST_READ - 1}"]


# -- placement --------------------------------------------------------------------------------


def choose_on_gpu(tmp_path: Path, facts: bool) -> tuple[str | None, str, int | None, int]:
    """Placement's choice for `m` (BIG, n_ctx 32768 × parallel 8) on one SSH host with a 2 GiB
    memory budget that holds its one ready copy; the model registered with or without facts."""
    hosts = SSH + "memory_budget_gib = 2.0\n"
    keys = "n_ctx = 32768\nparallel = 8\n"
    profile = make_profile(tmp_path, f'[models.m]\nsource = "hf:{REPO}"\n{keys}', hosts)
    written = write_model(tmp_path / "m.gguf", BIG).path
    kept = gguf_meta.header_facts(header_of(written)) if facts else None
    store = open_store(profile.db_path)
    try:
        model_id = ready_on_gpu(store, hub_file(written, kept))
        copies = {"m": Copy(model_id, "/srv/models/m.gguf")}
        models = HostModels(profile.hosts[0], copies, frozenset(), "/srv/models", frozenset(), "")
        host = Host(profile.hosts[0], models, Seen(frozenset(), None, None), Counter(), 1)
        placement = Placement(profile)
        queue = TaskQueue(store, profile.queue)
        chosen, why = placement.choose(queue, "m", [host], time.monotonic() + ATTACH_GRACE_S)
    finally:
        store.close()
    name = None if chosen is None else chosen.name
    return name, why, placement.sizes.need("m"), written.stat().st_size


def test_placement_refuses_an_ssh_host_that_holds_the_weights_but_not_the_kv_cache(
    tmp_path: Path,
) -> None:
    chosen, why, need, size = choose_on_gpu(tmp_path / "new", facts=True)
    weights = sum(t[3] for t in tensors(BIG))
    assert need == weights + 262144 * 16384  # 16 KiB of f16 KV cache a token
    assert weights < size * LOAD_FACTOR < 2 * GIB < need
    assert chosen is None
    assert why == "fits nowhere: needs 4.7 GiB, largest free 2.0 GiB"
    # Without facts (a row registered before them): the file size × 1.2 placed it there.
    chosen, why, need, size = choose_on_gpu(tmp_path / "old", facts=False)
    assert (chosen, why, need) == ("gpu", "", int(size * LOAD_FACTOR))
