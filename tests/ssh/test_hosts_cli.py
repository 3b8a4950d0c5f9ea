"""`bitinglip hosts` against real sshd hosts: editing the profile, listing, trusting host keys,
setting up the agent (also when killed halfway), checking a host, and `hosts top`."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bitinglip.cli import app
from bitinglip.cli import hosts as hosts_cli
from bitinglip.config import Profile, load_profile
from bitinglip.config_files import user_config_dir
from bitinglip.control.fleet.hosts import GIB, HealthTracker, HostObservation, save
from bitinglip.control.fleet.telemetry_ring import TelemetryRing
from bitinglip.control.plane import open_control_plane
from bitinglip.control.transport import ssh
from tests.cli.conftest import Cli, Proc, stderr_lines
from tests.ssh.conftest import ProfileText, SshdFactory
from tests.ssh.sshd import ClientKeys, SshdHost, free_port, ssh_profile_text

PROFILE_HEAD = """\
# The lab: edited by hand and by `bitinglip hosts`.
name = "lab"

[controller]
lease_s = 1.0  # fast for tests

# The first host; its comment stays.
[[hosts]]
name = "gpu-0"
kind = "ssh"
address = "10.0.0.10"   # the rack's first box
"""


def write_profile(tmp_path: Path, text: str, name: str = "lab") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def known_hosts() -> Path:
    return ssh.own_known_hosts()


def trust(host: SshdHost) -> None:
    path = known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as f:
        f.write(host.known_hosts_line() + "\n")


def trust_as(proc: Proc, host: SshdHost) -> None:
    """Trust `host` in the known_hosts file of `proc`'s environment."""
    path = user_config_dir(proc.env) / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host.known_hosts_line() + "\n", encoding="ascii")


def one_line_error(result: Any) -> str:
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("bitinglip: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def profile_of(path: Path, data_dir: Path) -> Profile:
    return load_profile(str(path), data_dir=data_dir)


@pytest.fixture
def lab(
    tmp_path: Path, ssh_profile: ProfileText, sshd_factory: SshdFactory
) -> tuple[Path, SshdHost]:
    """A profile with one live sshd host, gpu-1, not trusted yet."""
    host = sshd_factory("gpu-1")
    return write_profile(tmp_path, ssh_profile([host])), host


# -- editing the profile --------------------------------------------------------------------------


def test_add_then_rm_keeps_comments_and_gives_back_the_file(
    cli: Cli, tmp_path: Path, client_keys: ClientKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_profile(tmp_path, PROFILE_HEAD)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_bytes(client_keys.key.read_bytes())
    added = cli(
        "--profile", path, "hosts", "add", "gpu-9", "--address", "10.0.0.9", "--port", "2222",
        "--user", "me", "--identity-file", "keys/id", "--label", "gpu=h100", "--label", "rack=2",
        "--max-concurrency", "2",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    assert str(path) in added.stderr and "`bitinglip hosts trust gpu-9`" in added.stderr
    text = path.read_text()
    assert text.startswith(PROFILE_HEAD)  # every comment and byte before the new entry kept
    assert f'identity_file = "{tmp_path / "keys" / "id"}"' in text  # made absolute
    listed = {h["name"]: h for h in cli.json("--profile", path, "hosts", "ls")}
    assert listed["gpu-9"] == {
        "name": "gpu-9",
        "kind": "ssh",
        "address": "10.0.0.9",
        "port": 2222,
        "labels": {"gpu": "h100", "rack": "2"},
        "state": None,
    }
    no_key = cli("--profile", path, "hosts", "add", "x", "--address", "h", "--identity-file", "no")
    assert no_key.exit_code == 2 and f"{tmp_path / 'no'}: no such file" in one_line_error(no_key)
    again = cli("--profile", path, "hosts", "add", "gpu-9", "--address", "10.0.0.9")
    assert again.exit_code == 2 and "already exists" in one_line_error(again)

    no_tty = cli("--profile", path, "hosts", "rm", "gpu-9")  # stdin is not a terminal
    assert no_tty.exit_code == 2 and "--yes" in one_line_error(no_tty)
    monkeypatch.setattr(hosts_cli, "_stdin_is_tty", lambda: True)
    declined = cli.runner.invoke(app, ["--profile", str(path), "hosts", "rm", "gpu-9"], input="n\n")
    assert declined.exit_code == 1 and path.read_text() == text
    removed = cli.runner.invoke(app, ["--profile", str(path), "hosts", "rm", "gpu-9"], input="y\n")
    assert removed.exit_code == 0, removed.stderr
    assert path.read_text() == PROFILE_HEAD
    unknown = cli("--profile", path, "hosts", "rm", "gpu-9", "--yes")
    assert unknown.exit_code == 1
    assert "no host gpu-9 in profile lab" in one_line_error(unknown)


# -- reading --------------------------------------------------------------------------------------


def test_ls_and_show_json_shapes_with_and_without_stored_state(
    cli: Cli,
    tmp_path: Path,
    three_hosts: list[SshdHost],
    ssh_profile: ProfileText,
    data_dir: Path,
) -> None:
    path = write_profile(tmp_path, ssh_profile(three_hosts))
    listed = cli.json("--profile", path, "hosts", "ls")
    assert [h["name"] for h in listed] == ["gpu-1", "gpu-2", "gpu-3"]
    assert [h["port"] for h in listed] == [h.port for h in three_hosts]
    assert all(h["state"] is None and h["kind"] == "ssh" for h in listed)
    assert hosts_cli.NOT_SEEN in cli.ok("--profile", path, "hosts", "ls").stdout

    now = time.time()
    seen = HostObservation(
        host="gpu-2",
        connected=True,
        address="127.0.0.1",
        last_seen_age_s=0.5,
        hello={"version": "0.1.0", "capabilities": {"llama_cpp": True, "pynvml": False}},
        telemetry={"at": now, "disk_free_bytes": 100 * GIB, "gpus": []},
        received_at=now,
        kind="ssh",
    )
    with open_control_plane(profile_of(path, data_dir)) as plane:
        save(plane.store, [HealthTracker().observe(seen, now)])

    states = {h["name"]: h["state"] for h in cli.json("--profile", path, "hosts", "ls")}
    assert states["gpu-1"] is None and states["gpu-3"] is None
    assert states["gpu-2"]["healthy"] is True and states["gpu-2"]["connected"] is True
    assert states["gpu-2"]["health"]["gpus"]["state"] == "unknown"
    table = cli.ok("--profile", path, "hosts", "ls").stdout
    assert "healthy" in table and "gpus: pynvml not installed" in table

    shown = cli.json("--profile", path, "hosts", "show", "gpu-2")
    assert set(shown) == {"name", "profile", "config", "state"}
    assert shown["profile"] == str(path)
    assert shown["config"]["port"] == three_hosts[1].port
    assert shown["state"]["health"]["heartbeat"]["state"] == "ok"
    human = cli.ok("--profile", path, "hosts", "show", "gpu-2").stdout
    assert "heartbeat" in human and "last message 0.5 s ago" in human
    missing = cli("--profile", path, "hosts", "show", "nope")
    assert missing.exit_code == 1
    line = one_line_error(missing)
    assert "no host nope in profile lab" in line and "`bitinglip hosts ls`" in line


# -- trust ----------------------------------------------------------------------------------------


def test_an_unknown_key_is_refused_until_trusted_by_its_fingerprint(
    cli: Cli, lab: tuple[Path, SshdHost]
) -> None:
    path, host = lab
    refused = cli("--profile", path, "hosts", "check", "gpu-1")
    assert refused.exit_code == 1
    line = one_line_error(refused)
    assert "unknown host key" in line and f"--fingerprint {host.fingerprint}" in line
    assert not known_hosts().exists()

    no_tty = cli("--profile", path, "hosts", "trust", "gpu-1")
    assert no_tty.exit_code == 2 and "--fingerprint" in one_line_error(no_tty)
    wrong = cli("--profile", path, "hosts", "trust", "gpu-1", "--fingerprint", "SHA256:nope")
    assert wrong.exit_code == 1 and "SHA256:nope" in one_line_error(wrong)
    assert not known_hosts().exists()

    right = cli("--profile", path, "hosts", "trust", "gpu-1", "--fingerprint", host.fingerprint)
    assert right.exit_code == 0, right.stderr
    assert host.fingerprint in right.stdout and f"[127.0.0.1]:{host.port}" in right.stdout
    assert known_hosts().read_text() == host.known_hosts_line() + "\n"
    again = cli("--profile", path, "hosts", "trust", "gpu-1")  # no flags needed: nothing to do
    assert again.exit_code == 0 and "already trusted" in again.stderr
    assert f"fingerprint  {host.fingerprint}\n" in again.stdout
    mismatch = cli("--profile", path, "hosts", "trust", "gpu-1", "--fingerprint", "SHA256:nope")
    assert mismatch.exit_code == 1 and "SHA256:nope" in one_line_error(mismatch)
    assert known_hosts().read_text() == host.known_hosts_line() + "\n"


def test_trust_asks_on_a_terminal(
    cli: Cli, lab: tuple[Path, SshdHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, host = lab
    monkeypatch.setattr(hosts_cli, "_stdin_is_tty", lambda: True)
    argv = ["--profile", str(path), "hosts", "trust", "gpu-1"]
    declined = cli.runner.invoke(app, argv, input="n\n")
    assert declined.exit_code == 1 and "Trust this key? [y/N]" in declined.stdout
    assert not known_hosts().exists()
    accepted = cli.runner.invoke(app, argv, input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert known_hosts().read_text() == host.known_hosts_line() + "\n"
    checked = cli("--profile", path, "hosts", "check", "gpu-1")  # trusted now; no agent yet
    assert checked.exit_code == 1 and "`bitinglip hosts setup gpu-1`" in checked.stderr


def test_a_changed_key_is_a_hard_error_whatever_the_flags(
    cli: Cli, lab: tuple[Path, SshdHost]
) -> None:
    path, host = lab
    trust(host)
    recorded = known_hosts().read_text()
    host.rekey()
    for flags in ([], ["--yes"], ["--fingerprint", host.fingerprint]):
        result = cli("--profile", path, "hosts", "trust", "gpu-1", *flags)
        assert result.exit_code == 1, flags
        line = one_line_error(result)
        assert "CHANGED" in line and host.fingerprint in line
        assert known_hosts().read_text() == recorded
    checked = cli("--profile", path, "hosts", "check", "gpu-1")
    assert checked.exit_code == 1 and "CHANGED" in one_line_error(checked)


# -- failures: one line, no prompt, a real process -------------------------------------------------


@pytest.mark.parametrize("case", ["wrong_key", "no_key_no_agent", "missing_key_file"])
def test_login_failures_are_one_line_and_never_prompt(
    case: str,
    proc: Proc,
    tmp_path: Path,
    sshd_factory: SshdFactory,
    client_keys: ClientKeys,
) -> None:
    host = sshd_factory("gpu-1")
    key = tmp_path / "key"
    key.write_bytes(
        (client_keys.wrong_key if case == "wrong_key" else client_keys.key).read_bytes()
    )
    key.chmod(0o600)
    text = ssh_profile_text([host], client_keys, workdir_root=tmp_path / "remote")
    text = text.replace(str(client_keys.key), str(key))
    if case == "no_key_no_agent":
        text = text.replace(f'identity_file = "{key}"\n', "")
    path = write_profile(tmp_path, text)
    trust_as(proc, host)
    if case == "missing_key_file":
        key.unlink()
    assert "SSH_AUTH_SOCK" not in proc.env
    done = proc("--profile", path, "hosts", "setup", "gpu-1", timeout=20)  # stdin: /dev/null
    lines = stderr_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("bitinglip: "), lines
    assert "Traceback" not in done.stderr and "password" not in done.stderr.lower()
    if case == "wrong_key":
        assert done.returncode == 1 and f"the host refused key {key}" in lines[0]
    elif case == "no_key_no_agent":
        assert done.returncode == 1 and "SSH_AUTH_SOCK is unset" in lines[0]
    else:  # checked when connecting: an SSH error like the others
        assert done.returncode == 1 and f"identity file {key} does not exist" in lines[0]


def test_a_closed_port_is_refused_at_once(
    cli: Cli, tmp_path: Path, client_keys: ClientKeys
) -> None:
    closed = SshdHost("gpu-1", tmp_path / "closed", client_keys, port=free_port())  # never started
    path = write_profile(
        tmp_path, ssh_profile_text([closed], client_keys, workdir_root=tmp_path / "remote")
    )
    for command in ("check", "trust", "setup"):
        started = time.monotonic()
        result = cli("--profile", path, "hosts", command, "gpu-1")
        assert result.exit_code == 1, command
        assert "connection refused" in one_line_error(result)
        assert time.monotonic() - started < ssh.CONNECT_TIMEOUT_S  # refused, not timed out


# -- setup ----------------------------------------------------------------------------------------


def test_setup_twice_uploads_once(cli: Cli, lab: tuple[Path, SshdHost]) -> None:
    path, host = lab
    trust(host)
    first = cli.json("--profile", path, "hosts", "setup", "gpu-1")
    second = cli.json("--profile", path, "hosts", "setup", "gpu-1")
    assert first["uploaded"] is True and second["uploaded"] is False
    assert first["sha256"] == second["sha256"] and first["agent"] == second["agent"]
    assert Path(first["agent"]).is_file() and f"/agent/{first['sha256']}/" in first["agent"]
    human = cli.ok("--profile", path, "hosts", "setup", "gpu-1").stdout
    assert "in place" in human and first["sha256"] in human


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_setup_killed_at_a_random_moment_converges(
    seed: int, proc: Proc, tmp_path: Path, sshd_factory: SshdFactory, client_keys: ClientKeys
) -> None:
    host = sshd_factory("gpu-1")
    remote = tmp_path / "remote"
    path = write_profile(tmp_path, ssh_profile_text([host], client_keys, workdir_root=remote))
    trust_as(proc, host)
    argv = proc.argv(["--profile", path, "hosts", "setup", "gpu-1", "--json"])
    killed = subprocess.Popen(
        argv, cwd=proc.cwd, env=proc.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    # A whole run takes ~2 s here: start, connect, probe, copy, check, rename.
    time.sleep(random.Random(seed).uniform(0.2, 2.2))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    rerun = proc.json("--profile", path, "hosts", "setup", "gpu-1")
    third = proc.json("--profile", path, "hosts", "setup", "gpu-1")
    assert third["uploaded"] is False and third["sha256"] == rerun["sha256"]
    assert Path(third["agent"]).is_file()


def test_setup_repairs_what_a_kill_mid_copy_leaves(cli: Cli, lab: tuple[Path, SshdHost]) -> None:
    """A kill lands between the copy and the rename only by luck: make its leftovers by hand.
    A half-written temporary file, and a damaged file at the final name."""
    path, host = lab
    trust(host)
    first = cli.json("--profile", path, "hosts", "setup", "gpu-1")
    agent = Path(first["agent"])
    whole = agent.read_bytes()
    stale = agent.with_name(".tmp-0123456789ab")
    stale.write_bytes(whole[: len(whole) // 2])
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # older than STALE_TMP_S
    agent.write_bytes(whole[: len(whole) // 3])
    repaired = cli.json("--profile", path, "hosts", "setup", "gpu-1")
    assert repaired["uploaded"] is True and agent.read_bytes() == whole
    assert not stale.exists()
    assert cli.json("--profile", path, "hosts", "setup", "gpu-1")["uploaded"] is False


# -- check ----------------------------------------------------------------------------------------


def test_check_a_set_up_host(cli: Cli, lab: tuple[Path, SshdHost], data_dir: Path) -> None:
    path, host = lab
    trust(host)
    before = cli("--profile", path, "hosts", "check", "gpu-1", "--json")
    assert before.exit_code == 1
    assert "`bitinglip hosts setup gpu-1`" in one_line_error(before)
    report = json.loads(before.stdout)
    assert report["signals"]["ssh"]["state"] == "ok"
    assert report["signals"]["heartbeat"]["state"] == "bad"
    assert report["agent"]["installed"] is False

    cli.ok("--profile", path, "hosts", "setup", "gpu-1")
    report = cli.json("--profile", path, "hosts", "check", "gpu-1")
    signals = {name: s["state"] for name, s in report["signals"].items()}
    assert report["ok"] is True and report["stored"] is None
    assert all(signals[n] == "ok" for n in ("ssh", "heartbeat", "runtime", "disk", "clock")), (
        report["signals"]
    )
    assert signals["gpus"] in ("unknown", "bad") and report["signals"]["gpus"]["why"]
    assert report["agent"]["hello"]["name"] == "gpu-1"
    assert report["agent"]["telemetry"]["disk_free_bytes"] > 0
    now = time.time()
    seen = HostObservation("gpu-1", connected=False, error="ssh gpu-1: connection refused")
    with open_control_plane(profile_of(path, data_dir)) as plane:
        save(plane.store, [HealthTracker().observe(seen, now)])
    human = cli.ok("--profile", path, "hosts", "check", "gpu-1").stdout
    assert "heartbeat" in human and "controller's view: unhealthy" in human
    assert "  ssh: ssh gpu-1: connection refused" in human


def test_check_and_setup_refuse_a_local_host(cli: Cli, tmp_path: Path) -> None:
    path = write_profile(tmp_path, '[[hosts]]\nname = "here"\nkind = "local"\n')
    for command in ("setup", "check", "trust"):
        result = cli("--profile", path, "hosts", command, "here")
        assert result.exit_code == 2 and "local hosts need no" in one_line_error(result)


# -- top ------------------------------------------------------------------------------------------


def test_top_once_shows_the_stored_telemetry(
    cli: Cli, lab: tuple[Path, SshdHost], data_dir: Path
) -> None:
    path, _host = lab
    empty = cli("--profile", path, "hosts", "top", "--once")
    assert empty.exit_code == 0 and "no telemetry stored yet" in empty.stdout
    assert "no controller is running" in empty.stderr
    snapshot = {
        "at": time.time(),
        "cpu_percent": 12.5,
        "ram_used_bytes": 2 * GIB,
        "ram_total_bytes": 8 * GIB,
        "gpus": [{"index": 0, "name": "NVIDIA H100", "utilization_pct": 87, "temperature_c": 61}],
        "gpu_error": None,
    }
    with open_control_plane(profile_of(path, data_dir)) as plane:
        TelemetryRing().record(plane.store, [("gpu-1", snapshot)])
    frame = cli.json("--profile", path, "hosts", "top", "--once")
    assert frame["controller"] is None
    [row] = frame["hosts"]
    assert row["host"] == "gpu-1" and row["gpus"][0]["name"] == "NVIDIA H100"
    assert row["cpu_percent"] == 12.5 and row["age_s"] is not None
    shown = cli.ok("--profile", path, "hosts", "top", "--once").stdout
    assert "\x1b[" not in shown  # not a terminal: no redraw codes
    assert any(line.split()[:3] == ["gpu-1", "0", "NVIDIA"] for line in shown.splitlines())


def test_top_redraws_in_place_on_a_terminal_until_ctrl_c(
    proc: Proc, lab: tuple[Path, SshdHost]
) -> None:
    path, _host = lab
    main, terminal = pty.openpty()
    argv = proc.argv(["--profile", path, "hosts", "top", "--interval", "0.1"])
    top = subprocess.Popen(
        argv, cwd=proc.cwd, env=proc.env, stdin=subprocess.DEVNULL, stdout=terminal,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 20
    try:
        while shown.count(hosts_cli.CLEAR_HOME.encode()) < 2 and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                shown += os.read(main, 4096)
        top.send_signal(signal.SIGINT)
        _, stderr = top.communicate(timeout=10)
    finally:
        top.kill()
        os.close(main)
    assert shown.count(hosts_cli.CLEAR_HOME.encode()) >= 2, shown  # a frame per refresh
    assert top.returncode == 0 and "Traceback" not in stderr
    assert stderr_lines(stderr) == [f"bitinglip: {hosts_cli.NO_CONTROLLER}"]
