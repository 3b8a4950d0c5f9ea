"""The SSH transport: one persistent connection per host, the agent on a channel of it.

On (re)connect: authenticate (trust fails closed), find the agent (probe, install the zipapp if
this version is not there yet), start its daemon if none is running, and open a channel to its
Unix socket (a streamlocal channel; where the server forbids forwarding, a relay process on an
exec channel). The first line sent is a `ping` listing the runs still awaited; the agent answers
with the results it kept of those (it drops the rest), then `hello` listing its runs in progress,
so the session can tell which runs survived a drop, and send again those it never acknowledged.

A drop calls `on_detach(reason)` and the transport reconnects with capped exponential backoff
and full jitter; only `close()` ends it (`on_close`). Every SSH transport of a process shares
one asyncio loop in one thread (`SshLoop`); `send` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from bitinglip_agent import protocol

from bitinglip.agent_bundle import Bundle
from bitinglip.config import HostConfig, Profile
from bitinglip.control.transport import bootstrap, ssh
from bitinglip.errors import SshError

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 30.0
SECRET_ENV = ("HF_TOKEN",)


class SshLoop:
    """The asyncio loop every SSH connection of this process runs on, in a daemon thread."""

    _instance: ClassVar[SshLoop | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="ssh", daemon=True).start()

    @classmethod
    def get(cls) -> SshLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = SshLoop()
            return cls._instance

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def backoff(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^attempt)], so 50 hosts never reconnect
    in step."""
    return random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


class RemoteTransport:
    """The agent of one SSH host; the Transport protocol of sessions.py."""

    def __init__(self, profile: Profile, host: HostConfig, bundle: Bundle) -> None:
        self.name = host.name
        self.profile = profile
        self.host = host
        self.bundle = bundle
        self.loop = SshLoop.get()
        self.attached = False
        self.last_error = ""
        self.attach_started = 0.0
        self.attaches = 0
        self._conn: Any = None
        self._channel: ssh.LineChannel | None = None
        self._found: bootstrap.Probe | None = None
        self._sock = ""
        self._relay = False
        self._closing = False
        self._ended: asyncio.Future[str] | None = None
        self._wake: asyncio.Event | None = None
        self._task: concurrent.futures.Future[Any] | None = None
        self._out: list[bytes] = []
        self._in_flight: Callable[[], list[str]] = list
        self._out_lock = threading.Lock()
        self._out_pending = False
        cached = bootstrap.load_probe(profile, host, bundle)
        if cached is not None:  # the agent's place is known: try its socket before probing
            self._found = cached
            self._sock = bootstrap.socket_path(cached, bundle, profile, host)

    # -- the Transport protocol (any thread) -----------------------------------------------

    def start(
        self,
        on_line: Callable[[bytes], None],
        on_close: Callable[[str], None],
        on_detach: Callable[[str], None] | None = None,
        in_flight: Callable[[], list[str]] | None = None,
    ) -> None:
        self._in_flight = in_flight or list
        self._task = self.loop.submit(self._run(on_line, on_close, on_detach or (lambda _r: None)))

    def send(self, data: bytes) -> bool:
        """Queue `data` for the channel; sends from many threads and steps go out together,
        with one wake-up of the SSH loop per batch."""
        if not self.attached or self._channel is None:
            return False
        with self._out_lock:
            self._out.append(data)
            if self._out_pending:
                return True
            self._out_pending = True
        self.loop.loop.call_soon_threadsafe(self._write_out)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop reconnecting and close the connection (the agent keeps any work it has)."""
        self._closing = True
        self.loop.loop.call_soon_threadsafe(self._finish, min(timeout, 2.0))
        if self._task is not None:
            try:
                self._task.result(timeout)
            except concurrent.futures.CancelledError:  # `_finish` stopped a connect in progress
                log.debug("ssh %s: closed while connecting", self.name)
            except concurrent.futures.TimeoutError:
                self._task.cancel()

    # -- the loop thread -------------------------------------------------------------------

    def _write_out(self) -> None:
        with self._out_lock:
            data = b"".join(self._out)
            self._out.clear()
            self._out_pending = False
        if self._channel is not None and data:
            self._channel.write(data)

    def _finish(self, grace: float) -> None:
        """Let what was sent (a `shutdown`) reach the agent, then end; at most `grace` s."""
        if self._channel is None:
            self._interrupt()
            if self._task is not None:  # still connecting (a silent host): stop waiting for it
                self._task.cancel()
            return
        self._channel.finish()
        self.loop.loop.call_later(grace, self._interrupt)

    def _interrupt(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result("closed")
        if self._wake is not None:
            self._wake.set()

    async def _run(
        self,
        on_line: Callable[[bytes], None],
        on_close: Callable[[str], None],
        on_detach: Callable[[str], None],
    ) -> None:
        self._wake = asyncio.Event()
        attempt = 0
        try:
            while not self._closing:
                self._ended = asyncio.get_running_loop().create_future()
                try:
                    await self._attach(on_line)
                    attempt = 0
                    reason = await self._ended
                except SshError as exc:
                    reason = str(exc)
                    self.last_error = reason
                self._drop()
                if self._closing:
                    break
                on_detach(reason)
                delay = backoff(attempt)
                attempt += 1
                log.info("ssh %s: %s; reconnecting in %.2fs", self.name, reason, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            self._drop()
            on_close("closed")

    def _drop(self) -> None:
        self.attached = False
        with self._out_lock:
            self._out.clear()  # never reached the agent: unacknowledged, sent after the next hello
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _on_end(self, reason: str) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    async def _attach(self, on_line: Callable[[bytes], None]) -> None:
        self.attach_started = time.monotonic()
        self._conn = conn = await ssh.connect(self.host)
        conn_closed = conn.wait_closed()
        asyncio.ensure_future(conn_closed).add_done_callback(
            lambda _f: self._on_end("the SSH connection was lost")
        )
        if self._found is None:
            await self._start_agent(conn)
        channel = ssh.LineChannel(on_line, self._on_end)
        if not await self._open(conn, channel):  # not running: start it where it was
            channel = await self._restart(conn, on_line)
        self._channel = channel
        self.attached = True
        self.last_error = ""
        self.attaches += 1
        # The runs we still wait for: the agent sends again only their kept results.
        first = [protocol.encode("ping", "attach", runs=self._in_flight())]
        secrets = {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
        if secrets:
            first.append(protocol.encode("configure", "configure", secrets=secrets))
        channel.write(b"".join(first))

    async def _open(self, conn: Any, channel: ssh.LineChannel) -> bool:
        """Open a channel to the running agent; False when none is listening."""
        assert self._found is not None
        if not self._relay:
            try:
                if await ssh.open_socket_channel(conn, self._sock, channel):
                    return True
            except SshError:
                return False
            self._relay = True
            log.info(
                "ssh %s: forwarding is off on the server; relaying through a process", self.name
            )
        await self._run_daemon(conn, self._found)  # the relay needs it running; idempotent
        await ssh.open_command_channel(
            conn, bootstrap.attach_argv(self._found, self._sock), channel
        )
        return True

    async def _restart(self, conn: Any, on_line: Callable[[bytes], None]) -> ssh.LineChannel:
        """Start the agent known to be installed (one exec); if that fails, probe and install
        again (the host changed under us) and start that."""
        assert self._found is not None
        try:
            await self._run_daemon(conn, self._found)
        except SshError:
            await self._start_agent(conn)
        channel = ssh.LineChannel(on_line, self._on_end)
        if not await self._open(conn, channel):
            await self._start_agent(conn)
            channel = ssh.LineChannel(on_line, self._on_end)
            if not await self._open(conn, channel):
                raise SshError(f"ssh {self.name}: the agent did not start", "channel")
        return channel

    async def _start_agent(self, conn: Any) -> None:
        found = await bootstrap.probe(conn, self.host, self.bundle)
        if await bootstrap.install_agent(conn, self.host, self.bundle, found):
            log.info("ssh %s: installed agent %s", self.name, self.bundle.sha256[:12])
        self._sock = bootstrap.socket_path(found, self.bundle, self.profile, self.host)
        await self._run_daemon(conn, found)
        self._found = found
        bootstrap.save_probe(self.profile, self.host, self.bundle, found)

    async def _run_daemon(self, conn: Any, found: bootstrap.Probe) -> None:
        done = await ssh.run(conn, bootstrap.agent_argv(found, self._sock, self.host), timeout=30.0)
        if done.status != 0:
            self._found = None  # probe again next time: the agent file may be gone
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise SshError(
                f"ssh {self.name}: the agent failed to start: {why[-1] if why else done.status}",
                "remote",
            )
