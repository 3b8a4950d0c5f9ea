"""Pulls: one model file from the Hugging Face hub into the host's model dir, verified.

A `pull` names a file by its commit-pinned URL, size and sha256, and a `dest` under the model
dir. Names are checked here before anything touches the disk. Each dest has at most one download
in flight (a job: a worker thread; the agent's loop never waits on it): a second pull of the same
dest waits for the first's outcome. The worker runs a `Transfer` (transfer.py): free space before
any byte moves, bytes to `<dest>.partial` hashed as they are written, resumes with `Range`,
retries with backoff, and a commit that leaves `dest` only ever holding a verified file (a
mismatch goes to `.quarantine/` with a `.why` beside it).

Standard library only (urllib, http.client); the HF token is sent only over https to the hub
the pull names (hub_token.py), never logged, never put in a message.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bitinglip_agent.protocol import unsafe_reason
from bitinglip_agent.pull_disk import GIB, QUARANTINE_DIR
from bitinglip_agent.pull_errors import PullFailed
from bitinglip_agent.transfer import Transfer

if TYPE_CHECKING:
    from bitinglip_agent.server import Agent

DEFAULT_MARGIN_BYTES = GIB
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 5
_SHA256 = re.compile(r"[0-9a-f]{64}")


def ignore_sigxfsz() -> None:
    """A write past RLIMIT_FSIZE then fails with EFBIG (`write_failed`) instead of killing the
    agent. Signal dispositions can only be set from the main thread; children inherit it."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@dataclass(frozen=True)
class PullSpec:
    url: str
    repo: str
    commit: str
    name: str
    size: int
    sha256: str
    dest: str
    hub: str | None = None  # the control plane's hub: the only place the HF token may go
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> PullSpec:
        """The pull a message asks for; PullFailed (bad_request, unsafe_name) if it is not one."""
        file, dest = msg.get("file"), msg.get("dest")
        if not isinstance(file, dict) or not isinstance(dest, str):
            raise PullFailed("bad_request", "a pull needs `file` (an object) and `dest`")
        for what, value in (("dest", dest), ("file.name", file.get("name"))):
            if not isinstance(value, str):
                raise PullFailed("bad_request", f"{what} must be a string")
            reason = unsafe_reason(value)
            if reason is not None:
                raise PullFailed("unsafe_name", f"{what} {value!r} {reason}")
        url, size, sha256 = file.get("url"), file.get("size"), file.get("sha256")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise PullFailed("bad_request", "file.url must be an http(s) URL")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PullFailed("bad_request", "file.size must be a byte count")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise PullFailed("bad_request", "file.sha256 must be 64 hex digits")
        hub = msg.get("hub")
        if hub is not None and not isinstance(hub, str):
            raise PullFailed("bad_request", "hub must be the hub's base URL")
        return cls(
            url=url,
            repo=str(file.get("repo") or ""),
            commit=str(file.get("commit") or ""),
            name=file["name"],
            size=size,
            sha256=sha256.lower(),
            dest=dest,
            hub=hub,
            margin_bytes=int(msg.get("margin_bytes", DEFAULT_MARGIN_BYTES)),
            timeout_s=float(msg.get("timeout_s", DEFAULT_TIMEOUT_S)),
            retries=max(int(msg.get("retries", DEFAULT_RETRIES)), 0),
        )

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.name}" if self.repo else self.name


@dataclass
class Job:
    """One dest's download and the pulls waiting on it."""

    spec: PullSpec
    root: str
    final: str
    waiters: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    stop_code: str = "canceled"
    stopper: str | None = None  # the pull whose cancel stopped the download
    thread: threading.Thread | None = None
    _sock: socket.socket | None = None
    _sock_lock: threading.Lock = field(default_factory=threading.Lock)

    def reading(self, sock: socket.socket | None) -> None:
        """The socket the worker reads now (None: none), for `halt` to break."""
        with self._sock_lock:
            self._sock = sock

    def halt(self, code: str) -> None:
        """Stop the download: between chunks, or at once when it waits on the network."""
        self.stop_code = code
        self.stop.set()
        with self._sock_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile: its fd is already -1
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


class Downloads:
    """The agent's pulls, one job per dest."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
        self._stopping = False
        ignore_sigxfsz()

    def pull(self, msg: dict[str, Any]) -> None:
        """Start (or join) the download a `pull` message asks for; answered from a worker."""
        run_id = str(msg["id"])
        try:
            spec = PullSpec.from_message(msg)
            root, final = self._paths(spec.dest)
        except PullFailed as exc:
            self.agent.error(run_id, exc.code, exc.message)
            return
        with self._lock:
            if self._stopping:
                self.agent.error(run_id, "agent_stopping", "the agent is stopping")
                return
            job = self._jobs.get(final)
            if job is not None:
                if (job.spec.size, job.spec.sha256) != (spec.size, spec.sha256):
                    message = f"another pull is writing {spec.dest} with a different file"
                    self.agent.error(run_id, "bad_request", message)
                else:
                    job.waiters.append(run_id)
                return
            self._start(Job(spec, root, final, [run_id]))

    def remove(self, run_id: str, dest: str) -> None:
        """Delete a model file (an eviction, `models rm`): only under the model dir, never one
        being downloaded; empty folders above it go too."""
        why = unsafe_reason(dest) if isinstance(dest, str) else "is not a string"
        if why is not None:
            self.agent.error(run_id, "unsafe_name", f"dest {dest!r} {why}")
            return
        try:
            root, final = self._paths(dest)
        except PullFailed as exc:
            self.agent.error(run_id, exc.code, str(exc))
            return
        with self._lock:
            busy = final in self._jobs
        if busy:
            self.agent.error(run_id, "bad_request", f"{dest} is being downloaded; cancel it first")
            return
        try:
            size = os.path.getsize(final)
            os.remove(final)
        except FileNotFoundError:
            size = 0
        except OSError as exc:
            self.agent.error(run_id, "write_failed", f"removing {final}: {exc.strerror}")
            return
        folder = os.path.dirname(final)
        while folder != root and folder.startswith(root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
        self.agent.send("result", run_id, result={"removed": final, "bytes": size})

    def _paths(self, dest: str) -> tuple[str, str]:
        """(model dir, final path), both real; the model dir is made if missing."""
        model_dir = self.agent.options.model_dir
        if not model_dir:
            raise PullFailed("bad_request", "this agent was started without --model-dir")
        root = os.path.realpath(os.path.expanduser(model_dir))
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise PullFailed("write_failed", f"making {root}: {exc.strerror}") from None
        final = os.path.realpath(os.path.join(root, dest))
        if not final.startswith(root + os.sep):
            raise PullFailed("unsafe_name", f"dest {dest!r} resolves outside the model dir")
        if os.path.relpath(final, root).split(os.sep)[0] == QUARANTINE_DIR:
            raise PullFailed("unsafe_name", f"dest {dest!r} is inside {QUARANTINE_DIR}/")
        return root, final

    def _start(self, job: Job) -> None:
        """Register `job` and start its worker (the lock is held)."""
        self._jobs[job.final] = job
        job.thread = threading.Thread(
            target=self._run, args=(job,), name=f"pull:{job.spec.dest}", daemon=True
        )
        job.thread.start()

    def cancel(self, run_id: str) -> bool:
        """Cancel one pull; its download stops only when no other pull waits on it."""
        with self._lock:
            job = next((j for j in self._jobs.values() if run_id in j.waiters), None)
            if job is None:
                return False
            job.waiters.remove(run_id)
            if not job.waiters:
                job.stopper = run_id
                job.halt("canceled")
                return True
        self.agent.error(run_id, "canceled", f"canceled; the pull of {job.spec.dest} goes on")
        return True

    def active(self) -> list[str]:
        with self._lock:
            return [run_id for job in self._jobs.values() for run_id in job.waiters]

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every download between chunks (partials kept) and wait `timeout` for them."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs.values())
            for job in jobs:
                job.halt("agent_stopping")
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(deadline - time.monotonic(), 0.0))

    # -- the worker ------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        token = self.agent.secret("HF_TOKEN")
        transfer = Transfer(job, token, self._verified, lambda data: self._progress(job, data))
        try:
            self._finish(job, "result", transfer.run())
        except PullFailed as exc:
            self._finish(job, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - the worker's boundary: fail the pull, live on
            sys.stderr.write(f"bitinglip_agent: pull of {job.spec.dest} failed: {exc!r}\n")
            self._finish(job, "download_failed", f"internal error: {exc!r}")

    def _progress(self, job: Job, data: dict[str, Any]) -> None:
        with self._lock:
            waiters = list(job.waiters)
        for run_id in waiters:
            self.agent.send("event", run_id, kind="progress", data=data)

    def _finish(self, job: Job, code: str, outcome: Any) -> None:
        with self._lock:
            del self._jobs[job.final]
            waiters = list(job.waiters)
            if code == "canceled" and waiters and not self._stopping:
                # Pulls that joined after the last one canceled: start again for them.
                self._start(Job(job.spec, job.root, job.final, waiters))
                waiters = []
        if job.stopper is not None:
            ended = f"canceled; the pull of {job.spec.dest} had ended ({code})"
            self.agent.error(job.stopper, "canceled", outcome if code == "canceled" else ended)
        for run_id in waiters:
            if code == "result":
                self.agent.send("result", run_id, result=outcome)
            else:
                self.agent.error(run_id, code, outcome)
