"""The agent detached from any one connection: what an SSH host runs.

`--daemon --socket PATH` starts the agent once per host (a second start finds it running and
says so): it listens on a Unix socket (mode 0600 in a 0700 folder), double-forks away from the
SSH session and keeps working when the connection drops. The control plane reaches the socket
over the SSH connection (a streamlocal channel, or `--attach PATH`, which relays stdio to it
where the server forbids forwarding).

A connection becomes the agent's one attachment when it sends its first line; a probe that
sends nothing is ignored. A new attachment replaces the old one and first receives the results
kept since (only of the runs its first line, a `ping`, says it still waits for: the others are
dropped here), the output events that could not be sent, and a `hello` listing the runs still
in progress. With no attachment and nothing running for
`--detached-exit-s`, the agent exits. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import queue
import socket
import stat
import sys
import threading
import time
from typing import Callable

from bitinglip_agent import protocol
from bitinglip_agent.server import Agent, AgentOptions

FIRST_LINE_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0

Attachment = tuple[socket.socket, protocol.LineReader, bytes]


def socket_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def is_running(path: str) -> bool:
    """True when a daemon accepts connections on `path` (the probe sends nothing)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def start(path: str, options: AgentOptions, detached_exit_s: float) -> int:
    """Start the daemon unless one is running; print one JSON line saying which."""
    path = socket_path(path)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        unsafe = unsafe_folder(folder)
    except OSError as exc:
        unsafe = f"cannot use the run folder {folder}: {exc.strerror or exc}"
    if unsafe is not None:
        sys.stderr.write(f"bitinglip_agent: {unsafe}\n")
        return 1
    lock_fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two starters at once: one starts, one finds it
        if is_running(path):
            _say({"socket": path, "started": False})
            return 0
        listener = _listen(path)
        pid = _daemonize(listener, lock_fd, path, options, detached_exit_s)
        listener.close()
    finally:
        os.close(lock_fd)
    _say({"socket": path, "started": True, "pid": pid})
    return 0


def unsafe_folder(folder: str) -> str | None:
    """Why the socket's folder is not safe to serve from, or None: it must be this user's and
    writable by no one else, or another user could replace the socket or its lock."""
    st = os.stat(folder)
    if st.st_uid != os.geteuid():
        return (
            f"the run folder {folder} belongs to uid {st.st_uid}, not this user ({os.geteuid()});"
            " remove it (or pick another --socket path) and start again"
        )
    if st.st_mode & 0o022:
        return (
            f"the run folder {folder} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}); run `chmod 700 {folder}` and start again"
        )
    return None


def attach(path: str) -> int:
    """Relay stdin/stdout to the daemon's socket (for servers that forbid forwarding)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path(path))
    except OSError as exc:
        sys.stderr.write(f"bitinglip_agent: cannot attach to {path}: {exc}\n")
        return 1

    def upstream() -> None:
        stdin = sys.stdin.fileno()
        while True:
            data = os.read(stdin, 65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    out = sys.stdout.buffer
    while True:
        data = sock.recv(65536)
        if not data:
            return 0
        out.write(data)
        out.flush()


def _say(fields: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead daemon's socket file
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(umask)
    listener.listen(16)
    return listener


def _daemonize(
    listener: socket.socket,
    lock_fd: int,
    path: str,
    options: AgentOptions,
    detached_exit_s: float,
) -> int:
    """Fork twice (out of the SSH session's process group); return the daemon's pid."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)
        with os.fdopen(read_end, "rb") as pipe:
            return int(pipe.read() or b"0")
    try:
        os.close(read_end)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.close(lock_fd)
        _redirect_stdio(path + ".log")
        _log_line(f"daemon started, pid {os.getpid()}, socket {path}")
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        code = serve(listener, options, detached_exit_s)
        _log_line(f"daemon stopped (exit {code})")
        with contextlib.suppress(OSError):
            os.unlink(path)  # gone: the next start makes a new one
    except BaseException as exc:  # noqa: BLE001 - the daemon's last words, then out
        sys.stderr.write(f"bitinglip_agent: daemon failed: {exc!r}\n")
        code = 1
    finally:
        sys.stderr.flush()
    os._exit(code)


def _log_line(text: str) -> None:
    """One timestamped line in the daemon's log (its stderr), read by `bitinglip` Logs view."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} bitinglip_agent: {text}\n")
    sys.stderr.flush()


def _redirect_stdio(log_path: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)


def serve(listener: socket.socket, options: AgentOptions, detached_exit_s: float) -> int:
    """Serve attachments one at a time until `shutdown`, or idle and detached too long."""
    attachments: queue.Queue[Attachment] = queue.Queue()
    agent = Agent(sys.stdin.buffer, None, options, reattachable=True)
    current: list[socket.socket | None] = [None]

    def kick() -> None:
        conn = current[0]
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    threading.Thread(
        target=_accept, args=(listener, attachments, kick), name="accept", daemon=True
    ).start()
    agent.start_telemetry()
    idle_since = time.monotonic()
    try:
        while not agent.stopping:
            try:
                conn, lines, first = attachments.get(timeout=1.0)
            except queue.Empty:
                if agent.active_runs():
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > detached_exit_s:
                    _log_line(f"idle and detached for {detached_exit_s:g} s: exiting")
                    break
                continue
            current[0] = conn
            _log_line(f"a control plane attached ({len(agent.active_runs())} run(s) in progress)")
            _serve_one(agent, conn, lines, first)
            current[0] = None
            _log_line(f"the control plane detached ({len(agent.active_runs())} run(s) go on)")
            idle_since = time.monotonic()
    finally:
        agent.stop()
        listener.close()
    return 0


def _serve_one(agent: Agent, conn: socket.socket, lines: protocol.LineReader, first: bytes) -> None:
    wfile = conn.makefile("wb")
    try:
        if agent.attach(wfile, _wanted(first)):
            agent.handle_line(first)
            agent.end_batch()
            agent.read_from(lines)
    except OSError:
        pass  # the connection broke: detach, keep working
    finally:
        agent.detach(wfile)
        for closable in (wfile, conn):
            with contextlib.suppress(OSError):
                closable.close()


def _wanted(first: bytes) -> set[str] | None:
    """The runs a re-attaching control plane still waits for (its first line, a `ping`, lists
    them: the kept results of other runs are dropped); None when it does not say: then every
    kept line is sent."""
    try:
        msg = json.loads(first)
    except ValueError:
        return None
    runs = msg.get("runs") if isinstance(msg, dict) else None
    return {str(r) for r in runs} if isinstance(runs, list) else None


def _accept(
    listener: socket.socket, attachments: queue.Queue[Attachment], kick: Callable[[], None]
) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EINVAL):
                return  # the listener was closed: the daemon is stopping
            continue
        threading.Thread(target=_first_line, args=(conn, attachments, kick), daemon=True).start()


def _first_line(
    conn: socket.socket, attachments: queue.Queue[Attachment], kick: Callable[[], None]
) -> None:
    """A connection that says something becomes the attachment; a silent probe is closed."""
    conn.settimeout(FIRST_LINE_TIMEOUT_S)
    lines = protocol.LineReader(conn.recv)
    try:
        first = lines.next_line()
    except OSError:
        first = None
    if not first:
        conn.close()
        return
    conn.settimeout(None)
    kick()
    attachments.put((conn, lines, first))
