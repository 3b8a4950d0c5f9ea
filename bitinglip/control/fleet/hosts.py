"""Host health: separate signals, each with a state, a one-line reason and hysteresis.

The dispatcher builds a `HostObservation` from its session once per control-loop tick and hands
it to `HealthTracker.observe`, which returns a `HostHealth`: six signals (`SIGNALS`), each
ok / bad / unknown with a `why` and the time it took that state (`since`), the scheduler's
verdict (`healthy`: ssh and heartbeat ok) and warnings (every signal that is not ok).

Hysteresis: a signal in a known state moves only after `bad_after` consecutive observations say
bad (or unknown), or `ok_after` say ok; from unknown it moves at once (there is nothing to
protect). The heartbeat is bad only when the agent has been silent for longer than
`heartbeat_timeout_s`, so one missed 1 Hz telemetry push never flips a host.

`save` persists healths to the `hosts` table in one transaction; `load_hosts` reads them back,
JSON-ready for `bitinglip hosts ls --json`. The tracker itself is in memory and pure: tests pass
`now`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bitinglip.control.store.db import Store
from bitinglip.errors import ConfigError

GIB = 1 << 30
SIGNALS = ("ssh", "heartbeat", "runtime", "gpus", "disk", "clock")
NO_PYNVML = "pynvml is not installed"  # the agent's gpu_error without nvidia-ml-py


class SignalState(StrEnum):
    OK = "ok"
    BAD = "bad"
    UNKNOWN = "unknown"


OK, BAD, UNKNOWN = SignalState.OK, SignalState.BAD, SignalState.UNKNOWN


@dataclass(frozen=True)
class Signal:
    state: SignalState
    why: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "why": self.why, "since": self.since}


@dataclass(frozen=True)
class HostObservation:
    """What the dispatcher knows of one host right now.

    `connected`/`error`: the transport's state and its last error line ("connect refused: ...").
    `last_seen_age_s`: seconds since the agent's last message (None: never heard from it).
    `hello`/`telemetry`: the agent's last `hello` message and telemetry snapshot, as decoded.
    `received_at`: this machine's wall clock (time.time()) when `telemetry` arrived.
    """

    host: str
    connected: bool
    error: str | None = None
    last_seen_age_s: float | None = None
    hello: Mapping[str, Any] | None = None
    telemetry: Mapping[str, Any] | None = None
    received_at: float | None = None
    kind: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class HealthPolicy:
    bad_after: int = 3  # consecutive bad (or unknown) observations that flip a known signal
    ok_after: int = 2  # consecutive ok observations that bring a signal back
    heartbeat_timeout_s: float = 5.0  # silence longer than this is a bad heartbeat
    telemetry_interval_s: float = 1.0  # how often agents push; only for the reason text
    min_disk_free_bytes: int = 5 * GIB  # less free on the model dir's disk is bad
    max_clock_skew_s: float = 2.0  # a host clock further off than this is bad

    def __post_init__(self) -> None:
        if self.bad_after < 1 or self.ok_after < 1:
            raise ConfigError(
                f"health: bad_after and ok_after must be at least 1,"
                f" not {self.bad_after} and {self.ok_after}"
            )


@dataclass(frozen=True)
class HostHealth:
    host: str
    kind: str | None
    address: str | None
    connected: bool
    last_seen: float | None  # this machine's wall clock
    checked_at: float
    signals: Mapping[str, Signal]
    facts: Mapping[str, Any] | None = None  # the last hello: version, host facts, capabilities

    @property
    def healthy(self) -> bool:
        """The scheduler's verdict: reachable over SSH and the agent is talking."""
        return self.signals["ssh"].state == OK and self.signals["heartbeat"].state == OK

    @property
    def warnings(self) -> list[str]:
        return _warnings({name: s.to_dict() for name, s in self.signals.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the same shape as `load_hosts` rows."""
        return {
            "name": self.host,
            "kind": self.kind,
            "address": self.address,
            "healthy": self.healthy,
            "connected": self.connected,
            "last_seen": self.last_seen,
            "updated_at": self.checked_at,
            "health": {name: s.to_dict() for name, s in self.signals.items()},
            "warnings": self.warnings,
            "facts": None if self.facts is None else dict(self.facts),
        }


@dataclass(frozen=True)
class _Track:
    """A signal with the change it is waiting to confirm."""

    signal: Signal
    pending: SignalState | None = None
    streak: int = 0


def settle(
    track: _Track | None, state: SignalState, why: str, now: float, policy: HealthPolicy
) -> _Track:
    """One observation (`state`, `why`) applied to a signal's track, with hysteresis."""
    if track is None:
        return _Track(Signal(state, why, now))
    current = track.signal
    if state == current.state:
        return _Track(Signal(state, why, current.since))
    if current.state == UNKNOWN:
        return _Track(Signal(state, why, now))
    streak = track.streak + 1 if track.pending == state else 1
    if streak >= (policy.ok_after if state == OK else policy.bad_after):
        return _Track(Signal(state, why, now))
    return _Track(current, state, streak)


class HealthTracker:
    """Health of every observed host, in memory. Not thread-safe: the control loop owns it."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self._tracks: dict[str, dict[str, _Track]] = {}
        self._facts: dict[str, Mapping[str, Any]] = {}

    def observe(self, obs: HostObservation, now: float) -> HostHealth:
        tracks = self._tracks.setdefault(obs.host, {})
        for name, (state, why) in raw_signals(obs, self.policy).items():
            tracks[name] = settle(tracks.get(name), state, why, now, self.policy)
        if obs.hello is not None:
            self._facts[obs.host] = _facts(obs.hello)
        age = obs.last_seen_age_s
        return HostHealth(
            host=obs.host,
            kind=obs.kind,
            address=obs.address,
            connected=obs.connected,
            last_seen=None if age is None else now - age,
            checked_at=now,
            signals={name: tracks[name].signal for name in SIGNALS},
            facts=self._facts.get(obs.host),
        )

    def forget(self, host: str) -> None:
        """Drop a host's signals (removed from the profile); a later observation starts fresh."""
        self._tracks.pop(host, None)
        self._facts.pop(host, None)


# -- raw signals: what one observation says, before hysteresis --------------------------------

Raw = tuple[SignalState, str]


def raw_signals(obs: HostObservation, policy: HealthPolicy) -> dict[str, Raw]:
    return {
        "ssh": _ssh(obs),
        "heartbeat": _heartbeat(obs, policy),
        "runtime": _runtime(obs),
        "gpus": _gpus(obs),
        "disk": _disk(obs, policy),
        "clock": _clock(obs, policy),
    }


def _ssh(obs: HostObservation) -> Raw:
    if obs.connected:
        return OK, f"connected to {obs.address}" if obs.address else "connected"
    if obs.error:
        return BAD, _one_line(obs.error)
    return UNKNOWN, "not connected yet"


def _heartbeat(obs: HostObservation, policy: HealthPolicy) -> Raw:
    age = obs.last_seen_age_s
    if age is None:
        return UNKNOWN, "no message from the agent yet"
    if age > policy.heartbeat_timeout_s:
        rate = f"{1 / policy.telemetry_interval_s:g} Hz"
        return BAD, f"no heartbeat for {age:.1f} s (telemetry is {rate})"
    return OK, f"last message {age:.1f} s ago"


def _runtime(obs: HostObservation) -> Raw:
    if obs.hello is None:
        return UNKNOWN, "no hello from the agent yet"
    capabilities = obs.hello.get("capabilities")
    if not isinstance(capabilities, Mapping):
        return UNKNOWN, "the agent's hello lists no capabilities"
    if capabilities.get("llama_cpp"):
        return OK, "llama_cpp importable"
    fix = f"run `bitinglip hosts setup {obs.host} --runtime`"
    return BAD, f"llama_cpp not importable on the host; {fix}"


def _gpus(obs: HostObservation) -> Raw:
    capabilities = (obs.hello or {}).get("capabilities")
    no_pynvml = isinstance(capabilities, Mapping) and capabilities.get("pynvml") is False
    error = None if obs.telemetry is None else obs.telemetry.get("gpu_error")
    if no_pynvml or error == NO_PYNVML:
        return UNKNOWN, "pynvml not installed on the host; GPUs are not watched (nvidia-ml-py)"
    if obs.telemetry is None:
        return UNKNOWN, "no telemetry yet"
    if error:
        error = _one_line(str(error))
        return BAD, error if error.startswith("NVML") else f"NVML: {error}"
    gpus = obs.telemetry.get("gpus")
    if not isinstance(gpus, list) or not gpus:
        return BAD, "NVML reports no GPU"
    return OK, f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} visible through NVML"


def _disk(obs: HostObservation, policy: HealthPolicy) -> Raw:
    if obs.telemetry is None:
        return UNKNOWN, "no telemetry yet"
    free = obs.telemetry.get("disk_free_bytes")
    if isinstance(free, bool) or not isinstance(free, int | float):
        return UNKNOWN, "the host does not report its free disk space"
    if free < policy.min_disk_free_bytes:
        return BAD, f"disk free {_gib(free)} GiB < {_gib(policy.min_disk_free_bytes)} GiB"
    return OK, f"disk free {_gib(free)} GiB"


def _clock(obs: HostObservation, policy: HealthPolicy) -> Raw:
    at = None if obs.telemetry is None else obs.telemetry.get("at")
    if obs.received_at is None or isinstance(at, bool) or not isinstance(at, int | float):
        return UNKNOWN, "no telemetry yet"
    skew = at - obs.received_at
    side = "ahead of" if skew > 0 else "behind"
    if abs(skew) > policy.max_clock_skew_s:
        return BAD, f"clock {abs(skew):.1f} s {side} this machine"
    return OK, f"clock within {policy.max_clock_skew_s:g} s of this machine ({skew:+.1f} s)"


def _gib(n: float) -> str:
    """Bytes as GiB with one decimal, without a trailing ".0": 1.2, 5, 120.5."""
    text = f"{n / GIB:.1f}"
    return text.removesuffix(".0")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _facts(hello: Mapping[str, Any]) -> dict[str, Any]:
    """The hello without its envelope: version, protocol, pid, host facts, capabilities..."""
    return {k: v for k, v in hello.items() if k not in ("v", "type", "id")}


def _warnings(health: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [f"{name}: {s['why']}" for name, s in health.items() if s["state"] != OK]


# -- the hosts table ------------------------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# A host not heard from since the last hello keeps its last facts and last_seen.
_UPSERT = (
    "INSERT INTO hosts (name, kind, address, healthy, health, facts, connected, last_seen,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET kind = coalesce(excluded.kind, hosts.kind),"
    " address = coalesce(excluded.address, hosts.address), healthy = excluded.healthy,"
    " health = excluded.health, facts = coalesce(excluded.facts, hosts.facts),"
    " connected = excluded.connected, last_seen = coalesce(excluded.last_seen, hosts.last_seen),"
    " updated_at = excluded.updated_at"
)


def save(store: Store, healths: Iterable[HostHealth]) -> None:
    """Upsert every host's health in one write transaction."""
    rows = [
        (
            h.host,
            h.kind,
            h.address,
            int(h.healthy),
            _dumps({name: s.to_dict() for name, s in h.signals.items()}),
            None if h.facts is None else _dumps(dict(h.facts)),
            int(h.connected),
            h.last_seen,
            h.checked_at,
        )
        for h in healths
    ]
    if rows:
        with store.write() as conn:
            conn.executemany(_UPSERT, rows)


def load_hosts(store: Store) -> list[dict[str, Any]]:
    """Every saved host by name, JSON-ready (the shape of `HostHealth.to_dict`)."""
    rows = store.conn.execute(
        "SELECT name, kind, address, healthy, connected, last_seen, updated_at, health, facts"
        " FROM hosts ORDER BY name"
    )
    hosts = []
    for name, kind, address, healthy, connected, last_seen, updated_at, health, facts in rows:
        signals = json.loads(health)
        hosts.append(
            {
                "name": name,
                "kind": kind,
                "address": address,
                "healthy": bool(healthy),
                "connected": bool(connected),
                "last_seen": last_seen,
                "updated_at": updated_at,
                "health": signals,
                "warnings": _warnings(signals),
                "facts": None if facts is None else json.loads(facts),
            }
        )
    return hosts
