"""SSH: the one package that imports asyncssh. Connect with trust that fails closed, run quoted
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

Modules: `trust` (known hosts, the key check, recording a key), `connection` (connect, the
offered key), `failures` (a failed connection as one line), `commands` (run, put_file),
`channels` (LineChannel and opening it). Callers use the names below:
`from bitinglip.control.transport import ssh; ssh.connect(...)`.
"""

from bitinglip.control.transport.ssh.channels import (
    LineChannel,
    open_command_channel,
    open_socket_channel,
)
from bitinglip.control.transport.ssh.commands import (
    WRITE_STDIN,
    Completed,
    command_line,
    put_file,
    run,
)
from bitinglip.control.transport.ssh.connection import (
    CONNECT_TIMEOUT_S,
    ENCRYPTION_ALGS,
    KEEPALIVE_COUNT,
    KEEPALIVE_S,
    connect,
    jump_host,
    offered_key,
)
from bitinglip.control.transport.ssh.failures import describe
from bitinglip.control.transport.ssh.trust import (
    KeyCheck,
    host_pattern,
    known_hosts_files,
    own_known_hosts,
    record_key,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ENCRYPTION_ALGS",
    "KEEPALIVE_COUNT",
    "KEEPALIVE_S",
    "WRITE_STDIN",
    "Completed",
    "KeyCheck",
    "LineChannel",
    "command_line",
    "connect",
    "describe",
    "host_pattern",
    "jump_host",
    "known_hosts_files",
    "offered_key",
    "open_command_channel",
    "open_socket_channel",
    "own_known_hosts",
    "put_file",
    "record_key",
    "run",
]
