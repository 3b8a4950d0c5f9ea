"""Putting the agent on an SSH host: probe, upload, verify, install, and (`--runtime`) a venv
with llama-cpp-python.

Remote layout, under the host's workdir (default `~/.bitinglip`):

    agent/<sha256>/bitinglip-agent.pyz    the agent zipapp, named by its digest (versioned path)
    run/<sha12>-<fleet>.sock              the running agent's Unix socket (+ .lock, .log)
    venv/                                 the runtime (`hosts setup --runtime`)
    models/                               the model dir unless the profile sets model_dir

Every step is idempotent and safe to kill: the zipapp is uploaded to a temporary name, its
sha256 checked on the host, then renamed into place (atomic); a run finding the right digest
in place uploads nothing. Remote commands are argv lists quoted by `ssh.command_line`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitinglip.agent_bundle import Bundle, build_zipapp
from bitinglip.config import HostConfig, Profile
from bitinglip.config_files import default_data_dir
from bitinglip.control.store import data_dir
from bitinglip.control.transport import ssh
from bitinglip.errors import SshError

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = "~/.bitinglip"
MIN_PYTHON = (3, 9)
AGENT_FILE = "bitinglip-agent.pyz"
DETACHED_EXIT_S = 600.0
STALE_TMP_S = 600
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUNTIME_PACKAGES = ("llama-cpp-python", "huggingface_hub", "psutil", "nvidia-ml-py")
SUN_PATH_MAX = 107

# Runs on the host's python (any 3.x, so that an old one can say its version): where things are,
# whether the agent with this digest is in place; removes temporary files of killed uploads.
PROBE = r"""
import glob, hashlib, json, os, shutil, sys, time
work = os.path.abspath(os.path.expanduser(sys.argv[1]))
digest = sys.argv[2]
folder = os.path.join(work, "agent", digest)
agent = os.path.join(folder, "bitinglip-agent.pyz")
ok = False
if os.path.isfile(agent):
    h = hashlib.sha256()
    with open(agent, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    ok = h.hexdigest() == digest
for tmp in glob.glob(os.path.join(folder, ".tmp-*")):
    try:
        if time.time() - os.path.getmtime(tmp) > int(sys.argv[3]):
            os.remove(tmp)
    except OSError as exc:  # another setup's upload, or not ours to remove: say so, go on
        sys.stderr.write("cannot remove %s: %s\n" % (tmp, exc))
venv = os.path.join(work, "venv", "bin", "python")
model_dir = sys.argv[4] and os.path.abspath(os.path.expanduser(sys.argv[4]))
print(json.dumps({
    "python": list(sys.version_info[:3]), "executable": sys.executable,
    "workdir": work, "agent": agent, "agent_ok": ok,
    "venv_python": venv if os.access(venv, os.X_OK) else None,
    "model_dir": model_dir or os.path.join(work, "models"),
    "nvidia_smi": shutil.which("nvidia-smi"), "time": time.time(),
}))
"""

# Checks an uploaded file's digest on the host, then gives it its mode and renames it into place
# (atomic). argv: temporary path, final path, sha256, octal mode. The agent zipapp and pushed
# models (push.py) land this way.
PLACE = r"""
import hashlib, os, sys
tmp, final, digest, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 8)
h = hashlib.sha256()
with open(tmp, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
if h.hexdigest() != digest:
    os.remove(tmp)
    sys.exit("uploaded file has sha256 %s, expected %s; removed it" % (h.hexdigest(), digest))
os.chmod(tmp, mode)
os.rename(tmp, final)
fd = os.open(os.path.dirname(final), os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


@dataclass(frozen=True)
class Probe:
    python: tuple[int, ...]
    executable: str
    workdir: str
    agent: str
    agent_ok: bool
    venv_python: str | None
    model_dir: str
    nvidia_smi: str | None
    time: float

    @property
    def agent_python(self) -> str:
        """The venv's python when the runtime is installed, else the host's."""
        return self.venv_python or self.executable


@dataclass(frozen=True)
class SetupReport:
    host: str
    uploaded: bool
    probe: Probe
    bundle: Bundle

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "uploaded": self.uploaded,
            "agent": self.probe.agent,
            "sha256": self.bundle.sha256,
            "python": ".".join(map(str, self.probe.python)),
            "runtime": self.probe.venv_python is not None,
            "gpu": self.probe.nvidia_smi is not None,
        }


def _probe_file(profile: Profile, host: HostConfig) -> Path:
    """Per user, not per profile: what a probe finds depends only on how the host is reached."""
    where = [
        host.user,
        host.address,
        host.port,
        host.proxy_jump,
        host.python,
        host.workdir,
        host.model_dir,
    ]
    key = hashlib.sha256(json.dumps(where).encode()).hexdigest()[:16]
    return default_data_dir(".hosts") / f"{host.name}-{key}.json"


def save_probe(profile: Profile, host: HostConfig, bundle: Bundle, found: Probe) -> None:
    """Remember where the agent is on the host, so the next process attaches without probing
    (a probe is an exec channel: a shell and a Python start on the host)."""
    path = _probe_file(profile, host)
    data = {"sha256": bundle.sha256, "probe": asdict(found)}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:  # only an optimisation: the next attach probes again
        log.debug("host %s: probe not remembered: %s", host.name, exc)


def load_probe(profile: Profile, host: HostConfig, bundle: Bundle) -> Probe | None:
    """The remembered probe of `host` for this agent version and address, if any. One that
    cannot be used (unreadable, fields of the wrong types, a socket path too long) is removed,
    so the host is probed afresh rather than failing the same way on every attach."""
    path = _probe_file(profile, host)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data["sha256"] != bundle.sha256:
            return None  # another agent version's: the next probe replaces it
        found = _checked_probe(data["probe"])
        socket_path(found, bundle, profile, host)
        return found
    except (OSError, ValueError, KeyError, TypeError, SshError) as exc:
        log.warning("host %s: remembered probe %s discarded: %s", host.name, path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


_PROBE_TYPES: dict[str, type | tuple[type, ...]] = {
    "executable": str,
    "workdir": str,
    "agent": str,
    "agent_ok": bool,
    "venv_python": (str, type(None)),
    "model_dir": str,
    "nvidia_smi": (str, type(None)),
    "time": (int, float),
}


def _checked_probe(raw: Any) -> Probe:
    """A Probe from its remembered JSON; TypeError when a field has the wrong type."""
    found = Probe(**{**raw, "python": tuple(raw["python"])})
    wrong = [k for k, kinds in _PROBE_TYPES.items() if not isinstance(getattr(found, k), kinds)]
    if not found.python or any(type(v) is not int for v in found.python):
        wrong.append("python")
    if wrong:
        raise TypeError(f"wrong types: {', '.join(wrong)}")
    return found


def local_bundle(profile: Profile) -> Bundle:
    """The agent zipapp of this install, built once into the data dir."""
    data_dir.ensure(profile.data_dir)  # private before anything is made in it
    return build_zipapp(profile.data_dir / "agent")


def fleet_id(profile: Profile) -> str:
    """Names this control plane's agents on a host, so two profiles never share one."""
    return hashlib.sha256(f"{socket.gethostname()}:{profile.db_path}".encode()).hexdigest()[:8]


def socket_path(probe: Probe, bundle: Bundle, profile: Profile, host: HostConfig) -> str:
    path = f"{probe.workdir}/run/{bundle.sha256[:12]}-{fleet_id(profile)}.sock"
    if len(path.encode()) > SUN_PATH_MAX:
        raise SshError(
            f"host {host.name}: the agent's socket path {path} is longer than {SUN_PATH_MAX} "
            "bytes; set a shorter workdir in the profile",
            "remote",
        )
    return path


async def probe(conn: Any, host: HostConfig, bundle: Bundle) -> Probe:
    argv = [
        host.python,
        "-c",
        PROBE,
        host.workdir or DEFAULT_WORKDIR,
        bundle.sha256,
        str(STALE_TMP_S),
        host.model_dir or "",
    ]
    done = await ssh.run(conn, argv, timeout=30.0)
    if done.status != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        why = err[-1] if err else f"status {done.status}"
        raise SshError(
            f"host {host.name}: `{host.python}` failed on the host ({why}); "
            "set python in the profile to a Python >= 3.9",
            "remote",
        )
    try:
        data = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SshError(f"host {host.name}: the probe printed no result", "remote") from None
    found = Probe(**{**data, "python": tuple(data["python"])})
    if found.python < MIN_PYTHON:
        version = ".".join(map(str, found.python))
        raise SshError(
            f"host {host.name}: {found.executable} is Python {version}; the agent needs "
            f">= {'.'.join(map(str, MIN_PYTHON))}: install one and set python in the profile",
            "remote",
        )
    return found


async def install_agent(conn: Any, host: HostConfig, bundle: Bundle, found: Probe) -> bool:
    """Upload and install the zipapp unless the right one is in place; True if uploaded."""
    if found.agent_ok:
        return False
    folder = found.agent.rsplit("/", 1)[0]
    tmp = f"{folder}/.tmp-{secrets.token_hex(6)}"
    await ssh.put_file(conn, bundle.path, tmp, found.executable)
    argv = [found.executable, "-c", PLACE, tmp, found.agent, bundle.sha256, "755"]
    done = await ssh.run(conn, argv)
    if done.status != 0:
        raise SshError(
            f"host {host.name}: installing the agent failed: "
            f"{done.stderr.decode(errors='replace').strip()}; "
            f"run `bitinglip hosts setup {host.name}` again",
            "remote",
        )
    return True


async def setup(
    conn: Any,
    profile: Profile,
    host: HostConfig,
    *,
    runtime: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> SetupReport:
    """`bitinglip hosts setup`: the agent in place (and the runtime with `runtime`)."""
    bundle = local_bundle(profile)
    found = await probe(conn, host, bundle)
    uploaded = await install_agent(conn, host, bundle, found)
    if runtime:
        await install_runtime(conn, host, found, on_output or (lambda _line: None))
        found = await probe(conn, host, bundle)
    save_probe(profile, host, bundle, found)
    return SetupReport(host.name, uploaded, found, bundle)


async def install_runtime(
    conn: Any, host: HostConfig, found: Probe, on_output: Callable[[str], None]
) -> None:
    """A venv under the workdir with llama-cpp-python (CUDA where nvidia-smi exists)."""
    venv = f"{found.workdir}/venv"
    if found.venv_python is None:
        await _step(conn, host, [found.executable, "-m", "venv", venv], on_output, 300.0)
    cmake = "-DGGML_CUDA=on" if found.nvidia_smi else PORTABLE_CMAKE_ARGS
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--progress-bar", "off"]
    await _step(conn, host, [*pip, "--upgrade", "pip"], on_output, 600.0)
    # env(1) passes CMAKE_ARGS to pip's build without a shell: still one quoted argv.
    install = ["env", f"CMAKE_ARGS={cmake}", *pip, *RUNTIME_PACKAGES]
    await _step(conn, host, install, on_output, 3600.0)


async def _step(
    conn: Any,
    host: HostConfig,
    argv: list[str],
    on_output: Callable[[str], None],
    timeout: float,
) -> None:
    done = await ssh.run(conn, argv, timeout=timeout, on_output=on_output)
    if done.status != 0:
        tail = done.stdout.decode(errors="replace").strip().splitlines()
        raise SshError(
            f"host {host.name}: `{' '.join(argv[:4])} ...` failed with status {done.status}"
            f"{': ' + tail[-1] if tail else ''}; fix it and run `bitinglip hosts setup "
            f"{host.name} --runtime` again",
            "remote",
        )


def agent_argv(found: Probe, sock: str, host: HostConfig) -> list[str]:
    """Start (or find) the host's agent daemon."""
    return [
        found.agent_python,
        found.agent,
        "--daemon",
        "--socket",
        sock,
        "--host-name",
        host.name,
        "--model-dir",
        found.model_dir,
        "--detached-exit-s",
        str(DETACHED_EXIT_S),
    ]


def attach_argv(found: Probe, sock: str) -> list[str]:
    return [found.agent_python, found.agent, "--attach", sock]
