"""Host health: signals with reasons, hysteresis, the verdict, the hosts table, the migration."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from bitinglip.config import Profile
from bitinglip.control.fleet.hosts import (
    BAD,
    GIB,
    OK,
    SIGNALS,
    UNKNOWN,
    HealthPolicy,
    HealthTracker,
    HostHealth,
    HostObservation,
    load_hosts,
    save,
)
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.control.store import schema
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import ConfigError

NOW = 1_700_000_000.0

HELLO: dict[str, Any] = {
    "v": 1,
    "type": "hello",
    "version": "0.3.0",
    "protocol": 1,
    "pid": 4242,
    "host": {"hostname": "gpu1", "os": "Linux", "python": "3.11.9", "cpu_count": 32},
    "capabilities": {"llama_cpp": True, "huggingface_hub": True, "psutil": True, "pynvml": True},
    "kinds": ["echo", "generate", "chat"],
    "name": "gpu1",
}


def snapshot(at: float = NOW, **over: Any) -> dict[str, Any]:
    return {
        "at": at,
        "cpu_percent": 3.0,
        "disk_free_bytes": 200 * GIB,
        "disk_total_bytes": 500 * GIB,
        "gpus": [{"index": 0, "name": "NVIDIA H100", "utilization_pct": 0}],
        "gpu_error": None,
    } | over


def good(**over: Any) -> HostObservation:
    """A healthy host: connected, talking, runtime ready, GPUs seen, disk free, clock right."""
    obs = HostObservation(
        host="gpu1",
        connected=True,
        last_seen_age_s=0.4,
        hello=HELLO,
        telemetry=snapshot(),
        received_at=NOW + 0.1,
        kind="ssh",
        address="10.0.0.7",
    )
    return replace(obs, **over)


def capabilities(**over: bool) -> dict[str, Any]:
    return HELLO | {"capabilities": HELLO["capabilities"] | over}


@pytest.fixture
def store(profile: Profile) -> Iterator[Store]:
    opened = open_store(profile.db_path)
    yield opened
    opened.close()


def run(tracker: HealthTracker, observations: list[HostObservation]) -> list[HostHealth]:
    """Observe once a second from NOW."""
    return [tracker.observe(obs, NOW + i) for i, obs in enumerate(observations)]


# -- signals and reasons -------------------------------------------------------------------------


def test_a_good_host_is_healthy_with_every_signal_ok() -> None:
    health = HealthTracker().observe(good(), NOW)
    assert health.healthy and health.warnings == []
    assert list(health.signals) == list(SIGNALS)
    assert {name: s.why for name, s in health.signals.items()} == {
        "ssh": "connected to 10.0.0.7",
        "heartbeat": "last message 0.4 s ago",
        "runtime": "llama_cpp importable",
        "gpus": "1 GPU visible through NVML",
        "disk": "disk free 200 GiB",
        "clock": "clock within 2 s of this machine (-0.1 s)",
    }
    assert all(s.since == NOW for s in health.signals.values())
    assert health.last_seen == NOW - 0.4


def test_a_host_never_reached_is_unknown_and_not_healthy() -> None:
    health = HealthTracker().observe(HostObservation("gpu2", connected=False), NOW)
    assert not health.healthy
    assert {name: s.state for name, s in health.signals.items()} == dict.fromkeys(SIGNALS, UNKNOWN)
    assert health.warnings == [
        "ssh: not connected yet",
        "heartbeat: no message from the agent yet",
        "runtime: no hello from the agent yet",
        "gpus: no telemetry yet",
        "disk: no telemetry yet",
        "clock: no telemetry yet",
    ]


@pytest.mark.parametrize(
    ("obs", "signal", "state", "why"),
    [
        (
            good(connected=False, error="connect refused:\n [Errno 111] Connection refused"),
            "ssh",
            BAD,
            "connect refused: [Errno 111] Connection refused",
        ),
        (
            good(hello=capabilities(llama_cpp=False)),
            "runtime",
            BAD,
            "llama_cpp not importable on the host; run `bitinglip hosts setup gpu1 --runtime`",
        ),
        (
            good(hello=capabilities(pynvml=False), telemetry=snapshot(gpus=[])),
            "gpus",
            UNKNOWN,
            "pynvml not installed on the host; GPUs are not watched (nvidia-ml-py)",
        ),
        (
            good(hello=None, telemetry=snapshot(gpus=[], gpu_error="pynvml is not installed")),
            "gpus",
            UNKNOWN,
            "pynvml not installed on the host; GPUs are not watched (nvidia-ml-py)",
        ),
        (
            good(telemetry=snapshot(gpus=[], gpu_error="NVML unavailable: Driver Not Loaded")),
            "gpus",
            BAD,
            "NVML unavailable: Driver Not Loaded",
        ),
        (
            good(telemetry=snapshot(gpu_error="GPU is lost")),
            "gpus",
            BAD,
            "NVML: GPU is lost",
        ),
        (good(telemetry=snapshot(gpus=[])), "gpus", BAD, "NVML reports no GPU"),
        (
            good(telemetry=snapshot(disk_free_bytes=int(1.2 * GIB))),
            "disk",
            BAD,
            "disk free 1.2 GiB < 5 GiB",
        ),
        (
            good(telemetry=snapshot(disk_free_bytes=None)),
            "disk",
            UNKNOWN,
            "the host does not report its free disk space",
        ),
        (good(received_at=NOW - 3.4), "clock", BAD, "clock 3.4 s ahead of this machine"),
        (good(received_at=NOW + 2.6), "clock", BAD, "clock 2.6 s behind this machine"),
        (good(received_at=NOW + 1.9), "clock", OK, "clock within 2 s of this machine (-1.9 s)"),
        (
            good(last_seen_age_s=7.24),
            "heartbeat",
            BAD,
            "no heartbeat for 7.2 s (telemetry is 1 Hz)",
        ),
        (good(last_seen_age_s=4.9), "heartbeat", OK, "last message 4.9 s ago"),
    ],
)
def test_each_signal_says_why(obs: HostObservation, signal: str, state: str, why: str) -> None:
    # A fresh tracker: the first observation sets each signal at once (unknown before).
    found = HealthTracker().observe(obs, NOW).signals[signal]
    assert (found.state, found.why) == (state, why)


def test_thresholds_are_parameters() -> None:
    policy = HealthPolicy(
        heartbeat_timeout_s=30.0,
        telemetry_interval_s=5.0,
        min_disk_free_bytes=500 * GIB,
        max_clock_skew_s=0.05,
    )
    health = HealthTracker(policy).observe(good(last_seen_age_s=31.0), NOW)
    assert health.signals["heartbeat"].why == "no heartbeat for 31.0 s (telemetry is 0.2 Hz)"
    assert health.signals["disk"].why == "disk free 200 GiB < 500 GiB"
    assert health.signals["clock"].why == "clock 0.1 s behind this machine"
    assert HealthTracker(policy).observe(good(last_seen_age_s=29.0), NOW).healthy


def test_a_policy_needs_at_least_one_observation_to_move() -> None:
    with pytest.raises(ConfigError, match="bad_after and ok_after must be at least 1"):
        HealthPolicy(bad_after=0)


# -- hysteresis ----------------------------------------------------------------------------------


def test_missed_heartbeats_flip_a_host_only_after_three_bad_observations() -> None:
    ages = [0.4, 1.9, 5.2, 6.2, 7.2, 8.2, 0.3, 0.5]  # one missed push, then a 7 s silence
    healths = run(HealthTracker(), [good(last_seen_age_s=age) for age in ages])
    beats = [h.signals["heartbeat"] for h in healths]
    assert [h.healthy for h in healths] == [True, True, True, True, False, False, False, True]
    assert [b.state for b in beats] == [OK, OK, OK, OK, BAD, BAD, BAD, OK]
    assert beats[3].why == "last message 1.9 s ago"  # pending: the last ok reason stays
    assert (beats[4].why, beats[4].since) == ("no heartbeat for 7.2 s (telemetry is 1 Hz)", NOW + 4)
    assert beats[5].why == "no heartbeat for 8.2 s (telemetry is 1 Hz)"
    assert (beats[7].why, beats[7].since) == ("last message 0.5 s ago", NOW + 7)


def test_from_unknown_a_signal_moves_at_once() -> None:
    waiting = HostObservation("gpu1", connected=False)
    refused = HostObservation("gpu1", connected=False, error="connect refused: timed out")
    first = run(HealthTracker(), [waiting, good()])
    assert [h.healthy for h in first] == [False, True]  # healthy on its first good look
    assert first[1].signals["ssh"].since == NOW + 1
    then_bad = [h.signals["ssh"] for h in run(HealthTracker(), [waiting, refused])]
    assert [(s.state, s.why) for s in then_bad] == [
        (UNKNOWN, "not connected yet"),
        (BAD, "connect refused: timed out"),
    ]


def test_flapping_never_flips_an_ok_signal() -> None:
    refused = good(connected=False, error="connect refused: timed out")
    sequence = [good(), refused, refused, good(), refused, refused, good(), refused, refused]
    healths = run(HealthTracker(), sequence)
    assert all(h.signals["ssh"].state == OK for h in healths)
    assert all(h.signals["ssh"].since == NOW for h in healths)


def test_a_bad_signal_needs_two_good_observations_to_recover() -> None:
    low, enough = snapshot(disk_free_bytes=GIB), snapshot()
    sequence = [good(telemetry=low), good(telemetry=enough), good(telemetry=low)]
    sequence += [good(telemetry=enough)] * 2
    disks = [h.signals["disk"] for h in run(HealthTracker(), sequence)]
    assert [d.state for d in disks] == [BAD, BAD, BAD, BAD, OK]
    assert [d.why for d in disks][:3] == ["disk free 1 GiB < 5 GiB"] * 3
    assert disks[-1].since == NOW + 4


def test_the_counts_are_parameters() -> None:
    lost = good(connected=False, error="connection lost")
    eager = run(HealthTracker(HealthPolicy(bad_after=1, ok_after=1)), [good(), lost, good()])
    assert [h.signals["ssh"].state for h in eager] == [OK, BAD, OK]
    patient = run(HealthTracker(HealthPolicy(bad_after=5)), [good()] + [lost] * 5)
    assert [h.signals["ssh"].state for h in patient] == [OK] * 5 + [BAD]


def test_a_signal_that_stops_being_known_goes_unknown_with_the_same_patience() -> None:
    silent = good(telemetry=None, received_at=None)
    clocks = [h.signals["clock"] for h in run(HealthTracker(), [good()] + [silent] * 3)]
    assert [c.state for c in clocks] == [OK, OK, OK, UNKNOWN]
    assert clocks[-1].why == "no telemetry yet"


def test_hosts_are_tracked_separately() -> None:
    tracker = HealthTracker()
    tracker.observe(good(), NOW)
    other = tracker.observe(good(host="gpu2", last_seen_age_s=9.0), NOW)
    assert other.signals["heartbeat"].state == BAD  # gpu2 starts unknown: set at once
    assert tracker.observe(good(last_seen_age_s=9.0), NOW + 1).healthy  # gpu1 was ok


def test_facts_outlive_the_connection_and_forget_drops_them() -> None:
    tracker = HealthTracker()
    tracker.observe(good(), NOW)
    later = tracker.observe(good(connected=False, error="connection lost", hello=None), NOW + 1)
    assert later.facts is not None and later.facts["capabilities"]["llama_cpp"] is True
    assert "type" not in later.facts and later.facts["version"] == "0.3.0"
    tracker.forget("gpu1")
    assert tracker.observe(good(hello=None), NOW + 2).facts is None


# -- the hosts table -----------------------------------------------------------------------------


def test_save_and_load_round_trip_as_json(store: Store) -> None:
    tracker = HealthTracker()
    first = tracker.observe(good(telemetry=snapshot(disk_free_bytes=GIB)), NOW)
    second = tracker.observe(HostObservation("gpu2", connected=False, kind="local"), NOW)
    save(store, [first, second])
    loaded = load_hosts(store)
    assert loaded == [first.to_dict(), second.to_dict()]
    assert json.loads(json.dumps(loaded)) == loaded
    assert loaded[0]["healthy"] is True
    assert loaded[0]["warnings"] == ["disk: disk free 1 GiB < 5 GiB"]
    assert loaded[0]["health"]["disk"] == {
        "state": "bad",
        "why": "disk free 1 GiB < 5 GiB",
        "since": NOW,
    }
    assert loaded[0]["facts"]["host"]["cpu_count"] == 32
    assert loaded[1]["healthy"] is False and loaded[1]["facts"] is None


def test_save_is_one_transaction_and_keeps_the_last_facts(store: Store) -> None:
    tracker = HealthTracker()
    save(store, [tracker.observe(good(host=f"h{i}"), NOW) for i in range(20)])
    restarted = HealthTracker()  # a new controller: no hello from gpu1 yet, not connected
    lost = restarted.observe(HostObservation("h3", connected=False, error="connect refused"), NOW)
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    save(store, [restarted.observe(good(host=f"h{i}"), NOW + 1) for i in range(3)] + [lost])
    store.conn.set_trace_callback(None)
    assert [s for s in seen if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
    (h3,) = [h for h in load_hosts(store) if h["name"] == "h3"]
    assert (h3["connected"], h3["healthy"], h3["updated_at"]) == (False, False, NOW)
    assert h3["facts"]["version"] == "0.3.0"  # from the first controller's save
    assert (h3["kind"], h3["address"], h3["last_seen"]) == ("ssh", "10.0.0.7", NOW - 0.4)
    assert h3["health"]["ssh"]["why"] == "connect refused"
    assert len(load_hosts(store)) == 20


# -- the migration -------------------------------------------------------------------------------


def test_a_database_made_by_migration_one_is_migrated(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [name for name, _ in schema.MIGRATIONS][:2] == ["initial", "hosts"]
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        old = open_store(profile.db_path)
        assert old.conn.execute("PRAGMA user_version").fetchone()[0] == 1
        task_id = TaskQueue(old, profile.queue).submit(TaskSpec(kind="echo", payload={"i": 1}))
        old.close()
    store = open_store(profile.db_path)
    conn = store.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS) >= 2
    applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert applied[:2] == ["0001_initial", "0002_hosts"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"hosts", "host_telemetry", "host_telemetry_latest"} <= tables
    queue = TaskQueue(store, profile.queue)
    (claim,) = queue.claim("runner")
    assert (claim.task_id, claim.payload) == (task_id, {"i": 1})
    queue.complete(claim.task_id, claim.token, "done")
    save(store, [HealthTracker().observe(good(), NOW)])
    assert TelemetryRing().record(store, [("gpu1", snapshot())]) == 1
    assert [h["name"] for h in load_hosts(store)] == ["gpu1"]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with pytest.raises(sqlite3.IntegrityError):  # one row per host
        conn.execute("INSERT INTO hosts (name, updated_at) VALUES ('gpu1', 0)")
