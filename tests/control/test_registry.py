"""The model registry on real SQLite files: pinned rows, checked copy states, LRU eviction."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from bitinglip.config import Profile
from bitinglip.control.models import registry
from bitinglip.control.models.hub import HubFile
from bitinglip.control.models.registry import eviction_order, set_host_state
from bitinglip.control.queue import views as task_views
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store import schema
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import InputError, NotFoundError, StateError

OLD, NEW = "a" * 40, "b" * 40


def hub_file(name: str = "m-Q4_K_M.gguf", commit: str = OLD, repo: str = "org/m") -> HubFile:
    size = 1000 + len(name)
    return HubFile(
        repo=repo,
        commit=commit,
        name=name,
        size=size,
        sha256=(commit[0] + name).encode().hex()[:64].ljust(64, "0"),
        quant=name.rsplit("-", 1)[-1].removesuffix(".gguf") if "-" in name else None,
        url=f"http://hub.invalid/{repo}/resolve/{commit}/{name}",
    )


@pytest.fixture
def store(profile: Profile) -> Store:
    return open_store(profile.db_path)


def test_register_is_idempotent_and_keeps_what_the_hub_said(store: Store) -> None:
    file = hub_file()
    model_id = registry.register(store, file, now=10.0)
    assert registry.register(store, file, now=99.0) == model_id
    (row,) = registry.rows(store)
    assert row == {
        "id": model_id,
        "alias": None,
        "repo": "org/m",
        "commit": OLD,
        "file": "m-Q4_K_M.gguf",
        "quant": "Q4_K_M",
        "size": file.size,
        "sha256": file.sha256,
        "created_at": 10.0,
        "hosts": {},
    }


def test_a_new_commit_is_a_new_row_and_the_first_never_changes(store: Store) -> None:
    first = registry.register(store, hub_file(commit=OLD))
    before = registry.get(store, first)
    second = registry.register(store, hub_file(commit=NEW))
    assert second != first
    assert registry.get(store, first) == before
    assert [(m["id"], m["commit"]) for m in registry.rows(store)] == [(first, OLD), (second, NEW)]


def test_a_commit_whose_file_changed_is_refused(store: Store) -> None:
    file = hub_file()
    registry.register(store, file)
    changed = HubFile(**{**file.to_dict(), "sha256": "f" * 64})
    with pytest.raises(StateError, match="a commit's files cannot change"):
        registry.register(store, changed)
    with pytest.raises(InputError, match="not a 40-hex sha"):
        registry.register(store, hub_file(commit="main"))
    with pytest.raises(InputError, match="needs its sha256"):
        registry.register(store, HubFile(**{**file.to_dict(), "sha256": ""}))


def test_copy_states_move_only_along_the_allowed_moves(store: Store) -> None:
    model_id = registry.register(store, hub_file())
    size = hub_file().size
    set_host_state(store, "h", model_id, "pulling", bytes_done=10, now=1.0)
    set_host_state(store, "h", model_id, "pulling", bytes_done=500, now=2.0)  # progress
    set_host_state(store, "h", model_id, registry.READY, path="/m/a.gguf", now=3.0)
    assert registry.set_loaded(store, "h", model_id, True)
    copy = copy_of(store, model_id, "h")
    assert (copy["state"], copy["bytes_done"], copy["loaded"]) == ("ready", size, True)
    assert (copy["path"], copy["updated_at"]) == ("/m/a.gguf", 3.0)

    set_host_state(store, "h", model_id, "quarantined", error="sha256 mismatch")
    copy = copy_of(store, model_id, "h")
    assert (copy["state"], copy["loaded"], copy["error"]) == (
        "quarantined",
        False,
        "sha256 mismatch",
    )
    with pytest.raises(StateError, match="cannot go from quarantined to ready"):
        set_host_state(store, "h", model_id, "ready", path="/m/a.gguf")
    with pytest.raises(StateError, match="cannot go from absent to failed"):
        set_host_state(store, "other", model_id, "failed")
    set_host_state(store, "h", model_id, "pulling")
    assert copy_of(store, model_id, "h")["error"] is None
    set_host_state(store, "h", model_id, "failed", error="no space")
    with pytest.raises(InputError, match="unknown copy state 'done'"):
        set_host_state(store, "h", model_id, "done")
    with pytest.raises(NotFoundError, match="no model 999"):
        set_host_state(store, "h", 999, "pulling")


def test_ready_needs_a_path_and_loaded_needs_ready(store: Store) -> None:
    model_id = registry.register(store, hub_file())
    with pytest.raises(InputError, match="needs its path"):
        set_host_state(store, "h", model_id, "ready")
    set_host_state(store, "h", model_id, "pulling")
    with pytest.raises(StateError, match="is pulling, not ready"):
        registry.set_loaded(store, "h", model_id, True)
    assert not registry.set_loaded(store, "nowhere", model_id, True)
    assert not registry.touch(store, "nowhere", model_id, 5.0)


def test_a_copy_names_a_real_pull_task(store: Store, profile: Profile) -> None:
    model_id = registry.register(store, hub_file())
    task_id = TaskQueue(store, profile.queue).submit(TaskSpec(kind="pull", payload={}))
    set_host_state(store, "h", model_id, "pulling", task_id=task_id)
    set_host_state(store, "h", model_id, "ready", path="/m/x.gguf")  # keeps the task id
    assert copy_of(store, model_id, "h")["task_id"] == task_id
    with pytest.raises(InputError, match="is the task id real"):
        set_host_state(store, "g", model_id, "pulling", task_id=task_id + 100)


def test_eviction_is_lru_and_never_takes_a_loaded_or_pulling_copy(store: Store) -> None:
    ids = {n: registry.register(store, hub_file(f"{n}-Q8_0.gguf")) for n in "abcdefg"}

    def ready(name: str, at: float, used: float | None = None) -> None:
        set_host_state(store, "h", ids[name], "ready", path=f"/m/{name}.gguf", now=at)
        if used is not None:
            registry.touch(store, "h", ids[name], used)

    ready("a", 1.0, used=100.0)
    ready("b", 1.0, used=50.0)
    ready("c", 1.0, used=10.0)
    registry.set_loaded(store, "h", ids["c"], True)
    set_host_state(store, "h", ids["d"], "pulling", now=0.0)
    ready("e", 75.0)  # never used: counts from when it became ready
    set_host_state(store, "h", ids["f"], "pulling")
    set_host_state(store, "h", ids["f"], "quarantined", error="bad")
    set_host_state(store, "other", ids["g"], "ready", path="/m/g.gguf", now=0.0)
    registry.touch(store, "h", ids["a"], 20.0)  # an older use never moves a copy back

    order = eviction_order(store, "h")
    assert [model_id for model_id, _, _ in order] == [ids["b"], ids["e"], ids["a"]]
    assert order[0] == (ids["b"], "/m/b.gguf", hub_file("b-Q8_0.gguf").size)
    registry.set_loaded(store, "h", ids["c"], False)
    assert eviction_order(store, "h")[0][0] == ids["c"]
    assert eviction_order(store, "nobody") == []


def test_rows_are_json_ready_with_aliases_and_copies(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile(
        '[models.tiny]\nsource = "hf:org/m"\nfile = "m-Q8_0.gguf"\n'
        f'[models.pinned]\nsource = "hf:org/m"\nrevision = "{OLD}"\n'
    )
    store = open_store(profile.db_path)
    q8 = registry.register(store, hub_file("m-Q8_0.gguf", commit=NEW))
    q4 = registry.register(store, hub_file("m-Q4_K_M.gguf", commit=OLD))
    set_host_state(store, "local", q8, "ready", path="/m/q8.gguf", now=5.0)
    registry.touch(store, "local", q8, 6.0)
    set_host_state(store, "gpu-1", q8, "pulling", bytes_done=7, now=5.0)
    rows = json.loads(json.dumps(registry.rows(store, profile)))
    by_id = {row["id"]: row for row in rows}
    assert (by_id[q8]["alias"], by_id[q4]["alias"]) == ("tiny", "pinned")
    assert by_id[q8]["hosts"] == {
        "gpu-1": {
            "state": "pulling",
            "path": None,
            "loaded": False,
            "last_used_at": None,
            "bytes_done": 7,
            "error": None,
            "task_id": None,
            "updated_at": 5.0,
        },
        "local": {
            "state": "ready",
            "path": "/m/q8.gguf",
            "loaded": False,
            "last_used_at": 6.0,
            "bytes_done": hub_file("m-Q8_0.gguf").size,
            "error": None,
            "task_id": None,
            "updated_at": 5.0,
        },
    }
    assert registry.ready_on(store, q8) == ["local"]
    assert registry.ready_on(store, q4) == []


def test_find_by_alias_ref_quant_file_and_id(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile(
        '[models.tiny]\nsource = "hf:org/m"\nfile = "m-Q8_0.gguf"\n'
        '[models.any]\nsource = "hf:org/m"\n'
        f'[models.pinned]\nsource = "hf:org/m"\nfile = "m-Q8_0.gguf"\nrevision = "{OLD}"\n'
        '[models.elsewhere]\nsource = "hf:org/other"\n'
    )
    store = open_store(profile.db_path)
    old_q8 = registry.register(store, hub_file("m-Q8_0.gguf", commit=OLD))
    new_q8 = registry.register(store, hub_file("m-Q8_0.gguf", commit=NEW))
    q4 = registry.register(store, hub_file("m-Q4_K_M.gguf", commit=OLD))

    def found(name: str) -> int | None:
        row = registry.find(store, name, profile)
        return None if row is None else int(row["id"])

    assert found("tiny") == new_q8  # the newest registration of that file
    assert found("pinned") == old_q8
    assert found("org/m:q8_0") == new_q8
    assert found("org/m:m-Q4_K_M.gguf") == q4
    assert found("hf:org/m:Q4_K_M") == q4
    assert found(str(old_q8)) == old_q8
    assert found("elsewhere") is None
    assert found("gemma-3-270m") is None  # a pypi alias is not in the registry
    assert found("org/m:Q2_K") is None
    assert found("999") is None
    with pytest.raises(InputError, match="matches 2 registered files; name one: org/m:m-Q4"):
        found("any")
    with pytest.raises(InputError, match="not a hub reference"):
        found("no-such-alias")


def test_forget_a_copy_then_unregister(store: Store) -> None:
    model_id = registry.register(store, hub_file())
    set_host_state(store, "h", model_id, "ready", path="/m/x.gguf")
    with pytest.raises(StateError, match="still has copies on h"):
        registry.unregister(store, model_id)
    assert registry.forget_host_copy(store, "h", model_id)
    assert not registry.forget_host_copy(store, "h", model_id)
    assert registry.unregister(store, model_id)
    assert registry.rows(store) == []


def test_migrating_from_version_2_keeps_tasks_and_hosts(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
        old = open_store(profile.db_path)
        assert old.conn.execute("PRAGMA user_version").fetchone()[0] == 2
        task_id = TaskQueue(old, profile.queue).submit(TaskSpec(kind="echo", payload={"n": 1}))
        with old.write() as conn:
            conn.execute(
                "INSERT INTO hosts (name, kind, healthy, updated_at) VALUES ('gpu-1', 'ssh', 1, 1)"
            )
        old.close()

    store = open_store(profile.db_path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS) >= 3
    task = task_views.get_task(store, task_id)
    assert (task.kind, task.payload) == ("echo", {"n": 1})
    assert store.conn.execute("SELECT name, kind FROM hosts").fetchall() == [("gpu-1", "ssh")]
    assert store.conn.execute("SELECT progress FROM tasks").fetchall() == [(None,)]
    model_id = registry.register(store, hub_file())
    set_host_state(store, "gpu-1", model_id, "pulling", task_id=task_id)
    assert registry.rows(store)[0]["hosts"]["gpu-1"]["task_id"] == task_id


def copy_of(store: Store, model_id: int, host: str) -> dict[str, object]:
    model = registry.get(store, model_id)
    assert model is not None
    copy: dict[str, object] = model["hosts"][host]
    return copy
