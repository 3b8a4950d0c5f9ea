"""The model registry: which model files exist (pinned to a commit) and where their copies are.

`models` holds one row per (repo, commit, file) with the size and LFS sha256 a copy must match;
a row never changes once written, so a branch that moves on on the hub makes a new row and never
alters a registered model; its one later write is `facts`, the memory facts of the file's GGUF
header (`gguf_meta.header_facts`, JSON), NULL until a header is read, then written once.
`host_models` holds one row per copy of a model on a host, in one of four states (`CopyState`):
`pulling` (a pull task is bringing it), `ready` (on disk, its sha256 checked), `quarantined` (it
arrived but failed verification; `error` says why) and `failed` (the pull gave up). Every change of
state goes through `set_host_state`, which checks the move against `MOVES`. `last_used_at` (`touch`)
and `loaded` (`set_loaded`) drive the quota's eviction: least recently used first, never a loaded
copy or one being pulled.

Pure SQLite: every write is one transaction through `Store.write()`; nothing here touches a
file or a host.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from bitinglip.config import ModelAlias, Profile
from bitinglip.control.models.refs import COMMIT_SHA, HubFile, file_url, split_ref
from bitinglip.control.store.db import Store
from bitinglip.errors import InputError, NotFoundError, StateError


class CopyState(StrEnum):
    PULLING = "pulling"
    READY = "ready"
    QUARANTINED = "quarantined"
    FAILED = "failed"


PULLING, READY = CopyState.PULLING, CopyState.READY
QUARANTINED, FAILED = CopyState.QUARANTINED, CopyState.FAILED

# Allowed moves of a copy; None is "no copy on that host yet". A ready copy may be pulled again
# (replaced) or quarantined (a later check failed); a quarantined or failed one only pulled
# again; `ready` from nothing adopts a file already verified on the host.
MOVES: Mapping[CopyState | None, frozenset[CopyState]] = {
    None: frozenset({PULLING, READY}),
    PULLING: frozenset({PULLING, READY, QUARANTINED, FAILED}),
    READY: frozenset({PULLING, READY, QUARANTINED}),
    QUARANTINED: frozenset({PULLING}),
    FAILED: frozenset({PULLING}),
}

_MODEL_COLUMNS = 'm.id, m.repo, m."commit", m.file, m.quant, m.size, m.sha256, m.created_at'
_COPY_COLUMNS = (
    "hm.host, hm.state, hm.path, hm.bytes_done, hm.error, hm.task_id, hm.last_used_at,"
    " hm.loaded, hm.updated_at"
)


# -- writing ----------------------------------------------------------------------------------


def register(store: Store, file: HubFile, now: float | None = None) -> int:
    """The id of the model row for `file` (repo, commit, file), added if it is new; the file's
    header facts, when it carries them, are kept (on a row without any too)."""
    if not COMMIT_SHA.fullmatch(file.commit):
        raise InputError(f"{file.ref}: commit {file.commit!r} is not a 40-hex sha")
    if not file.sha256 or file.size < 0:
        raise InputError(f"{file.ref}: a model needs its sha256 and size to be registered")
    facts = None if file.facts is None else _json(file.facts)
    identity = (file.repo, file.commit, file.name, file.quant, file.size, file.sha256)
    with store.write() as conn:
        conn.execute(
            'INSERT INTO models (repo, "commit", file, quant, size, sha256, created_at, facts)'
            ' VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, "commit", file) DO UPDATE'
            " SET facts = excluded.facts WHERE models.facts IS NULL AND excluded.facts IS NOT NULL",
            (*identity, _now(now), facts),
        )
        model_id, size, sha256 = conn.execute(
            'SELECT id, size, sha256 FROM models WHERE repo = ? AND "commit" = ? AND file = ?',
            (file.repo, file.commit, file.name),
        ).fetchone()
    if (size, sha256) != (file.size, file.sha256):
        raise StateError(
            f"{file.ref}@{file.commit[:12]} is registered with {size} bytes, sha256 "
            f"{sha256[:12]}, but the hub now says {file.size} bytes, sha256 {file.sha256[:12]}; "
            "a commit's files cannot change, so one of the two is wrong"
        )
    return int(model_id)


def set_host_state(
    store: Store,
    host: str,
    model_id: int,
    state: str,
    *,
    path: str | None = None,
    error: str | None = None,
    task_id: int | None = None,
    bytes_done: int | None = None,
    now: float | None = None,
) -> None:
    """Move the copy of `model_id` on `host` to `state` (a `CopyState` value), checked.

    `path`, `task_id` and `bytes_done` keep their old value when not given; `error` is
    replaced (cleared when not given). A `ready` copy has a path and all its bytes; a copy
    that is no longer ready is not loaded.
    """
    new = _state(state)
    with store.write() as conn:
        old = conn.execute(
            "SELECT state, path, bytes_done, task_id, loaded FROM host_models"
            " WHERE host = ? AND model_id = ?",
            (host, model_id),
        ).fetchone()
        size = conn.execute("SELECT size FROM models WHERE id = ?", (model_id,)).fetchone()
        if size is None:
            raise NotFoundError(f"no model {model_id} in the registry")
        current = None if old is None else CopyState(old[0])
        if new not in MOVES[current]:
            raise StateError(
                f"the copy of model {model_id} on {host} cannot go from "
                f"{current or 'absent'} to {new}"
            )
        path = path if path is not None else (old[1] if old else None)
        if new == READY and not path:
            raise InputError(f"a ready copy of model {model_id} on {host} needs its path")
        if new == READY:
            bytes_done = int(size[0])
        elif bytes_done is None:
            bytes_done = int(old[2]) if old else 0
        task_id = task_id if task_id is not None else (old[3] if old else None)
        loaded = int(bool(old and old[4] and current == READY and new == READY))
        _execute(
            conn,
            "INSERT INTO host_models (host, model_id, state, path, bytes_done, error, task_id,"
            " loaded, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, model_id) DO UPDATE SET state = excluded.state,"
            " path = excluded.path, bytes_done = excluded.bytes_done, error = excluded.error,"
            " task_id = excluded.task_id, loaded = excluded.loaded,"
            " updated_at = excluded.updated_at",
            (host, model_id, new.value, path, bytes_done, error, task_id, loaded, _now(now)),
        )


def set_facts(store: Store, model_id: int, facts: Mapping[str, Any]) -> bool:
    """Keep the header facts of a model that has none; False when it had (or is not there)."""
    cursor = store.write_one(
        "UPDATE models SET facts = ? WHERE id = ? AND facts IS NULL",
        (_json(facts), model_id),
    )
    return cursor.rowcount > 0


def facts(store: Store, model_id: int) -> dict[str, Any] | None:
    """The header facts kept with a model, or None (none read yet, or no such model)."""
    row = store.conn.execute("SELECT facts FROM models WHERE id = ?", (model_id,)).fetchone()
    found = json.loads(row[0]) if row is not None and row[0] is not None else None
    return found if isinstance(found, dict) else None


def touch(store: Store, host: str, model_id: int, when: float) -> bool:
    """Record a use of the copy (LRU); False when there is no copy on that host."""
    cursor = store.write_one(
        "UPDATE host_models SET last_used_at = MAX(COALESCE(last_used_at, 0), ?)"
        " WHERE host = ? AND model_id = ?",
        (when, host, model_id),
    )
    return cursor.rowcount > 0


def set_loaded(store: Store, host: str, model_id: int, loaded: bool) -> bool:
    """Mark the copy loaded in (or unloaded from) an inference child; only a ready copy can be
    loaded. False when there is no copy on that host."""
    with store.write() as conn:
        row = conn.execute(
            "SELECT state FROM host_models WHERE host = ? AND model_id = ?", (host, model_id)
        ).fetchone()
        if row is None:
            return False
        if loaded and row[0] != READY:
            raise StateError(f"the copy of model {model_id} on {host} is {row[0]}, not ready")
        conn.execute(
            "UPDATE host_models SET loaded = ? WHERE host = ? AND model_id = ?",
            (int(loaded), host, model_id),
        )
    return True


def forget_host_copy(store: Store, host: str, model_id: int) -> bool:
    """Drop the record of a copy (its file is gone); False when there was none."""
    cursor = store.write_one(
        "DELETE FROM host_models WHERE host = ? AND model_id = ?", (host, model_id)
    )
    return cursor.rowcount > 0


def unregister(store: Store, model_id: int) -> bool:
    """Drop a model row that no host holds a copy of; False when there was none."""
    with store.write() as conn:
        copies = conn.execute(
            "SELECT host FROM host_models WHERE model_id = ? ORDER BY host", (model_id,)
        ).fetchall()
        if copies:
            hosts = ", ".join(row[0] for row in copies)
            raise StateError(f"model {model_id} still has copies on {hosts}; remove them first")
        return conn.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0


# -- reading ----------------------------------------------------------------------------------


def rows(store: Store, profile: Profile | None = None) -> list[dict[str, Any]]:
    """Every registered model, JSON-ready: its identity, its alias in `profile` (or None), and
    `hosts`: {host: {state, path, loaded, last_used_at, bytes_done, error, task_id, ...}}."""
    return _select(store, profile, "ORDER BY m.repo, m.file, m.id, hm.host", ())


def get(store: Store, model_id: int, profile: Profile | None = None) -> dict[str, Any] | None:
    """One model as `rows` shows it, or None."""
    grouped = _select(store, profile, "WHERE m.id = ? ORDER BY hm.host", (model_id,))
    return grouped[0] if grouped else None


def find(store: Store, ref_or_alias: str, profile: Profile | None) -> dict[str, Any] | None:
    """The registered model a name means, or None when none is registered.

    The name is an alias of `profile` with an `hf:` source (matched by repo, its `file` when
    set, and its `revision` when that is a full commit sha), a model id, or a hub reference
    `owner/repo[:FILE|:QUANT]`. When several commits of one file are registered, the newest
    registration wins; several different files are an InputError naming them.
    """
    if ref_or_alias.isdigit():
        return get(store, int(ref_or_alias), profile)
    alias = profile.models.get(ref_or_alias) if profile is not None else None
    if alias is not None:
        return _find_alias(store, alias, profile)
    repo, selector = split_ref(ref_or_alias)
    candidates = [r for r in _by_repo(store, repo, profile) if _selects(r, selector)]
    return _one(candidates, ref_or_alias)


def ready_on(store: Store, model_id: int) -> list[str]:
    """The hosts holding a ready copy of the model, by name."""
    found = store.conn.execute(
        "SELECT host FROM host_models WHERE model_id = ? AND state = 'ready' ORDER BY host",
        (model_id,),
    ).fetchall()
    return [row[0] for row in found]


def eviction_order(store: Store, host: str) -> list[tuple[int, str, int]]:
    """(model_id, path, size) of the host's ready, unloaded copies, least recently used first.

    A copy never used counts as used when it last changed state (when it became ready). Copies
    being pulled, loaded, quarantined or failed are never in the list.
    """
    found = store.conn.execute(
        "SELECT hm.model_id, hm.path, m.size FROM host_models hm"
        " JOIN models m ON m.id = hm.model_id"
        " WHERE hm.host = ? AND hm.state = 'ready' AND hm.loaded = 0 AND hm.path IS NOT NULL"
        " ORDER BY COALESCE(hm.last_used_at, hm.updated_at), hm.model_id",
        (host,),
    ).fetchall()
    return [(int(model_id), str(path), int(size)) for model_id, path, size in found]


def hub_file(row: Mapping[str, Any]) -> HubFile:
    """The registered model as a `HubFile` (its URL on the current endpoint)."""
    repo, commit, name = row["repo"], row["commit"], row["file"]
    url = file_url(repo, commit, name)
    return HubFile(repo, commit, name, row["size"], row["sha256"], row["quant"], url)


def alias_of(profile: Profile | None, repo: str, commit: str, file: str) -> str | None:
    """The first alias of `profile` that names this model (see `find`)."""
    aliases = profile.models.items() if profile is not None else ()
    return next((n for n, a in aliases if _alias_matches(a, repo, commit, file)), None)


# -- helpers ----------------------------------------------------------------------------------


def _state(state: str) -> CopyState:
    try:
        return CopyState(state)
    except ValueError:
        known = ", ".join(s.value for s in CopyState)
        raise InputError(f"unknown copy state {state!r}; one of {known}") from None


def _json(facts: Mapping[str, Any]) -> str:
    return json.dumps(facts, separators=(",", ":"))


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> None:
    try:
        conn.execute(sql, params)
    except sqlite3.IntegrityError as exc:
        raise InputError(f"the registry refused the change ({exc}); is the task id real?") from None


def _group(found: Iterable[tuple[Any, ...]], profile: Profile | None) -> list[dict[str, Any]]:
    models: dict[int, dict[str, Any]] = {}
    for row in found:
        model_id, repo, commit, file, quant, size, sha256, created_at, host, *copy = row
        model = models.get(model_id)
        if model is None:
            model = models[model_id] = {
                "id": model_id,
                "alias": alias_of(profile, repo, commit, file),
                "repo": repo,
                "commit": commit,
                "file": file,
                "quant": quant,
                "size": size,
                "sha256": sha256,
                "created_at": created_at,
                "hosts": {},
            }
        if host is not None:
            state, path, bytes_done, error, task_id, last_used_at, loaded, updated_at = copy
            model["hosts"][host] = {
                "state": state,
                "path": path,
                "loaded": bool(loaded),
                "last_used_at": last_used_at,
                "bytes_done": bytes_done,
                "error": error,
                "task_id": task_id,
                "updated_at": updated_at,
            }
    return list(models.values())


def _by_repo(store: Store, repo: str, profile: Profile | None) -> list[dict[str, Any]]:
    return _select(store, profile, "WHERE m.repo = ? ORDER BY m.id, hm.host", (repo,))


def _select(
    store: Store, profile: Profile | None, where: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """The models (with their copies) the `where` clause picks, grouped (`_group`)."""
    with store.read() as conn:
        found = conn.execute(
            f"SELECT {_MODEL_COLUMNS}, {_COPY_COLUMNS} FROM models m"
            f" LEFT JOIN host_models hm ON hm.model_id = m.id {where}",
            params,
        ).fetchall()
    return _group(found, profile)


def _selects(row: Mapping[str, Any], selector: str | None) -> bool:
    if selector is None or row["file"] == selector:
        return True
    return row["quant"] is not None and row["quant"] == selector.upper()


def _find_alias(store: Store, alias: ModelAlias, profile: Profile | None) -> dict[str, Any] | None:
    kind, _, repo = alias.source.partition(":")
    if kind != "hf":
        return None
    candidates = [
        r
        for r in _by_repo(store, repo, profile)
        if _alias_matches(alias, r["repo"], r["commit"], r["file"])
    ]
    return _one(candidates, alias.name)


def _alias_matches(alias: ModelAlias, repo: str, commit: str, file: str) -> bool:
    if alias.source != f"hf:{repo}":
        return False
    if alias.file is not None and alias.file != file:
        return False
    revision = (alias.revision or "").lower()
    return not COMMIT_SHA.fullmatch(revision) or revision == commit


def _one(candidates: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The newest registration, when every candidate is the same file."""
    if not candidates:
        return None
    files = sorted({r["file"] for r in candidates})
    if len(files) > 1:
        repo = candidates[0]["repo"]
        raise InputError(
            f"{name} matches {len(files)} registered files; name one: "
            + ", ".join(f"{repo}:{f}" for f in files)
        )
    return max(candidates, key=lambda r: int(r["id"]))
