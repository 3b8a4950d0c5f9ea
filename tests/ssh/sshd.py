"""Real OpenSSH servers on 127.0.0.1 for tests: one `sshd -D` per host, each in its own folder.

A host has its own ed25519 host key, `authorized_keys` (the session's client key), config, log
and port; it runs in the foreground (`-D`), so the test owns the listener process. Fault
injection works on processes, found through /proc:

- `stop()` freezes (SIGSTOP) the listener, then every sshd process below it (the per-connection
  monitor and its unprivileged child, found by following parent pids through sshd processes
  only), until a scan finds no new one; then SIGKILLs them all. Freezing first means nothing can
  fork a session that escapes the kill. Processes a session started are not sshd processes and are
  left alone: their pipes close, as on a real dropped link, and a process that daemonized itself
  (setsid, reparented to init) is not below the listener at all.
- `cut()` does the same to the per-connection processes only; the listener keeps accepting.

Killed processes are gone (or zombies: an init that never reaps, as in some VMs, keeps them as
`Z`, which hold no sockets) before either returns. Every host started here is stopped at exit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import FAST_QUEUE, INFER_ENV

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be an absolute path
PRIVSEP_DIR = Path("/run/sshd")
ADDRESS = "127.0.0.1"
READY_TIMEOUT_S = 5.0
GONE_TIMEOUT_S = 2.0
PORT_TRIES = 5
# Keywords the host manages itself; `extra_config` may not set them.
OWN_KEYWORDS = ("port", "listenaddress", "hostkey", "authorizedkeysfile", "pidfile")

# Hosts whose listener may be running, stopped at interpreter exit if a test left one behind.
_RUNNING: set[SshdHost] = set()


@dataclass(frozen=True)
class ClientKeys:
    """The client's key pair (authorized on every host) and one authorized nowhere."""

    key: Path
    pub: str
    wrong_key: Path


def make_client_keys(folder: Path) -> ClientKeys:
    """Two fresh ed25519 key pairs without passphrases in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    key, wrong = folder / "id_ed25519", folder / "id_ed25519_wrong"
    keygen(wrong, "bitinglip-test-unauthorized")
    return ClientKeys(key=key, pub=keygen(key, "bitinglip-test"), wrong_key=wrong)


def keygen(path: Path, comment: str) -> str:
    """Write a new ed25519 key pair at `path` (replacing one there); its public line, no comment."""
    for old in (path, Path(f"{path}.pub")):
        old.unlink(missing_ok=True)
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    subprocess.run(command, check=True, capture_output=True)
    kind, blob = Path(f"{path}.pub").read_text(encoding="ascii").split()[:2]
    return f"{kind} {blob}"


def fingerprint(public_line: str) -> str:
    """`SHA256:...` of a public key line, exactly as `ssh-keygen -l` and OpenSSH print it."""
    digest = hashlib.sha256(base64.b64decode(public_line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for 127.0.0.1:0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ADDRESS, 0))
        return int(sock.getsockname()[1])


class SshdHost:
    """One sshd on 127.0.0.1:`port`; `start`, `stop`, `cut` and `rekey` inject faults."""

    def __init__(
        self,
        name: str,
        folder: Path,
        keys: ClientKeys,
        *,
        port: int | None = None,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        own = [key for key in extra_config or {} if key.lower() in OWN_KEYWORDS]
        if own:
            raise ValueError(f"extra_config may not set {', '.join(own)}: the host manages it")
        self.name, self.dir = name, folder
        self.log = folder / "log"
        self.port = free_port() if port is None else port
        self._port_given = port is not None
        self._extra = dict(extra_config or {})
        self._proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "authorized_keys").write_text(keys.pub + "\n", encoding="ascii")
        self.host_pub = keygen(folder / "hk", f"bitinglip-test-{name}")
        self.fingerprint = fingerprint(self.host_pub)

    def __repr__(self) -> str:
        return f"SshdHost({self.name!r}, port={self.port}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The listener's pid while it runs."""
        return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def known_hosts_line(self) -> str:
        return f"[{ADDRESS}]:{self.port} {self.host_pub}"

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes running now."""
        return [] if self.pid is None else list(_sshd_below(_process_table(), self.pid))

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start the listener (no-op while it runs); return once it answers with its banner."""
        if self.pid is not None:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        for _ in range(1 if self._port_given else PORT_TRIES):
            problem = self._spawn_and_wait()
            if problem is None:
                self._port_given = True  # restarts keep this port
                _RUNNING.add(self)
                return
            if "Address already in use" not in problem or self._port_given:
                break
            self.port = free_port()  # lost the race for the picked port: try another one
        raise RuntimeError(f"sshd {self.name} did not start on {ADDRESS}:{self.port}: {problem}")

    def stop(self) -> None:
        """Kill the listener and every per-connection sshd process; live connections drop."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        try:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)  # accepts nothing more, forks nothing more
                _kill(_freeze_sshd_below(proc.pid))
        finally:
            proc.kill()
            proc.wait(GONE_TIMEOUT_S)

    def cut(self) -> None:
        """Kill the per-connection sshd processes only: live connections drop, new ones work."""
        if self.pid is not None:
            _kill(_freeze_sshd_below(self.pid))

    def rekey(self) -> None:
        """Replace the host key with a new one and restart (clients see a changed host key)."""
        self.stop()
        self.host_pub = keygen(self.dir / "hk", f"bitinglip-test-{self.name}")
        self.fingerprint = fingerprint(self.host_pub)
        self.start()

    def _config(self) -> str:
        settings = {
            "Port": str(self.port),
            "ListenAddress": ADDRESS,
            "HostKey": str(self.dir / "hk"),
            "AuthorizedKeysFile": str(self.dir / "authorized_keys"),
            "PidFile": str(self.dir / "pid"),
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "StrictModes": "no",
            "UsePAM": "no",
            "PrintMotd": "no",
            "Subsystem": "sftp internal-sftp",
            "LogLevel": "VERBOSE",
            # A session's environment is sshd's own, not the test's: the agents it starts (and
            # their llama.cpp children) get INFER_ENV here.
            "SetEnv": " ".join(f"{k}={v}" for k, v in INFER_ENV.items()),
        }
        for key, value in self._extra.items():  # sshd keeps a keyword's first value: replace it
            for old in [old for old in settings if old.lower() == key.lower()]:
                del settings[old]
            settings[key] = value
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def _spawn_and_wait(self) -> str | None:
        """Start sshd and wait until it listens and greets; None, or why it did not."""
        if not SSHD.exists():
            return f"{SSHD} is missing; install openssh-server (`make check` does)"
        config = self.dir / "sshd_config"
        config.write_text(self._config(), encoding="utf-8")
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:  # sshd's own stderr, before -E takes over
            argv = [str(SSHD), "-D", "-f", str(config), "-E", str(self.log)]
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        problem = self._wait_ready(self._proc, offset)
        if problem is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        return problem

    def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int) -> str | None:
        listening = f"Server listening on {ADDRESS} port {self.port}."
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"it exited with status {proc.returncode}; log: {self._log_since(offset)}"
            # Only after the log says it listens is the port ours, not a stray listener's.
            if listening in self._log_since(offset) and _greets(self.port):
                return None
            time.sleep(0.01)
        return f"no SSH banner within {READY_TIMEOUT_S:g}s; log: {self._log_since(offset)}"

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return " | ".join(log.read().decode("utf-8", "replace").splitlines()[-10:])


def start_sshd(
    root: Path,
    name: str,
    keys: ClientKeys,
    *,
    port: int | None = None,
    extra_config: dict[str, str] | None = None,
) -> SshdHost:
    """A started host in `root/name`; a free port unless `port` is given."""
    host = SshdHost(name, root / name, keys, port=port, extra_config=extra_config)
    host.start()
    return host


def ssh_profile_text(
    hosts: Sequence[SshdHost],
    keys: ClientKeys,
    *,
    workdir_root: Path,
    python: str = sys.executable,
    extra: str = "",
) -> str:
    """A profile's TOML: `extra` first (top-level keys), fast leases, one ssh host per sshd."""
    entries = [
        "[[hosts]]\n"
        f"name = {json.dumps(host.name)}\n"
        'kind = "ssh"\n'
        f"address = {json.dumps(ADDRESS)}\n"
        f"port = {host.port}\n"
        'user = "root"\n'
        f"identity_file = {json.dumps(str(keys.key))}\n"
        f"python = {json.dumps(python)}\n"
        f"workdir = {json.dumps(str(workdir_root / host.name))}\n"
        f"model_dir = {json.dumps(str(workdir_root / host.name / 'models'))}\n"
        for host in hosts
    ]
    return extra + FAST_CONTROL + "\n" + "\n".join(entries) + MODELS


# tests/conftest.py's FAST_QUEUE without its local host: its controller and queue settings, then
# its model aliases.
FAST_CONTROL = FAST_QUEUE[: FAST_QUEUE.index("[[hosts]]")]
MODELS = FAST_QUEUE[FAST_QUEUE.index("[models.") - 1 :]


# -- processes ------------------------------------------------------------------------------


def _greets(port: int) -> bool:
    """Whether 127.0.0.1:`port` accepts a connection and sends an SSH-2.0 banner."""
    try:
        with socket.create_connection((ADDRESS, port), timeout=1.0) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"SSH-2.0-")


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command name, state) of every process, from /proc/PID/stat."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                text = stat.read()
        except OSError:  # it exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and ')', so split at the last ')'
        comm = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        table[int(entry)] = (int(ppid), comm, state)
    return table


def _sshd_below(table: Mapping[int, tuple[int, str, str]], root: int) -> Iterator[int]:
    """Live sshd processes (sshd, sshd-session, sshd-auth) reachable from `root` through sshd."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, comm, state) in table.items():
        if comm.startswith("sshd") and state != "Z":
            children.setdefault(ppid, []).append(pid)
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        yield pid
        stack.extend(children.get(pid, []))


def _freeze_sshd_below(root: int) -> list[int]:
    """SIGSTOP every sshd process below `root` until a scan finds no new one; their pids."""
    frozen: list[int] = []
    while True:
        new = [pid for pid in _sshd_below(_process_table(), root) if pid not in frozen]
        if not new:
            return frozen
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen.extend(new)


def _kill(pids: Iterable[int]) -> None:
    """SIGKILL `pids` and wait until each is gone or a zombie (its sockets are closed then)."""
    waiting = list(pids)
    for pid in waiting:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        table = _process_table()
        waiting = [pid for pid in waiting if pid in table and table[pid][2] != "Z"]
        time.sleep(0.005 if waiting else 0)
    if waiting:
        raise RuntimeError(f"sshd processes {waiting} survived SIGKILL for {GONE_TIMEOUT_S:g}s")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
        os.kill(pid, signum)


@atexit.register
def _stop_all() -> None:
    for host in list(_RUNNING):
        host.stop()
