"""The request handler of the fake hub: routing, auth, the hub's error shape, and file bodies
with Range support. State lives on `Hub` (tests.hub.server), reached as `self.server.hub`."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub.faults import BodyWriter, Fault
from tests.hub.repos import Blob, Commit, Repo, flag, list_models, paths_info, tree

if TYPE_CHECKING:
    from tests.hub.server import Hub

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the hub's exact words
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_LOG_IN = " You must have access to it and be authenticated to access it. Please log in."


class Request(NamedTuple):
    """One request as received: `path` keeps its query string, header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]


class HubError(Exception):
    """Ends a request with the hub's error shape: a status, X-Error-Code/-Message and JSON."""

    def __init__(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        header_safe = message.encode("ascii", "replace").decode()  # headers are latin-1
        self.headers = {"X-Error-Message": header_safe, **headers}
        if code:
            self.headers["X-Error-Code"] = code


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[HubRequestHandler], hub: Hub
    ) -> None:
        self.hub = hub
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-transfer is normal here, not worth a traceback."""


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = 60  # an idle keep-alive connection ends after this
    server: HubServer

    def setup(self) -> None:
        super().setup()
        self.server.hub.track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the socket is gone (reset fault, client hang-up)
            super().finish()
        self.server.hub.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log is `Hub.requests`."""

    def do_GET(self) -> None:
        self._dispatch({})

    def do_HEAD(self) -> None:
        self._dispatch({})

    def do_POST(self) -> None:
        """Only paths-info is a POST; its form fields are read like query parameters."""
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(parse_qs(self.rfile.read(length).decode(), keep_blank_values=True))

    # -- routing --

    def _dispatch(self, form: dict[str, list[str]]) -> None:
        hub = self.server.hub
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub.requests.append(Request(self.command, self.path, headers))
        split = urlsplit(self.path)
        query = {**parse_qs(split.query, keep_blank_values=True), **form}
        segments = split.path.strip("/").split("/")
        try:
            authorized = self._authorized(headers.get("authorization"))
            if self.command == "POST" and "paths-info" not in segments:
                raise HubError(405, "Only paths-info accepts a POST here")
            if segments[:2] == ["api", "whoami-v2"]:
                self._whoami(authorized)
            elif segments == ["api", "models"]:
                self._json(list_models(hub.all_repos(), query, authorized=authorized))
            elif segments[:2] == ["api", "models"] and len(segments) > 2:
                self._model_api(segments[2:], query, authorized)
            elif "resolve" in segments:
                self._resolve(segments, authorized)
            else:
                raise HubError(404, "Not Found")
        except HubError as error:
            self._error(error)
        except OSError:
            self.close_connection = True  # the client went away

    def _authorized(self, header: str | None) -> bool:
        token = self.server.hub.token
        if header is None:
            return token is None
        if token is not None and header != f"Bearer {token}":
            raise HubError(401, INVALID_CREDENTIALS)
        return True

    def _repo(self, repo_id: str, authorized: bool) -> Repo:
        repo = self.server.hub.repo(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _whoami(self, authorized: bool) -> None:
        if not authorized or self.server.hub.token is None:
            raise HubError(401, INVALID_CREDENTIALS)
        name = self.server.hub.user
        token = {"displayName": "tests", "role": "read"}
        auth = {"type": "access_token", "accessToken": token}
        self._json({"type": "user", "id": name, "name": name, "orgs": [], "auth": auth})

    def _model_api(
        self, segments: list[str], query: dict[str, list[str]], authorized: bool
    ) -> None:
        hub = self.server.hub
        repo_id, tail = hub.find_repo([unquote(s) for s in segments])
        repo = self._repo(repo_id, authorized)
        if not tail:
            self._json(repo.info(repo.head, blobs=flag(query, "blobs")))
        elif tail[0] == "revision" and len(tail) == 2:
            commit = _resolve_revision(repo, tail[1])
            self._json(repo.info(commit, blobs=flag(query, "blobs")))
        elif tail[0] == "tree" and len(tail) >= 2:
            commit = _resolve_revision(repo, tail[1])
            entries = tree(commit, "/".join(tail[2:]), recursive=flag(query, "recursive"))
            if entries is None:
                raise _entry_not_found(commit)
            self._json(entries)
        elif tail == ["refs"]:
            self._json(repo.refs())
        elif tail[0] == "paths-info" and len(tail) == 2 and self.command == "POST":
            commit = _resolve_revision(repo, tail[1])
            self._json(paths_info(commit, query.get("paths", [])))
        else:
            raise HubError(404, "Not Found")

    def _resolve(self, segments: list[str], authorized: bool) -> None:
        hub = self.server.hub
        at = segments.index("resolve")
        if at == 0 or len(segments) < at + 3:
            raise HubError(404, "Not Found")
        repo_id = "/".join(unquote(s) for s in segments[:at])
        repo = self._repo(repo_id, authorized)
        if repo.gated and not authorized:
            raise HubError(401, f"Access to model {repo_id} is restricted.{_LOG_IN}", "GatedRepo")
        commit = _resolve_revision(repo, unquote(segments[at + 1]))
        filename = unquote("/".join(segments[at + 2 :]))
        blob = commit.files.get(filename)
        if blob is None:
            raise _entry_not_found(commit)
        key = f"{repo_id}/{filename}"
        fault = hub.take_fault(key, self.command)
        if fault is not None and fault.status is not None:
            message = fault.options.get("message", f"Fault injected: {fault.kind}")
            raise HubError(fault.status, message, fault.options.get("code"))
        self._send_file(key, commit, blob, fault)

    # -- responses --

    def _json(self, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self._head(200, {"Content-Type": "application/json; charset=utf-8"}, len(body))
        self._body(body)

    def _error(self, error: HubError) -> None:
        body = json.dumps({"error": error.message}).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **error.headers}
        self._head(error.status, headers, len(body))
        self._body(body)

    def _head(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _body(self, body: bytes) -> None:
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, key: str, commit: Commit, blob: Blob, fault: Fault | None) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.etag}"',
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        start, stop, partial = self._range(blob.size)
        if partial:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{blob.size}"
        extra = fault.extra_length() if fault else 0
        self._head(206 if partial else 200, headers, stop - start + extra)
        if self.command == "HEAD":
            return
        hub = self.server.hub

        def write(data: bytes) -> None:
            # Counted first: a client may have all the bytes (and its test may read the count)
            # before this thread runs again after the write.
            hub.count_sent(key, len(data))
            self.wfile.write(data)

        writer = BodyWriter(
            blob, start, stop, fault, write=write, reset=self._reset, stopping=hub.stopping
        )
        if not writer.run():
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with an RST (SO_LINGER 0) instead of a clean FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # its makefile() reference would keep the descriptor open
        self.connection.close()

    def _range(self, size: int) -> tuple[int, int, bool]:
        """[start, stop) from the Range header and whether it was one; the whole file when the
        header is absent or not a single byte range (as servers may)."""
        value = self.headers.get("Range")
        match = _RANGE.fullmatch(value.strip()) if value else None
        if match is None or not any(match.groups()):
            return 0, size, False
        first, last = match.groups()
        if not first:  # a suffix: the last N bytes
            start, stop = max(0, size - int(last)), size
        else:
            start, stop = int(first), min(size, int(last) + 1) if last else size
        if start >= stop:
            unsatisfiable = {"Content-Range": f"bytes */{size}"}
            raise HubError(416, "Requested range not satisfiable", **unsatisfiable)
        return start, stop, True


def _entry_not_found(commit: Commit) -> HubError:
    return HubError(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit.sha})


def _resolve_revision(repo: Repo, revision: str) -> Commit:
    commit = repo.resolve(revision)
    if commit is None:
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return commit
