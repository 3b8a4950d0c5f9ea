"""A failed connection as one line: what failed, where, and what to do."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import asyncssh

from bitinglip.config import HostConfig
from bitinglip.control.transport.ssh.trust import KeyCheck, host_pattern, known_hosts_files
from bitinglip.errors import SshError


def describe(host: HostConfig) -> str:
    user = f"{host.user}@" if host.user else ""
    return f"{host.name} ({user}{host.address}:{host.port})"


def explain(host: HostConfig, exc: BaseException, check: KeyCheck, timeout: float) -> SshError:
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
        return SshError(f"{where}: {auth_failure(host)}", "auth")
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


def auth_failure(host: HostConfig) -> str:
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
