"""One pull's transfer: the bytes from the hub into `<dest>.partial`, verified, then into place.

A `Transfer` runs on its job's worker thread (downloads.py owns the jobs). It answers at once when
`dest` already holds the file; checks free space before any byte moves; resumes a partial by
hashing it and asking for the rest (`Range`); retries stalls, resets, short bodies, refused
connections and 5xx with backoff; and commits a finished file only when its size and sha256
match (fsync, rename), or moves it to `.quarantine/` with a `.why` beside it.

Standard library only (urllib, http.client); the HF token goes only where hub_token.py allows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable

from bitinglip_agent import __version__
from bitinglip_agent.hub_token import TokenRedirects, sends_token

if TYPE_CHECKING:
    from bitinglip_agent.downloads import Job

GIB = 1 << 30
CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.5
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
PARTIAL_SUFFIX = ".partial"
QUARANTINE_DIR = ".quarantine"
# Files the agent writes are opened with these: never through a symlink, never inherited.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_PLAIN = (
    "is a symlink or not a plain file; refused to write through it (remove it and pull again)"
)


class PullFailed(Exception):
    """A pull's outcome as an `error`: a protocol code and a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Transient(Exception):
    """A fault worth another attempt: stall, reset, short body, refused connection, HTTP 5xx."""


class Transfer:
    """One job's work: the already-there check, the space check, the attempts, the commit."""

    def __init__(
        self,
        job: Job,
        token: str | None,
        verified: dict[tuple[str, int, int], str],
        progress: Callable[[dict[str, Any]], None],
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.partial = job.final + PARTIAL_SUFFIX
        self.token = token
        self.verified = verified
        self.send_progress = progress
        self.hasher = hashlib.sha256()
        self.offset = 0  # bytes in the partial, all of them in `hasher`
        self.resumed_from = 0
        self.sends_token = bool(token) and sends_token(self.spec.url, self.spec.hub)
        self._opener = urllib.request.build_opener(TokenRedirects(self.spec.hub))
        self._started_at = time.monotonic()
        self._fetched = 0
        self._progress_at = 0.0

    def run(self) -> dict[str, Any]:
        already = self._already()
        if already is not None:
            return already
        have = _file_size(self.partial)
        self._check_space(self.spec.size - (have if have <= self.spec.size else 0))
        folder = os.path.dirname(self.job.final)
        _disk(os.makedirs, folder, exist_ok=True, path=folder)
        fd = self._open_partial()
        try:
            self._resume(fd)
            self._fetch(fd)
            self._progress(force=True)
            return self._commit(fd)
        except PullFailed as exc:
            if exc.code == "write_failed" or os.fstat(fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(self.partial)  # it may be corrupt, or it is empty litter
            raise
        finally:
            os.close(fd)

    def _already(self) -> dict[str, Any] | None:
        """The result when dest already holds the file (hashed only if its size matches)."""
        try:
            st = os.stat(self.job.final)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != self.spec.size:
            return None
        key = (self.job.final, st.st_size, st.st_mtime_ns)
        digest = self.verified.get(key)
        if digest is None:
            digest = self._hash_file(self.job.final)
        if digest != self.spec.sha256:
            return None
        self.verified[key] = digest
        return self._result(already=True)

    def _hash_file(self, path: str) -> str:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                self._check_stop()
                hasher.update(block)
        return hasher.hexdigest()

    def _check_space(self, remaining: int) -> None:
        folder = os.path.dirname(self.job.final)
        while not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        st = os.statvfs(folder)
        free, need = st.f_bavail * st.f_frsize, remaining + self.spec.margin_bytes
        if free < need:
            raise PullFailed(
                "no_space",
                f"needs {need / GIB:.2f} GiB ({remaining} bytes + {self.spec.margin_bytes}"
                f" margin), {free / GIB:.2f} GiB free on {_mount_point(folder)}"
                f" ({free} bytes)",
            )

    def _open_partial(self) -> int:
        """The partial, opened never through a symlink (one planted there would have the agent
        write wherever it points) and only when it is a plain file."""
        try:
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PullFailed("write_failed", f"{self.partial} {_NOT_PLAIN}") from None
            raise PullFailed("write_failed", f"creating {self.partial}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PullFailed("write_failed", f"{self.partial} {_NOT_PLAIN}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PullFailed(
                "download_failed", f"another process is writing {self.partial}"
            ) from None
        return fd

    def _resume(self, fd: int) -> None:
        """Hash what the partial holds (a prefix of the file); drop it if it is too long."""
        if os.fstat(fd).st_size > self.spec.size:
            os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            self._check_stop()
            block = os.read(fd, CHUNK)
            if not block:
                break
            self.hasher.update(block)
            self.offset += len(block)
        self.resumed_from = self.offset

    def _fetch(self, fd: int) -> None:
        """Attempts until the partial holds `size` bytes, with backoff between them."""
        failures = 0
        while True:
            try:
                self._attempt(fd)
                return
            except _Transient as exc:
                self._check_stop()  # a halt breaks the connection: not a fault
                failures += 1
                if failures > self.spec.retries:
                    raise PullFailed(
                        "download_failed",
                        f"{self.spec.label}: gave up after {failures} attempts; last: {exc}",
                    ) from None
            delay = min(BACKOFF_START_S * 2 ** (failures - 1), BACKOFF_MAX_S)
            if self.job.stop.wait(delay):
                self._check_stop()

    def _attempt(self, fd: int) -> None:
        if self.offset >= self.spec.size:
            return
        resp = self._open(self.offset)
        self.job.reading(_socket_of(resp))
        try:
            start = _range_start(resp) if resp.status == 206 else 0
            if resp.status not in (200, 206) or start is None:
                raise _Transient(f"unexpected HTTP {resp.status} {resp.reason}")
            if start != self.offset:
                if start != 0:
                    raise _Transient(f"asked for bytes from {self.offset}, got from {start}")
                self.hasher, self.offset, self.resumed_from = hashlib.sha256(), 0, 0
            _disk(os.ftruncate, fd, self.offset, path=self.partial)
            os.lseek(fd, self.offset, os.SEEK_SET)
            self._copy(resp, fd)
        finally:
            self.job.reading(None)
            resp.close()

    def _open(self, offset: int) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.spec.url)
        request.add_header("User-Agent", f"bitinglip-agent/{__version__}")
        request.add_header("Accept-Encoding", "identity")
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        if self.sends_token:
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        try:
            resp = self._opener.open(request, timeout=self.spec.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._refused(exc.code, str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_why(exc)) from None
        assert isinstance(resp, http.client.HTTPResponse)
        return resp

    def _refused(self, status: int, reason: str) -> Exception:
        spec = self.spec
        if status in (401, 403):
            if self.sends_token:
                fix = "the HF_TOKEN given has no access to it (accept its terms on the hub?)"
            elif self.token:
                fix = f"HF_TOKEN goes only over https to the hub ({spec.hub or 'none named'})"
            else:
                fix = "set HF_TOKEN to a token with access to it"
            return PullFailed(
                "unauthorized",
                f"the hub refused access to {spec.repo or spec.url} (gated or private,"
                f" HTTP {status}): {fix}",
            )
        if status == 404:
            where = f" at {spec.commit[:12]}" if spec.commit else ""
            return PullFailed("not_found", f"{spec.label}{where} is not on the hub (HTTP 404)")
        if status == 416:
            self.hasher, self.offset, self.resumed_from = hashlib.sha256(), 0, 0
        if status in (408, 416, 429) or status >= 500:
            return _Transient(f"HTTP {status} {reason}")
        return PullFailed("download_failed", f"{spec.label}: HTTP {status} {reason}")

    def _copy(self, resp: http.client.HTTPResponse, fd: int) -> None:
        """Body bytes to the partial and the hash, chunk by chunk, until `size` bytes."""
        while self.offset < self.spec.size:
            self._check_stop()
            try:
                chunk = resp.read1(min(CHUNK, self.spec.size - self.offset))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise _Transient(_why(exc)) from None
            if not chunk:
                raise _Transient(f"the body ended at byte {self.offset} of {self.spec.size}")
            _write_all(fd, chunk, self.partial)
            self.hasher.update(chunk)
            self.offset += len(chunk)
            self._fetched += len(chunk)
            self._progress()

    def _commit(self, fd: int) -> dict[str, Any]:
        """Verify, fsync, rename into place; or quarantine and fail."""
        _disk(os.fsync, fd, path=self.partial)
        digest, size = self.hasher.hexdigest(), os.fstat(fd).st_size
        if size != self.spec.size:
            self._quarantine(f"size {size} != expected {self.spec.size}")
        if digest != self.spec.sha256:
            self._quarantine(f"sha256 {digest} != expected {self.spec.sha256}")
        _disk(os.replace, self.partial, self.job.final, path=self.job.final)
        _fsync_dir(os.path.dirname(self.job.final))
        st = os.stat(self.job.final)
        self.verified[(self.job.final, st.st_size, st.st_mtime_ns)] = digest
        return self._result(already=False)

    def _quarantine(self, reason: str) -> None:
        folder = os.path.join(self.job.root, QUARANTINE_DIR)
        _disk(os.makedirs, folder, exist_ok=True, path=folder)
        base = os.path.join(folder, f"{self.spec.dest.replace('/', '__')}.{int(time.time())}")
        path, n = base, 0
        while os.path.exists(path):
            n += 1
            path = f"{base}.{n}"
        _disk(os.replace, self.partial, path, path=path)
        why = (
            f"{reason}\nrepo: {self.spec.repo}\ncommit: {self.spec.commit}\n"
            f"name: {self.spec.name}\nurl: {self.spec.url}\nat: {time.time():.0f}\n"
        )
        with contextlib.suppress(OSError):  # a new file only: never through what is there
            fd = os.open(path + ".why", os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(why)
        _fsync_dir(folder)
        raise PullFailed("checksum_mismatch", f"{reason}; quarantined at {path}")

    def _result(self, *, already: bool) -> dict[str, Any]:
        return {
            "path": self.job.final,
            "size": self.spec.size,
            "sha256": self.spec.sha256,
            "resumed_from": self.resumed_from,
            "already": already,
        }

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress_at = now
        rate = self._fetched / max(now - self._started_at, 1e-6)
        left = self.spec.size - self.offset
        self.send_progress(
            {
                "bytes": self.offset,
                "total": self.spec.size,
                "bytes_per_s": round(rate),
                "eta_s": round(left / rate, 1) if rate > 0 else None,
            }
        )

    def _check_stop(self) -> None:
        if not self.job.stop.is_set():
            return
        kept = f"{self.offset} bytes kept in {self.partial} for a later pull"
        if self.job.stop_code == "agent_stopping":
            raise PullFailed("agent_stopping", f"the agent is stopping; {kept}")
        raise PullFailed("canceled", f"canceled; {kept}")


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 body, from `Content-Range: bytes START-END/TOTAL`."""
    match = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _socket_of(resp: http.client.HTTPResponse) -> socket.socket | None:
    """The socket under a response (SocketIO keeps it as `_sock`; None if that changes)."""
    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _write_all(fd: int, data: bytes, path: str) -> None:
    view = memoryview(data)
    while view:
        written = _disk(os.write, fd, view, path=path)
        if not written:
            raise PullFailed("write_failed", f"writing {path}: no bytes written")
        view = view[written:]


def _disk(call: Callable[..., Any], *args: Any, path: str, **kwargs: Any) -> Any:
    """A disk operation whose OSError fails the pull as `write_failed` (ENOSPC, EFBIG, EIO)."""
    try:
        return call(*args, **kwargs)
    except OSError as exc:
        raise PullFailed("write_failed", f"writing {path}: {exc.strerror or exc}") from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _disk(os.fsync, fd, path=path)
    finally:
        os.close(fd)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _why(exc: BaseException) -> str:
    """A one-line reason for a network fault (URLError wraps the socket's own)."""
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    if isinstance(inner, TimeoutError) or "timed out" in str(inner):
        return "stalled: no data within the read timeout"
    if isinstance(inner, http.client.IncompleteRead):
        return f"short body ({len(inner.partial)} bytes, {inner.expected} more expected)"
    text = str(inner) or type(inner).__name__
    return f"{type(inner).__name__}: {text}" if type(inner).__name__ not in text else text
