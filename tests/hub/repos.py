"""What the fake hub stores: file blobs, commits and repos, and the JSON the hub's API shapes
from them (field names as huggingface_hub 2.4 parses them in `hf_api.ModelInfo`/`RepoFile`).

Blobs hash lazily and stream: a file given as a `Path` (the ~240 MB demo model) is never read
whole, and its sha256 is computed once per (path, size, mtime) for the whole test session.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

LFS_THRESHOLD = 10 * 1024  # bytes; larger files (and every *.gguf) are LFS, as on the hub
CHUNK = 1 << 20
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)  # the hub's logical clock starts here
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_CACHE_LOCK = threading.Lock()

FileSource = bytes | Path


def timestamp(moment: datetime) -> str:
    """The hub's date format, e.g. "2025-01-01T00:01:00.000Z"."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def git_blob_oid(chunks: Iterator[bytes], size: int) -> str:
    digest = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(eq=False)
class Blob:
    """One file's content, from memory or from disk, with its size and hub identities."""

    source: FileSource
    size: int
    lfs: bool

    @classmethod
    def of(cls, filename: str, source: FileSource) -> Blob:
        size = source.stat().st_size if isinstance(source, Path) else len(source)
        return cls(source, size, size > LFS_THRESHOLD or filename.endswith(".gguf"))

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The bytes [start, stop) in pieces of at most CHUNK; a Path is read as it goes."""
        stop = self.size if stop is None else stop
        if isinstance(self.source, bytes):
            for at in range(start, stop, CHUNK):
                yield self.source[at : min(at + CHUNK, stop)]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                piece = f.read(min(CHUNK, left))
                if not piece:
                    return  # the file shrank under us: the caller sends fewer bytes
                left -= len(piece)
                yield piece

    @cached_property
    def sha256(self) -> str:
        if isinstance(self.source, bytes):
            return hashlib.sha256(self.source).hexdigest()
        stat = self.source.stat()
        key = (str(self.source.resolve()), stat.st_size, stat.st_mtime_ns)
        with _SHA_CACHE_LOCK:
            cached = _SHA_CACHE.get(key)
        if cached is None:
            digest = hashlib.sha256()
            for chunk in self.chunks():
                digest.update(chunk)
            cached = digest.hexdigest()
            with _SHA_CACHE_LOCK:
                _SHA_CACHE[key] = cached
        return cached

    @cached_property
    def pointer(self) -> bytes:
        """The git-lfs pointer file that git stores in place of an LFS file."""
        lines = (
            "version https://git-lfs.github.com/spec/v1",
            f"oid sha256:{self.sha256}",
            f"size {self.size}",
        )
        return "".join(f"{line}\n" for line in lines).encode()

    @cached_property
    def blob_id(self) -> str:
        """The git blob sha1: of the pointer for an LFS file, of the content otherwise."""
        if self.lfs:
            return git_blob_oid(iter([self.pointer]), len(self.pointer))
        return git_blob_oid(self.chunks(), self.size)

    @property
    def etag(self) -> str:
        """What the hub sends as ETag (and X-Linked-Etag for LFS): sha256 for LFS, else git sha1."""
        return self.sha256 if self.lfs else self.blob_id

    def lfs_json(self, sha_key: str) -> dict[str, Any] | None:
        if not self.lfs:
            return None
        return {sha_key: self.sha256, "size": self.size, "pointerSize": len(self.pointer)}


@dataclass(frozen=True)
class Commit:
    sha: str
    files: Mapping[str, Blob]
    date: datetime
    parent: str | None = None


@dataclass
class Repo:
    id: str
    gated: bool
    private: bool
    downloads: int
    likes: int
    tags: list[str]
    created: datetime
    extra: dict[str, Any] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full 40-hex commit sha; anything else is unknown."""
        sha = self.branches.get(revision, revision.lower())
        return self.commits.get(sha)

    @property
    def head(self) -> Commit:
        return self.commits[self.branches["main"]]

    def summary(self, *, full: bool) -> dict[str, Any]:
        """One entry of GET /api/models."""
        head = self.head
        data: dict[str, Any] = {
            "_id": hashlib.md5(self.id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "author": self.id.split("/")[0] if "/" in self.id else None,
            "sha": head.sha,
            "downloads": self.downloads,
            "likes": self.likes,
            "trendingScore": self.likes,
            "private": self.private,
            "gated": ("auto" if self.gated else False),
            "disabled": False,
            "tags": list(self.tags),
            "pipeline_tag": "text-generation",
            "library_name": "gguf" if "gguf" in self.tags else None,
            "createdAt": timestamp(self.created),
            "lastModified": timestamp(head.date),
        }
        if full:
            data["siblings"] = [{"rfilename": name} for name in sorted(head.files)]
        return {**data, **self.extra}

    def info(self, commit: Commit, *, blobs: bool) -> dict[str, Any]:
        """GET /api/models/{id}[/revision/{rev}]: the summary at `commit`, with its files."""
        data = self.summary(full=False)
        data.update(
            sha=commit.sha,
            lastModified=timestamp(commit.date),
            cardData=None,
            spaces=[],
            siblings=[_sibling(name, blob, blobs) for name, blob in sorted(commit.files.items())],
        )
        if blobs:
            data["usedStorage"] = sum(blob.size for blob in commit.files.values())
        return {**data, **self.extra}

    def refs(self) -> dict[str, Any]:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(self.branches.items())
        ]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}


def _sibling(name: str, blob: Blob, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": name}
    sibling = {"rfilename": name, "size": blob.size, "blobId": blob.blob_id}
    lfs = blob.lfs_json("sha256")
    return {**sibling, "lfs": lfs} if lfs else sibling


def tree(commit: Commit, folder: str, *, recursive: bool) -> list[dict[str, Any]] | None:
    """GET /api/models/{id}/tree/{rev}[/{folder}]; None when `folder` holds nothing."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for name, blob in commit.files.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        for depth in range(1, len(parts)):  # the folders on the way down
            path = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries[path] = {"type": "directory", "path": path, "oid": _tree_oid(commit, path)}
        if recursive or len(parts) == 1:
            entries[name] = _file_entry(name, blob)
    if not entries:
        return None
    return [entries[path] for path in sorted(entries)]


def paths_info(commit: Commit, paths: Iterable[str]) -> list[dict[str, Any]]:
    """POST /api/models/{id}/paths-info/{rev}: the entry of each path that exists."""
    entries = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in commit.files:
            entries.append(_file_entry(path, commit.files[path]))
        elif any(name.startswith(f"{path}/") for name in commit.files):
            entries.append({"type": "directory", "path": path, "oid": _tree_oid(commit, path)})
    return entries


def _file_entry(name: str, blob: Blob) -> dict[str, Any]:
    entry = {"type": "file", "oid": blob.blob_id, "size": blob.size, "path": name}
    lfs = blob.lfs_json("oid")
    return {**entry, "lfs": lfs} if lfs else entry


def _tree_oid(commit: Commit, path: str) -> str:
    return hashlib.sha1(f"{commit.sha}:{path}".encode(), usedforsecurity=False).hexdigest()


def commit_sha(repo_id: str, parent: str | None, serial: int, files: Mapping[str, Blob]) -> str:
    """A stable 40-hex id; it needs no content hash, so adding a big file costs no read."""
    digest = hashlib.sha1(f"{repo_id}\n{parent}\n{serial}\n".encode(), usedforsecurity=False)
    for name in sorted(files):
        digest.update(f"{name}\0{files[name].size}\n".encode())
    return digest.hexdigest()


def logical_time(serial: int) -> datetime:
    """The hub's clock: one minute per commit, so sorting by date is deterministic."""
    return EPOCH + timedelta(minutes=serial)


TRUE = frozenset({"1", "true", "True"})


def flag(query: Mapping[str, list[str]], name: str) -> bool:
    """A boolean query parameter as httpx encodes it ("true")."""
    return any(value in TRUE for value in query.get(name, []))


SORT_KEYS = {
    "downloads": "downloads",
    "likes": "likes",
    "trendingScore": "trendingScore",
    "lastModified": "lastModified",
    "createdAt": "createdAt",
    "trending": "trendingScore",
    "last_modified": "lastModified",
}


def list_models(
    repos: Iterable[Repo], query: Mapping[str, list[str]], *, authorized: bool
) -> list[dict[str, Any]]:
    """GET /api/models: search (substring of the id), author, filter (every tag), gated,
    sort (descending unless direction=1), limit, full, expand."""
    models = [
        repo.summary(full=flag(query, "full")) for repo in repos if not repo.private or authorized
    ]
    if search := query.get("search", [""])[0].lower():
        models = [m for m in models if search in m["id"].lower()]
    if author := query.get("author", [""])[0]:
        models = [m for m in models if m["author"] == author]
    for wanted in query.get("filter", []):
        models = [m for m in models if wanted in m["tags"] or wanted == m["library_name"]]
    if gated := query.get("gated"):
        models = [m for m in models if bool(m["gated"]) == (gated[0] in TRUE)]
    if sort := SORT_KEYS.get(query.get("sort", [""])[0]):
        ascending = query.get("direction", ["-1"])[0] == "1"
        models.sort(key=lambda m: m[sort], reverse=not ascending)
    if limit := query.get("limit"):
        models = models[: int(limit[0])]
    if expand := query.get("expand"):
        models = [{k: v for k, v in m.items() if k in {"_id", "id", *expand}} for m in models]
    return models
