"""Running the gateway: a listening socket, the bridge (embedded control plane), uvicorn.

`serve()` runs in the foreground until SIGINT/SIGTERM (uvicorn's graceful shutdown: running
requests get `SHUTDOWN_GRACE_S`), then stops the bridge (and with it the embedded control
loop, which gives running tasks `controller.shutdown_grace_s`). `running()` serves from a
thread, on port 0 by default, for tests and the benchmark.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import uvicorn

from bitinglip.config import Profile
from bitinglip.control import ControlLoop
from bitinglip.errors import StateError
from bitinglip.gateway.app import Gateway
from bitinglip.gateway.auth import Keys, check_bind
from bitinglip.gateway.bridge import Bridge

SHUTDOWN_GRACE_S = 5
START_TIMEOUT_S = 30.0


@dataclass
class Served:
    """A gateway serving from a thread."""

    bridge: Bridge
    gateway: Gateway
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response written in two parts waits ~40 ms for the delayed ACK of the first.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StateError(
            f"cannot listen on {bind}:{port}: {exc.strerror}; choose another --port or --bind"
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn re-raises the SIGINT/SIGTERM it stopped on once it has shut down, which would end
    the process before the control plane stops; here a signal only asks it to stop (a second
    SIGINT forces it), and `serve` returns."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _server(gateway: Gateway, access_log: bool) -> uvicorn.Server:
    config = uvicorn.Config(
        gateway.app(),
        lifespan="off",
        log_config=None,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return _Server(config)


def serve(
    profile: Profile,
    bind: str,
    port: int,
    *,
    access_log: bool = False,
    on_ready: Callable[[str, Bridge], None] = lambda _url, _bridge: None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM."""
    keys = Keys.from_config(profile.gateway)
    check_bind(bind, keys)
    sock = listen(bind, port)
    bridge = Bridge(profile)
    control: ControlLoop | None = None
    try:
        bridge.start()
        gateway = Gateway(bridge, keys, profile.gateway, bind)
        server = _server(gateway, access_log)
        control = bridge.control
        if control is not None:  # a control loop that gives up stops the server too
            threading.Thread(target=_stop_with, args=(control, server), daemon=True).start()
        actual = sock.getsockname()[1]
        on_ready(Served(bridge, gateway, bind, actual).url, bridge)
        server.run(sockets=[sock])
    finally:
        sock.close()
        bridge.stop()
    if control is not None and control.failure is not None:
        raise control.failure  # the command exits 1 naming it


def _stop_with(control: ControlLoop, server: uvicorn.Server) -> None:
    control.ended.wait()
    if control.failure is not None:
        server.should_exit = True


@contextmanager
def running(
    profile: Profile,
    bind: str = "127.0.0.1",
    port: int = 0,
    *,
    shared_loop: ControlLoop | None = None,
) -> Iterator[Served]:
    """Serve from a thread for the duration (a bound port 0 picks a free port)."""
    keys = Keys.from_config(profile.gateway)
    check_bind(bind, keys)
    sock = listen(bind, port)
    bridge = Bridge(profile, shared_loop=shared_loop)
    bridge.start()
    gateway = Gateway(bridge, keys, profile.gateway, bind)
    server = _server(gateway, access_log=False)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="bitinglip-http", daemon=True
    )
    thread.start()
    try:
        _wait_started(server, thread)
        yield Served(bridge, gateway, bind, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
        bridge.stop()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    done = threading.Event()
    for _ in range(int(START_TIMEOUT_S / 0.01)):
        if server.started or not thread.is_alive():
            break
        done.wait(0.01)
    if not server.started:
        raise StateError("the gateway's HTTP server did not start")
