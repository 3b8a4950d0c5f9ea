"""The last lines of an SSH host's agent log (`<workdir>/run/<sha12>-<fleet>.sock.log`).

A local agent's stderr reaches the control plane's log directly; an SSH host's agent runs
detached and writes its own log on the host. This reads its tail over a short SSH connection of
its own, so it works from any process (an observer console too) and never touches the
controller's sessions.
"""

from __future__ import annotations

from bitinglip.config import HostConfig, Profile
from bitinglip.control.transport import bootstrap, ssh
from bitinglip.errors import InputError

TAIL_LINES = 500
# Every log this fleet's agents wrote in the workdir, newest last: one per agent version.
_TAIL = 'for f in "$1"/run/*-"$2".sock.log; do [ -f "$f" ] && tail -n "$3" "$f"; done; true'


async def tail(profile: Profile, name: str, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of the agent log of SSH host `name` (empty when it has none)."""
    host = _ssh_host(profile, name)
    bundle = bootstrap.local_bundle(profile)
    conn = await ssh.connect(host)
    try:
        found = bootstrap.load_probe(profile, host, bundle) or await bootstrap.probe(
            conn, host, bundle
        )
        argv = ["sh", "-c", _TAIL, "sh", found.workdir, bootstrap.fleet_id(profile), str(lines)]
        done = await ssh.run(conn, argv, timeout=15.0)
    finally:
        conn.close()
    text = done.stdout.decode(errors="replace")
    return text.splitlines()[-lines:]


def _ssh_host(profile: Profile, name: str) -> HostConfig:
    for host in profile.hosts:
        if host.name == name:
            if host.kind != "ssh":
                raise InputError(f"host {name} is local: its agent's lines are in the log itself")
            return host
    names = ", ".join(h.name for h in profile.hosts) or "(none)"
    raise InputError(f"unknown host {name!r}; hosts in profile {profile.name}: {names}")
