"""One pull's transfer: the bytes from the hub into `<dest>.partial`, verified, then into place.

A `Transfer` runs on its job's worker thread (downloads.py owns the jobs). It answers at once when
`dest` already holds the file; checks free space before any byte moves; resumes a partial by
hashing it and asking for the rest (`Range`); retries stalls, resets, short bodies, refused
connections and 5xx with backoff; and commits a finished file only when its size and sha256
match (fsync, rename), or moves it to `.quarantine/` with a `.why` beside it.

This module holds the steps and their order; the disk side is pull_disk.py (safe opens, writes,
space, quarantine), the hub side hub_http.py (the ranged GET, refusals, fault reasons). Standard
library only (urllib, http.client); the HF token goes only where hub_token.py allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import stat
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from bitinglip_agent.hub_http import open_range, range_start, refusal, socket_of, why
from bitinglip_agent.hub_token import TokenRedirects, sends_token
from bitinglip_agent.pull_disk import (
    PARTIAL_SUFFIX,
    check_space,
    disk_op,
    file_size,
    fsync_dir,
    open_partial,
    quarantine,
    write_all,
)
from bitinglip_agent.pull_errors import PullFailed, Transient

if TYPE_CHECKING:
    from bitinglip_agent.downloads import Job

CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.5
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0


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
        have = file_size(self.partial)
        remaining = self.spec.size - (have if have <= self.spec.size else 0)
        check_space(self.job.final, remaining, self.spec.margin_bytes)
        folder = os.path.dirname(self.job.final)
        disk_op(os.makedirs, folder, exist_ok=True, path=folder)
        fd = open_partial(self.partial)
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

    def _restart(self) -> None:
        """Start over from byte 0: what the partial holds is not wanted."""
        self.hasher, self.offset, self.resumed_from = hashlib.sha256(), 0, 0

    def _fetch(self, fd: int) -> None:
        """Attempts until the partial holds `size` bytes, with backoff between them."""
        failures = 0
        while True:
            try:
                self._attempt(fd)
                return
            except Transient as exc:
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
        self.job.reading(socket_of(resp))
        try:
            start = range_start(resp) if resp.status == 206 else 0
            if resp.status not in (200, 206) or start is None:
                raise Transient(f"unexpected HTTP {resp.status} {resp.reason}")
            if start != self.offset:
                if start != 0:
                    raise Transient(f"asked for bytes from {self.offset}, got from {start}")
                self._restart()
            disk_op(os.ftruncate, fd, self.offset, path=self.partial)
            os.lseek(fd, self.offset, os.SEEK_SET)
            self._copy(resp, fd)
        finally:
            self.job.reading(None)
            resp.close()

    def _open(self, offset: int) -> http.client.HTTPResponse:
        bearer = self.token if self.sends_token else None
        try:
            return open_range(self._opener, self.spec, offset, bearer)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:  # nothing from `offset` on: the next attempt asks from 0
                self._restart()
            raise refusal(
                self.spec,
                exc.code,
                str(exc.reason),
                token_sent=self.sends_token,
                token_given=bool(self.token),
            ) from None

    def _copy(self, resp: http.client.HTTPResponse, fd: int) -> None:
        """Body bytes to the partial and the hash, chunk by chunk, until `size` bytes."""
        while self.offset < self.spec.size:
            self._check_stop()
            try:
                chunk = resp.read1(min(CHUNK, self.spec.size - self.offset))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise Transient(why(exc)) from None
            if not chunk:
                raise Transient(f"the body ended at byte {self.offset} of {self.spec.size}")
            write_all(fd, chunk, self.partial)
            self.hasher.update(chunk)
            self.offset += len(chunk)
            self._fetched += len(chunk)
            self._progress()

    def _commit(self, fd: int) -> dict[str, Any]:
        """Verify, fsync, rename into place; or quarantine and fail."""
        disk_op(os.fsync, fd, path=self.partial)
        digest, size = self.hasher.hexdigest(), os.fstat(fd).st_size
        if size != self.spec.size:
            self._quarantine(f"size {size} != expected {self.spec.size}")
        if digest != self.spec.sha256:
            self._quarantine(f"sha256 {digest} != expected {self.spec.sha256}")
        disk_op(os.replace, self.partial, self.job.final, path=self.job.final)
        fsync_dir(os.path.dirname(self.job.final))
        st = os.stat(self.job.final)
        self.verified[(self.job.final, st.st_size, st.st_mtime_ns)] = digest
        return self._result(already=False)

    def _quarantine(self, reason: str) -> NoReturn:
        quarantine(self.partial, self.job.root, self.spec, reason)

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
