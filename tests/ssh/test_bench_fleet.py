"""`bitinglip bench fleet` against real sshd hosts and this machine: every figure is measured
(a positive number), and a host that cannot be trusted reports its one line without stopping
the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bitinglip.bench import fleet
from bitinglip.cli import app
from bitinglip.control.transport import ssh
from tests.ssh.conftest import ProfileText, SshdFactory

pytestmark = pytest.mark.slow

LOCAL_HOST = '[[hosts]]\nname = "local"\nkind = "local"\n\n'
HOST_KEYS = {
    "host",
    "kind",
    "status",
    "connect_ready_ms",
    "rtt_p50_ms",
    "rtt_p99_ms",
    "tokens_per_s",
    "tokens_note",
    "gpu",
}
FLEET_KEYS = {
    "e2e_per_s",
    "e2e_hosts_used",
    "ssh_echo_host",
    "ssh_echo_per_s",
    "raw_asyncssh_per_s",
    "ratio",
    "ssh_echo_rounds",
    "raw_asyncssh_rounds",
    "control_cpu_percent",
    "telemetry_hosts",
    "telemetry_s",
    "reconnect_ready_ms_p50",
    "connect_ready_ms_p50",
    "hosts_ok",
    "refill",
    "echo",
    "window",
}


def bench(profile: Path, data_dir: Path) -> dict[str, Any]:
    argv = ["--profile", str(profile), "--data-dir", str(data_dir), "bench", "fleet", "--json"]
    argv += ["--echo", "100", "--window", "16", "--telemetry-s", "1"]
    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "bench fleet [3/3]" in result.stderr  # progress on stderr, the JSON alone on stdout
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_fleet_bench_measures_every_host_and_reports_an_untrusted_one(
    tmp_path: Path, sshd_factory: SshdFactory, ssh_profile: ProfileText
) -> None:
    trusted = [sshd_factory("gpu-1"), sshd_factory("gpu-2")]
    stranger = sshd_factory("gpu-3")
    known = ssh.own_known_hosts()
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text("".join(host.known_hosts_line() + "\n" for host in trusted))
    profile = tmp_path / "fleet.toml"
    profile.write_text(LOCAL_HOST + ssh_profile([*trusted, stranger]), encoding="utf-8")

    out = bench(profile, tmp_path / "data")

    assert set(out) == FLEET_KEYS | {"hosts"}
    hosts = {row["host"]: row for row in out["hosts"]}
    assert list(hosts) == ["local", "gpu-1", "gpu-2", "gpu-3"]
    assert all(set(row) == HOST_KEYS for row in hosts.values())
    bad = hosts.pop("gpu-3")
    assert "unknown host key" in bad["status"] and "\n" not in bad["status"]
    assert bad["connect_ready_ms"] is None and bad["rtt_p50_ms"] is None
    for row in hosts.values():
        assert row["status"] == "ok", row
        assert 0 < row["connect_ready_ms"] < 60_000
        assert 0 < row["rtt_p50_ms"] <= row["rtt_p99_ms"]
        assert row["tokens_per_s"] is None and row["tokens_note"] == "no --model given"
        assert isinstance(row["gpu"], str) and row["gpu"]
    assert out["hosts_ok"] == 3 and out["telemetry_hosts"] == 3
    assert out["ssh_echo_host"] == "gpu-1" and out["refill"] == 4
    assert len(out["ssh_echo_rounds"]) == len(out["raw_asyncssh_rounds"]) == fleet.ROUNDS
    for key in ("e2e_per_s", "ssh_echo_per_s", "raw_asyncssh_per_s", "ratio"):
        assert out[key] > 0, key
    assert out["ratio"] == pytest.approx(out["ssh_echo_per_s"] / out["raw_asyncssh_per_s"], 0.01)
    assert out["control_cpu_percent"] > 0
    assert out["e2e_hosts_used"] >= 1
    assert out["connect_ready_ms_p50"] > 0 and out["reconnect_ready_ms_p50"] > 0
