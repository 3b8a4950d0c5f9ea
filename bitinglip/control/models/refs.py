"""References to files on the hub, before any request: parsing, quant names, choosing a file.

Pure and standard library only (the registry uses it too); `hub` does the talking. A reference is
`[hf:]owner/repo`, `owner/repo:FILE` (a file name in the repo, with its folder) or
`owner/repo:QUANT` (matched in any case against the quant read from each file name).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from bitinglip.errors import InputError, NotFoundError

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# A quant type as it appears in file names: Q4_K_M, Q8_0, IQ2_XS, IQ4_NL, Q4_0_4_8, TQ1_0,
# F16, BF16, F32, MXFP4 (any case), between separators (start, end, '-', '.', '_').
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(I?Q[1-8]_(?:K_(?:XXS|XS|XL|S|M|L)|K|XXS|XS|NL|S|M|[01](?:_[48]_[48])?)"
    r"|TQ[12]_0|MXFP4(?:_MOE)?|NVFP4|BF16|FP16|FP32|F16|F32)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_GGUF_SUFFIX = re.compile(r"[-_.]gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class RepoSummary:
    """One search hit. `updated` is ISO 8601 (UTC) or None when the hub did not say."""

    id: str
    downloads: int
    likes: int
    updated: str | None
    gated: bool
    tags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tags": list(self.tags)}


@dataclass(frozen=True)
class HubFile:
    """One GGUF file of a repo at one commit: what a pull fetches and verifies.

    `sha256` and `size` are the file's LFS identity (what the download is checked against);
    `url` downloads exactly this commit's file. `facts` are the memory facts of its GGUF header
    (`gguf_meta.header_facts`) once something read it, which registering it keeps; they are not
    part of its identity (not compared, not in `to_dict`).
    """

    repo: str
    commit: str
    name: str
    size: int
    sha256: str
    quant: str | None
    url: str
    facts: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        del found["facts"]
        return found


# -- helpers -----------------------------------------------------------------------------


def endpoint() -> str:
    """The hub's base URL: `$HF_ENDPOINT` or https://huggingface.co, without a trailing /."""
    return (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or DEFAULT_ENDPOINT


def token() -> str | None:
    """`$HF_TOKEN`, or None. Never stored, logged, or put in a message."""
    value = (os.environ.get("HF_TOKEN") or "").strip()
    return value or None


def parse_quant(name: str) -> str | None:
    """The quant type in a GGUF file name (upper case), the last one when several appear."""
    stem = name.rsplit("/", 1)[-1]
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else None


def short_name(repo: str, quant: str | None) -> str:
    """The short name of a repo's file, as Ollama names models: the repo's name in lower case
    without a `GGUF` suffix, then `:quant` in lower case when the file has one
    (`bartowski/Qwen2.5-0.5B-Instruct-GGUF` and Q4_K_M -> `qwen2.5-0.5b-instruct:q4_k_m`)."""
    base = _GGUF_SUFFIX.sub("", repo.rsplit("/", 1)[-1]).lower() or repo.lower()
    return f"{base}:{quant.lower()}" if quant else base


def file_url(repo: str, commit: str, name: str) -> str:
    """The download URL of `name` at exactly `commit` on the current endpoint."""
    return f"{endpoint()}/{repo}/resolve/{commit}/{quote(name, safe='/')}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """`[hf:]owner/repo[:FILE|:QUANT]` -> (repo, selector or None); InputError when malformed."""
    text = ref.strip()
    text = text[3:] if text.startswith("hf:") else text
    repo, sep, selector = text.partition(":")
    check_repo(repo, what=ref)
    if sep and not selector:
        raise InputError(f"{ref!r}: nothing after ':'; write {repo}:FILE or {repo}:QUANT")
    return repo, (selector or None)


def check_repo(repo: str, what: str | None = None) -> None:
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise InputError(
            f"{what or repo!r} is not a hub reference; write owner/repo, owner/repo:FILE or "
            "owner/repo:QUANT (e.g. bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M)"
        )


def choose(repo: str, commit: str, files: Sequence[HubFile], selector: str | None) -> HubFile:
    """The one file `selector` (a file name, or a quant in any case) names among `files`."""
    at = f"{repo}@{commit[:12]}"
    if not files:
        raise NotFoundError(f"{at} has no .gguf files; `bitinglip models files {repo}` lists it")
    if selector is None:
        if len(files) == 1:
            return files[0]
        raise InputError(f"{at} has {len(files)} GGUF files; pick one: {_choices(repo, files)}")
    for file in files:
        if file.name == selector:
            return file
    if selector.lower().endswith(".gguf"):
        names = ", ".join(f.name for f in files)
        raise NotFoundError(f"{at} has no file {selector}; its GGUF files: {names}")
    matches = [f for f in files if f.quant is not None and f.quant == selector.upper()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"{at} has no {selector} file; pick one: {_choices(repo, files)}")
    names = ", ".join(f"{repo}:{f.name}" for f in matches)
    raise InputError(f"{at} has {len(matches)} {selector.upper()} files; name one: {names}")


def _choices(repo: str, files: Iterable[HubFile]) -> str:
    """`repo:QUANT` for each quant held by exactly one file, `repo:FILE` for the rest."""
    files = list(files)
    counts: dict[str, int] = {}
    for f in files:
        if f.quant is not None:
            counts[f.quant] = counts.get(f.quant, 0) + 1
    picks = [
        f"{repo}:{f.quant}" if f.quant is not None and counts[f.quant] == 1 else f"{repo}:{f.name}"
        for f in files
    ]
    return ", ".join(picks)
