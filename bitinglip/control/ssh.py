"""SSH: the one module that imports asyncssh. Connect with trust that fails closed, run quoted
argv, copy files over SFTP, and carry JSON lines on a channel.

Trust: a host key must be in the user's `~/.ssh/known_hosts` or BitingLip's own known-hosts
file (`<user config dir>/known_hosts`, written by `bitinglip hosts trust`). A host with no key
on record is refused with the offered key's SHA256 fingerprint; a host whose recorded key
differs is a hard error. Lookups use OpenSSH's rule for ports: a host on port P != 22 is
`[address]:P`, with no fall back to the bare address (several hosts behind one address stay
apart). No option turns checking off.

Authentication is by key only (the host's identity_file, else the ssh-agent and the default
keys); password and keyboard-interactive are off, so nothing ever prompts. `~/.ssh/config` is
read as OpenSSH would (Host aliases, HostName, User, Port, IdentityFile, ProxyJump): a profile's
address may be a Host alias, and its port (when 22, the default), user and identity_file (when
unset) come from there.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from bitinglip.config import HostConfig
from bitinglip.config_files import user_config_dir
from bitinglip.errors import SshError

CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 5.0
KEEPALIVE_COUNT = 3
# AES-GCM first: with AES-NI it is ~2.5x the throughput of chacha20 for our small lines.
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
]


def own_known_hosts() -> Path:
    return user_config_dir() / "known_hosts"


def known_hosts_files() -> list[Path]:
    return [Path("~/.ssh/known_hosts").expanduser(), own_known_hosts()]


def describe(host: HostConfig) -> str:
    user = f"{host.user}@" if host.user else ""
    return f"{host.name} ({user}{host.address}:{host.port})"


def host_pattern(address: str, port: int) -> str:
    """The known_hosts name of a host, as OpenSSH writes it."""
    return address if port == 22 else f"[{address}]:{port}"


@dataclass
class KeyCheck:
    """What the host key check saw; filled in while connecting."""

    host: str = ""
    port: int = 22
    offered: Any = None  # asyncssh.SSHKey
    recorded: list[Any] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return "" if self.offered is None else str(self.offered.get_fingerprint("sha256"))

    @property
    def verdict(self) -> str:
        if self.offered is None:
            return "ok"
        return "changed_host_key" if self.recorded else "unknown_host_key"


class _Client(asyncssh.SSHClient):
    def __init__(self, check: KeyCheck) -> None:
        self.check = check

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        self.check.host, self.check.port, self.check.offered = host, port, key
        return False  # only keys on record are trusted (asyncssh checked those already)


def _recorded_keys(check: KeyCheck) -> Callable[[str, str, int | None], Any]:
    """The known_hosts lookup: keys recorded for exactly this host and port, both files."""

    def lookup(host: str, addr: str, port: int | None) -> Any:
        keys: list[Any] = []
        revoked: list[Any] = []
        for path in known_hosts_files():
            if not path.is_file():
                continue
            try:
                known = asyncssh.read_known_hosts(str(path))
            except (OSError, ValueError) as exc:
                raise SshError(
                    f"{path}: cannot read known hosts ({exc}); fix or remove the bad line",
                    "unknown_host_key",
                ) from None
            # `_match` is SSHKnownHosts.match without its fall back from [host]:port to host.
            found = known._match(host, addr, port)
            keys += found[0]
            revoked += found[2]
        check.host, check.port = host, port or 22
        check.recorded = list(keys)
        return keys, [], revoked

    return lookup


def jump_host(host: HostConfig) -> HostConfig | None:
    """The proxy_jump of `host` (`[user@]address[:port]`) as a host of its own; it is trusted
    and authenticated like any other (`bitinglip hosts trust NAME` trusts it first)."""
    if not host.proxy_jump:
        return None
    user, _, rest = host.proxy_jump.rpartition("@")
    address, _, port = rest.partition(":")
    return HostConfig(
        name=host.name,
        kind="ssh",
        address=address,
        port=int(port) if port.isdigit() else 22,
        user=user or None,
        identity_file=host.identity_file,
    )


async def connect(host: HostConfig, *, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """An authenticated connection to `host` (an asyncssh.SSHClientConnection), or SshError."""
    if host.address is None:
        raise SshError(f"host {host.name} has no address; set address in the profile")
    jump = jump_host(host)
    tunnel = None if jump is None else await _connect(jump, timeout, None)
    try:
        return await _connect(host, timeout, tunnel)
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise


async def _connect(host: HostConfig, timeout: float, tunnel: Any) -> Any:
    check = KeyCheck()
    options: dict[str, Any] = {
        "known_hosts": _recorded_keys(check),
        "password_auth": False,
        "kbdint_auth": False,
        "gss_auth": False,
        "connect_timeout": timeout,
        "login_timeout": timeout,
        "keepalive_interval": KEEPALIVE_S,
        "keepalive_count_max": KEEPALIVE_COUNT,
        "encryption_algs": ENCRYPTION_ALGS + _other_encryption_algs(),
    }
    if host.port != 22:  # else ~/.ssh/config's Port for this name, or 22
        options["port"] = host.port
    if host.user:
        options["username"] = host.user
    if host.identity_file is not None:
        if not host.identity_file.is_file():
            raise SshError(
                f"ssh {describe(host)}: identity file {host.identity_file} does not exist; "
                "fix identity_file in the profile or remove it to use the ssh-agent",
                "no_key",
            )
        options["client_keys"] = [str(host.identity_file)]
        options["agent_path"] = None
    if tunnel is not None:
        options["tunnel"] = tunnel
    try:
        return await asyncssh.connect(
            host.address, client_factory=lambda: _Client(check), **options
        )
    except (TimeoutError, OSError, asyncssh.Error, ValueError) as exc:
        raise _explain(host, exc, check, timeout) from None


def _other_encryption_algs() -> list[str]:
    from asyncssh.encryption import get_default_encryption_algs

    return [a.decode() for a in get_default_encryption_algs() if a.decode() not in ENCRYPTION_ALGS]


def _explain(host: HostConfig, exc: BaseException, check: KeyCheck, timeout: float) -> SshError:
    """One line: what failed, where, and what to do."""
    where = f"ssh {describe(host)}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) or check.offered is not None:
        if check.verdict == "changed_host_key":
            return SshError(
                f"{where}: WARNING: the host key CHANGED (now {check.fingerprint}); this could be "
                "an attack or a reinstalled host. Verify it out of band, then remove the old key "
                f"for {host_pattern(check.host, check.port)} from "
                f"{' or '.join(map(str, known_hosts_files()))}",
                "changed_host_key",
            )
        return SshError(
            f"{where}: unknown host key {check.fingerprint}; if that is the host's key, run "
            f"`bitinglip hosts trust {host.name} --fingerprint {check.fingerprint}`",
            "unknown_host_key",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshError(f"{where}: {_auth_failure(host)}", "auth")
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return SshError(
            f"{where}: cannot use identity file {host.identity_file}: {exc}; an encrypted key "
            "must be loaded into ssh-agent (`ssh-add`) and identity_file removed",
            "no_key",
        )
    if isinstance(exc, ConnectionRefusedError):
        return SshError(f"{where}: connection refused; is sshd running on that port?", "refused")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return SshError(
            f"{where}: no SSH handshake within {timeout:g} s; check the address, the port and "
            "any firewall",
            "timeout",
        )
    if isinstance(exc, socket.gaierror):
        return SshError(f"{where}: cannot resolve {host.address}: {exc.strerror}", "unreachable")
    return SshError(f"{where}: {type(exc).__name__}: {exc}".rstrip(": "), "unreachable")


def _auth_failure(host: HostConfig) -> str:
    if host.identity_file is not None:
        return (
            f"the host refused key {host.identity_file}; add its public key to the host's "
            "~/.ssh/authorized_keys or fix identity_file"
        )
    sock = os.environ.get("SSH_AUTH_SOCK")
    if not sock:
        return (
            "no key was accepted: no identity_file is set and there is no ssh-agent "
            "(SSH_AUTH_SOCK is unset); set identity_file or start ssh-agent and ssh-add a key"
        )
    if not Path(sock).exists():
        return (
            f"no key was accepted: no identity_file is set and the ssh-agent socket {sock} does "
            "not exist; restart ssh-agent or set identity_file"
        )
    return (
        "no key from the ssh-agent or ~/.ssh was accepted; add one to the host's "
        "~/.ssh/authorized_keys or set identity_file"
    )


async def offered_key(host: HostConfig, *, timeout: float = CONNECT_TIMEOUT_S) -> KeyCheck:
    """The key the host offers and what is on record for it (for `hosts trust`). Behind a
    proxy_jump whose own key is not trusted yet, that jump host's key comes first."""
    jump = jump_host(host)
    tunnel = None
    if jump is not None:
        first = await offered_key(jump, timeout=timeout)
        if first.offered is not None:
            return first
        tunnel = await _connect(jump, timeout, None)
    try:
        return await _offered_key(host, timeout, tunnel)
    finally:
        if tunnel is not None:
            tunnel.close()


async def _offered_key(host: HostConfig, timeout: float, tunnel: Any) -> KeyCheck:
    check = KeyCheck()
    try:
        conn = await asyncssh.connect(
            host.address or "",
            **({"port": host.port} if host.port != 22 else {}),
            **({"tunnel": tunnel} if tunnel is not None else {}),
            known_hosts=_recorded_keys(check),
            client_factory=lambda: _Client(check),
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            connect_timeout=timeout,
            client_keys=None,
            agent_path=None,
        )
    except (TimeoutError, OSError, asyncssh.Error, ValueError) as exc:
        if check.offered is None and not isinstance(exc, asyncssh.PermissionDenied):
            raise _explain(host, exc, check, timeout) from None
        return check
    conn.close()
    return check


def record_key(check: KeyCheck) -> Path:
    """Append the offered key to BitingLip's known-hosts file (0600)."""
    path = own_known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = check.offered.export_public_key().decode().strip()
    line = f"{host_pattern(check.host, check.port)} {key}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# -- remote commands and files -----------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    status: int
    stdout: bytes
    stderr: bytes


def command_line(argv: Sequence[str]) -> str:
    """A remote command from an argv: every word quoted for a POSIX shell, never pasted."""
    return shlex.join(argv)


async def run(
    conn: Any,
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    on_output: Callable[[str], None] | None = None,
) -> Completed:
    """Run argv on the host; with `on_output`, its stdout+stderr lines are passed as they come."""
    try:
        if on_output is None:
            done = await asyncio.wait_for(
                conn.run(command_line(argv), encoding=None, check=False), timeout
            )
            return Completed(done.exit_status or 0, done.stdout or b"", done.stderr or b"")
        return await asyncio.wait_for(_stream(conn, argv, on_output), timeout)
    except TimeoutError:
        raise SshError(
            f"running {argv[0]} on the host did not finish within {timeout:g} s", "timeout"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"running {argv[0]} on the host failed: {exc}", "channel") from None


async def _stream(conn: Any, argv: Sequence[str], on_output: Callable[[str], None]) -> Completed:
    process = await conn.create_process(command_line(argv), stderr=asyncssh.STDOUT)
    lines: list[str] = []
    async for line in process.stdout:
        text = line.rstrip("\n")
        lines.append(text)
        on_output(text)
    await process.wait()
    return Completed(process.exit_status or 0, "\n".join(lines[-50:]).encode(), b"")


# Writes stdin to argv[1] (folders made): the copy for servers without the SFTP subsystem.
WRITE_STDIN = (
    "import os, shutil, sys\n"
    "os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    shutil.copyfileobj(sys.stdin.buffer, f)\n"
)


async def put_file(conn: Any, local: Path, remote: str, python: str) -> None:
    """Copy `local` to `remote` over SFTP (through `python` where the server has no SFTP)."""
    try:
        sftp = await conn.start_sftp_client()
    except (OSError, asyncssh.Error):
        sftp = None
    try:
        if sftp is None:
            done = await conn.run(
                command_line([python, "-c", WRITE_STDIN, remote]),
                input=local.read_bytes(),
                encoding=None,
                check=False,
            )
            if done.exit_status != 0:
                raise SshError(
                    f"copying {local.name} to the host failed: {done.stderr!r}", "channel"
                )
            return
        async with sftp:
            await sftp.makedirs(os.path.dirname(remote), exist_ok=True)
            await sftp.put(str(local), remote)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"copying {local.name} to the host failed: {exc}", "channel") from None


# -- a channel of JSON lines -------------------------------------------------------------


class LineChannel(asyncssh.SSHClientSession[bytes]):
    """Bytes in, whole lines out to `on_line`; `on_end(reason)` once when it closes."""

    def __init__(self, on_line: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        self.on_line, self.on_end = on_line, on_end
        self._partial = b""
        self._chan: Any = None
        self._ended = False

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype is not None:
            return  # stderr of the relay: not protocol
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.on_line(line + b"\n")

    def eof_received(self) -> bool:
        self._end("the agent closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the channel was lost: {exc}" if exc else "the channel closed")

    def write(self, data: bytes) -> None:
        if self._chan is not None and not self._ended:
            self._chan.write(data)

    def finish(self) -> None:
        """Send what is pending, then EOF (the agent sees the end of its input)."""
        if self._chan is not None and not self._ended:
            self._chan.write_eof()

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.on_end(reason)


async def open_socket_channel(conn: Any, path: str, channel: LineChannel) -> bool:
    """Connect `channel` to the Unix socket `path` on the host (a streamlocal channel).

    False when the server forbids forwarding (then relay through `open_command_channel`);
    SshError when the socket is not there.
    """
    try:
        await conn.create_unix_connection(lambda: channel, path)
    except asyncssh.ChannelOpenError as exc:
        if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            return False
        raise SshError(
            f"no agent listening at {path} on the host: {exc.reason}", "channel"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"opening a channel to {path} failed: {exc}", "channel") from None
    return True


async def open_command_channel(conn: Any, argv: Sequence[str], channel: LineChannel) -> None:
    """Connect `channel` to the stdin/stdout of argv run on the host."""
    try:
        await conn.create_session(lambda: channel, command_line(argv), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"starting {argv[0]} on the host failed: {exc}", "channel") from None


async def raw_echo_rate(
    conn: Any,
    argv: Sequence[str],
    n: int,
    window: int,
    *,
    refill: int = 1,
    line: Callable[[int], bytes] = lambda i: b'{"i":%d}\n' % i,
    timeout: float = 60.0,
) -> float:
    """Lines/s through a bare exec channel: the baseline of `bitinglip bench fleet`.

    `argv` runs on the host; it must print one line when it is ready, then answer each line it
    reads with one line. After the ready line, `line(0)` .. `line(n - 1)` are written with at most
    `window` unanswered, topped up from the receive callback in one write once `refill` lines (or
    all that are left) can go. The rate is n over the time from the first write to the n-th
    answer (the remote start is not timed).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    class Echo(asyncssh.SSHClientSession[bytes]):
        def __init__(self) -> None:
            self.chan: Any = None
            self.partial = b""
            self.started = 0.0
            self.sent = self.got = 0

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def data_received(self, data: bytes, datatype: Any) -> None:
            if datatype is not None or done.done():
                return  # stderr is not an answer
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            if not self.started and lines:
                lines.pop(0)  # the ready line: start the clock
                self.started = loop.time()
            if self.started:
                self.got += len(lines)
                if self.got >= n:
                    done.set_result(n / max(loop.time() - self.started, 1e-9))
                    return
                self.write_upto(min(self.got + window, n))

        def write_upto(self, count: int) -> None:
            if count - self.sent >= min(refill, n - self.sent) and count > self.sent:
                self.chan.write(b"".join(line(i) for i in range(self.sent, count)))
                self.sent = count

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(
                    SshError(
                        f"{argv[0]} on the host ended after {self.got} of {n} lines", "channel"
                    )
                )

    try:
        chan, echo = await conn.create_session(Echo, command_line(argv), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"starting {argv[0]} on the host failed: {exc}", "channel") from None
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise SshError(
            f"{argv[0]} on the host answered {echo.got} of {n} lines in {timeout:g} s", "timeout"
        ) from None
    finally:
        chan.close()
