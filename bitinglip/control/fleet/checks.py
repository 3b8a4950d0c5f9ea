"""One-shot work on one SSH host for `bitinglip hosts`: its key (`trust`), the agent
(`setup`), and an active check (`check`) that leaves a running controller alone.

The check connects (timed), probes the host (python, this version's agent, nvidia-smi, its
clock), then runs the agent once in stdio mode on an exec channel of its own and reads its
`hello` and first `telemetry` line before closing it; the controller's agent daemon and its
socket are never touched. What it saw becomes the six health signals of `hosts.SIGNALS`
through the hosts module's evaluation, without hysteresis (one observation), except three the
check knows better: ssh (the connect it timed), heartbeat (did the agent answer) and clock
(the probe's time against this machine's, corrected by half the round trip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitinglip_agent import protocol

from bitinglip.config import HostConfig, Profile
from bitinglip.control.fleet.hosts import (
    BAD,
    OK,
    SIGNALS,
    UNKNOWN,
    HealthPolicy,
    HostObservation,
    Raw,
    SignalState,
    load_hosts,
    raw_signals,
)
from bitinglip.control.store.db import Store
from bitinglip.control.transport import bootstrap, ssh
from bitinglip.errors import SshError

AGENT_REPLY_TIMEOUT_S = 15.0
TELEMETRY_INTERVAL = "0.2"  # seconds: the first snapshot comes at once, this is the fallback
STDERR_KEPT = 4096

# -- trust ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    """What `hosts trust` shows: the host's known_hosts pattern and the key it offers.

    `state`: "trusted" (a key on record matched; `fingerprints` are the recorded ones),
    "unknown" (nothing on record) or "changed" (a different key is on record)."""

    name: str
    pattern: str
    state: str
    fingerprints: tuple[str, ...]
    check: ssh.KeyCheck

    @property
    def fingerprint(self) -> str:
        return ", ".join(self.fingerprints)


async def host_key(host: HostConfig) -> HostKey:
    check = await ssh.offered_key(host)
    pattern = ssh.host_pattern(check.host or host.address or "", check.port or host.port)
    if check.offered is None:
        # dict.fromkeys: a key recorded for both the name and the address is listed twice
        recorded = tuple(dict.fromkeys(str(k.get_fingerprint("sha256")) for k in check.recorded))
        return HostKey(host.name, pattern, "trusted", recorded, check)
    state = "changed" if check.verdict == "changed_host_key" else "unknown"
    return HostKey(host.name, pattern, state, (check.fingerprint,), check)


def changed_key_error(host: HostConfig, key: HostKey) -> SshError:
    files = " or ".join(map(str, ssh.known_hosts_files()))
    return SshError(
        f"ssh {ssh.describe(host)}: WARNING: the host key CHANGED (now {key.fingerprint}); this "
        "could be an attack or a reinstalled host. Nothing was written. Verify the key out of "
        f"band, then remove the old key for {key.pattern} from {files} and trust it again",
        "changed_host_key",
    )


def record(key: HostKey) -> Path:
    """Append the offered key to BitingLip's known-hosts file; the file written."""
    if key.state != "unknown":
        raise SshError(f"host {key.name}: the key is {key.state}; nothing to record", "remote")
    return ssh.record_key(key.check)


# -- setup ------------------------------------------------------------------------------------


async def setup(
    profile: Profile,
    host: HostConfig,
    *,
    runtime: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> bootstrap.SetupReport:
    """Connect and put this version's agent (and with `runtime` the venv) on the host."""
    conn = await ssh.connect(host)
    try:
        return await bootstrap.setup(conn, profile, host, runtime=runtime, on_output=on_output)
    finally:
        conn.close()


# -- check ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentReply:
    """What the agent run once said: its hello and first telemetry, or why it did not."""

    hello: Mapping[str, Any] | None
    telemetry: Mapping[str, Any] | None
    received_at: float | None  # this machine's clock when the telemetry came
    elapsed_s: float
    problem: str | None


@dataclass(frozen=True)
class CheckReport:
    host: str
    address: str
    signals: Mapping[str, Raw]
    connect_s: float | None = None
    probe: bootstrap.Probe | None = None
    agent_installed: bool | None = None
    reply: AgentReply | None = None

    @property
    def ok(self) -> bool:
        """The verdict: reachable over SSH, and the agent answers."""
        return self.signals["ssh"][0] == OK and self.signals["heartbeat"][0] == OK

    @property
    def problem(self) -> str | None:
        """One line for stderr when the check fails: the first bad of ssh and heartbeat."""
        for name in ("ssh", "heartbeat"):
            state, why = self.signals[name]
            if state != OK:
                return why if name == "ssh" else f"host {self.host}: {name}: {why}"
        return None

    def to_dict(self) -> dict[str, Any]:
        reply = self.reply
        return {
            "host": self.host,
            "address": self.address,
            "ok": self.ok,
            "connect_s": self.connect_s,
            "signals": {n: {"state": s.value, "why": w} for n, (s, w) in self.signals.items()},
            "probe": None if self.probe is None else asdict(self.probe),
            "agent": {
                "installed": self.agent_installed,
                "hello": None if reply is None else reply.hello,
                "telemetry": None if reply is None else reply.telemetry,
                "elapsed_s": None if reply is None else reply.elapsed_s,
            },
        }


async def check(
    profile: Profile,
    host: HostConfig,
    *,
    policy: HealthPolicy | None = None,
    reply_timeout: float = AGENT_REPLY_TIMEOUT_S,
) -> CheckReport:
    """The active check of one SSH host; never raises SshError (it becomes a bad signal)."""
    policy = policy or HealthPolicy()
    address = f"{host.address}:{host.port}"
    started = time.monotonic()
    try:
        conn = await ssh.connect(host)
    except SshError as exc:
        return CheckReport(host.name, address, _unreached(BAD, str(exc)))
    connect_s = time.monotonic() - started
    try:
        return await _connected(conn, profile, host, connect_s, policy, reply_timeout)
    finally:
        conn.close()


async def _connected(
    conn: Any,
    profile: Profile,
    host: HostConfig,
    connect_s: float,
    policy: HealthPolicy,
    reply_timeout: float,
) -> CheckReport:
    address = f"{host.address}:{host.port}"
    user = f" as {host.user}" if host.user else ""
    reached: Raw = (OK, f"connected to {address}{user} in {connect_s:.2f} s")
    bundle = await asyncio.to_thread(bootstrap.local_bundle, profile)
    before = time.time()
    try:
        found = await bootstrap.probe(conn, host, bundle)
    except SshError as exc:
        signals = _unreached(UNKNOWN, "the host could not be probed")
        signals.update(ssh=reached, heartbeat=(BAD, str(exc)))
        return CheckReport(host.name, address, signals, connect_s)
    skew = found.time - (before + time.time()) / 2
    reply = None
    if found.agent_ok:
        reply = await agent_reply(conn, host, found, reply_timeout)
    observation = HostObservation(
        host=host.name,
        connected=True,
        address=address,
        kind=host.kind,
        hello=None if reply is None else reply.hello,
        telemetry=None if reply is None else reply.telemetry,
        received_at=None if reply is None else reply.received_at,
    )
    signals = dict(raw_signals(observation, policy))
    signals.update(
        ssh=reached,
        heartbeat=_heartbeat(host, bundle.sha256, reply),
        gpus=_gpus(signals["gpus"], found),
        clock=_clock(skew, policy),
    )
    return CheckReport(host.name, address, signals, connect_s, found, found.agent_ok, reply)


def _unreached(state: SignalState, why: str) -> dict[str, Raw]:
    signals: dict[str, Raw] = {name: (UNKNOWN, "the host was not reached") for name in SIGNALS}
    signals["ssh"] = (state, why)
    return signals


def _heartbeat(host: HostConfig, digest: str, reply: AgentReply | None) -> Raw:
    if reply is None:
        return BAD, (
            f"this version's agent ({digest[:12]}) is not installed on the host; "
            f"run `bitinglip hosts setup {host.name}`"
        )
    if reply.problem is not None:
        return BAD, reply.problem
    assert reply.hello is not None
    return OK, (
        f"agent {reply.hello.get('version')} answered with hello and telemetry "
        f"in {reply.elapsed_s:.2f} s"
    )


def _gpus(raw: Raw, found: bootstrap.Probe) -> Raw:
    state, why = raw
    if state == OK:
        return raw
    if found.nvidia_smi is None:
        return state, f"{why}; no nvidia-smi on the host's PATH"
    return state, f"{why}; nvidia-smi is at {found.nvidia_smi}"


def _clock(skew: float, policy: HealthPolicy) -> Raw:
    side = "ahead of" if skew > 0 else "behind"
    if abs(skew) > policy.max_clock_skew_s:
        return BAD, f"clock {abs(skew):.1f} s {side} this machine"
    return OK, f"clock within {policy.max_clock_skew_s:g} s of this machine ({skew:+.2f} s)"


class _AgentChannel(ssh.LineChannel):
    """A LineChannel that keeps the tail of the agent's stderr, to say why it ended."""

    def __init__(self, on_line: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        super().__init__(on_line, on_end)
        self.stderr = b""

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype is not None:
            self.stderr = (self.stderr + data)[-STDERR_KEPT:]
            return
        super().data_received(data, datatype)

    def last_error_line(self) -> str | None:
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else None


async def agent_reply(
    conn: Any, host: HostConfig, found: bootstrap.Probe, timeout: float
) -> AgentReply:
    """Run the agent once in stdio mode; its hello and first telemetry, then close it."""
    argv = [
        found.agent_python,
        found.agent,
        "--host-name",
        host.name,
        "--model-dir",
        found.model_dir,
        "--telemetry-interval",
        TELEMETRY_INTERVAL,
    ]
    started = time.monotonic()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: dict[str, Any] = {}

    def on_line(line: bytes) -> None:
        try:
            msg = protocol.decode(line, protocol.FROM_AGENT)
        except protocol.ProtocolError:
            return
        if msg["type"] == "hello":
            seen.setdefault("hello", msg)
        elif msg["type"] == "telemetry" and "hello" in seen and "telemetry" not in seen:
            seen["telemetry"], seen["received_at"] = msg.get("snapshot"), time.time()
        if "telemetry" in seen and not ended.done():
            ended.set_result("")

    def on_end(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    channel = _AgentChannel(on_line, on_end)
    try:
        await ssh.open_command_channel(conn, argv, channel)
    except SshError as exc:
        return AgentReply(None, None, None, time.monotonic() - started, str(exc))
    try:
        reason = await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        reason = f"no hello and telemetry from the agent within {timeout:g} s"
    finally:
        channel.finish()
        channel.close()
    elapsed = time.monotonic() - started
    problem = None
    if "telemetry" not in seen:
        said = channel.last_error_line()
        problem = f"{reason or 'the agent stopped'}" + (f": {said}" if said else "")
    return AgentReply(
        seen.get("hello"), seen.get("telemetry"), seen.get("received_at"), elapsed, problem
    )


# -- the controller's view ---------------------------------------------------------------------


def stored_state(store: Store, name: str) -> dict[str, Any] | None:
    """The health a controller last saved for `name` (`hosts.load_hosts`' shape), or None."""
    return next((row for row in load_hosts(store) if row["name"] == name), None)
