"""A real HTTP server on 127.0.0.1 that speaks the part of the Hugging Face hub's API that
huggingface_hub 2.4 uses, with switches that break file transfers on purpose.

    with Hub() as hub:
        sha = hub.add_repo("org/model", {"model.gguf": Path("big.gguf"), "README.md": b"# hi"})
        HfApi(endpoint=hub.url).model_info("org/model", files_metadata=True)
        hub.fault("org/model", "model.gguf", "truncate", after_bytes=1000, times=1)

Endpoints: GET /api/models, GET /api/models/{id}[/revision/{rev}], GET /api/models/{id}/tree/{rev}
[/{path}], GET /api/models/{id}/refs, POST /api/models/{id}/paths-info/{rev}, GET /api/whoami-v2,
HEAD and GET /{id}/resolve/{rev}/{file}. Files are served straight from `resolve` (no CDN
redirect) with the headers the client reads; the handler is in tests.hub.handler.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.hub.faults import BODY_FAULTS, Fault
from tests.hub.handler import HubRequestHandler, HubServer, Request
from tests.hub.repos import Blob, Commit, FileSource, Repo, commit_sha, logical_time

__all__ = ["Hub", "Request"]

_API_TAILS = ("revision", "tree", "refs", "resolve", "paths-info")


class Hub:
    """The fake hub. Repos, faults and the request log may be changed while it runs."""

    def __init__(self, token: str | None = None) -> None:
        # With a token, gated and private repos need "Authorization: Bearer <token>"; set
        # `token = None` to open everything. A wrong bearer token is refused everywhere.
        self.token: str | None = token or f"hf_test_{secrets.token_hex(8)}"
        self.requests: list[Request] = []
        self.bytes_sent: dict[str, int] = {}
        self.user = "bitinglip-tester"
        self._repos: dict[str, Repo] = {}
        self._faults: dict[str, Fault] = {}
        self._serial = 0
        self._lock = threading.RLock()
        self.stopping = threading.Event()  # set by stop(): ends stalls
        self._connections: set[socket.socket] = set()
        self._server: HubServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the hub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Hub:
        self.stopping.clear()
        self._server = HubServer(("127.0.0.1", 0), HubRequestHandler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end stalls and drop open connections."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for conn in list(self._connections):
                _quietly_shutdown(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- content --

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        gated: bool = False,
        private: bool = False,
        downloads: int = 0,
        likes: int = 0,
        tags: Sequence[str] = ("gguf",),
        info: Mapping[str, Any] | None = None,
    ) -> str:
        """A new model repo whose "main" holds `files`; returns that commit's sha.

        `info` adds or overrides model-info fields (e.g. {"gguf": {...}, "pipeline_tag": None}).
        """
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id!r} already exists")
            self._serial += 1
            created = logical_time(self._serial)
            repo = Repo(
                repo_id, gated, private, downloads, likes, list(tags), created, dict(info or {})
            )
            self._repos[repo_id] = repo
            return self._commit(repo, {}, files, "main", None)

    def commit(
        self, repo_id: str, files: Mapping[str, FileSource | None], *, branch: str = "main"
    ) -> str:
        """A new commit on `branch` (made from main if new): `files` are added or replaced, a
        None value deletes one. Older commits stay resolvable by sha. Returns the new sha."""
        with self._lock:
            repo = self._repos[repo_id]
            parent = repo.resolve(branch) or repo.head
            return self._commit(repo, parent.files, files, branch, parent.sha)

    def _commit(
        self,
        repo: Repo,
        base: Mapping[str, Blob],
        changes: Mapping[str, FileSource | None],
        branch: str,
        parent: str | None,
    ) -> str:
        files = dict(base)
        for name, source in changes.items():
            if source is None:
                files.pop(name, None)
            else:
                files[name] = Blob.of(name, source)
        self._serial += 1
        sha = commit_sha(repo.id, parent, self._serial, files)
        repo.commits[sha] = Commit(sha, files, logical_time(self._serial), parent)
        repo.branches[branch] = sha
        return sha

    def fault(self, repo_id: str, filename: str, kind: str | None, **options: Any) -> None:
        """Break the next downloads of one file (kind None clears the fault).

        Body faults act on GET: "truncate" sends `after_bytes` (default half) of the body then
        closes; "flip" flips bit 0 of the byte at file offset `at` (default: the middle of the
        body sent); "wrong_length" announces `extra` (default 1) more bytes than it sends, then
        closes; "stall" sends `after_bytes` then waits `seconds` (default 30, ended early by
        stop()) before the rest; "reset" sends `after_bytes` then resets the connection (RST).
        A status kind ("401", "403", "404", "429", "500", "503", ...) answers HEAD and GET with
        that status (optional `code`, `message` for X-Error-Code/-Message). `times=N` faults
        only the next N requests it applies to; by default every one.
        """
        key = f"{repo_id}/{filename}"
        with self._lock:
            if kind is None:
                self._faults.pop(key, None)
                return
            times = options.pop("times", None)
            self._faults[key] = Fault(kind, options, times)

    def take_fault(self, key: str, method: str) -> Fault | None:
        """The fault for this request, counted against `times`; body faults skip HEAD."""
        with self._lock:
            fault = self._faults.get(key)
            if fault is None or (method == "HEAD" and fault.kind in BODY_FAULTS):
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[key]
            return fault

    def ranges(self, repo_id: str, filename: str) -> list[str | None]:
        """The Range header (or None) of each GET of one file, in order."""
        suffix = f"/{repo_id}/resolve/"
        return [
            r.headers.get("range")
            for r in self.requests
            if r.method == "GET" and r.path.startswith(suffix) and _path_file(r.path) == filename
        ]

    # -- lookups for the handler --

    def repo(self, repo_id: str) -> Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def find_repo(self, segments: list[str]) -> tuple[str, list[str]]:
        """Split "ns/name/tail..." (or "name/tail...") into a repo id and the rest."""
        with self._lock:
            if len(segments) >= 2 and f"{segments[0]}/{segments[1]}" in self._repos:
                return f"{segments[0]}/{segments[1]}", segments[2:]
            if segments and segments[0] in self._repos:
                return segments[0], segments[1:]
        if len(segments) >= 2 and segments[1] not in _API_TAILS:
            return f"{segments[0]}/{segments[1]}", segments[2:]
        return (segments[0] if segments else ""), segments[1:]

    def all_repos(self) -> list[Repo]:
        with self._lock:
            return list(self._repos.values())

    def count_sent(self, key: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[key] = self.bytes_sent.get(key, 0) + n

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(conn)


def _path_file(path: str) -> str:
    return unquote(urlsplit(path).path.split("/resolve/", 1)[1].split("/", 1)[1])


def _quietly_shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
