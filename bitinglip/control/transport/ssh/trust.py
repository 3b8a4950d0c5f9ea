"""Host key trust: which keys are on record for a host, and recording a new one.

A host key must be in the user's `~/.ssh/known_hosts` or BitingLip's own known-hosts file
(`<user config dir>/known_hosts`, written by `bitinglip hosts trust`). Lookups use OpenSSH's rule
for ports: a host on port P != 22 is `[address]:P`, with no fall back to the bare address (several
hosts behind one address stay apart).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from bitinglip.config_files import user_config_dir
from bitinglip.errors import SshError


def own_known_hosts() -> Path:
    return user_config_dir() / "known_hosts"


def known_hosts_files() -> list[Path]:
    return [Path("~/.ssh/known_hosts").expanduser(), own_known_hosts()]


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


class CheckingClient(asyncssh.SSHClient):
    """The client side of a connection: notes a key that is not on record, and refuses it."""

    def __init__(self, check: KeyCheck) -> None:
        self.check = check

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        self.check.host, self.check.port, self.check.offered = host, port, key
        return False  # only keys on record are trusted (asyncssh checked those already)


def recorded_keys(check: KeyCheck) -> Callable[[str, str, int | None], Any]:
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
