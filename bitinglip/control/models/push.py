"""`models pull --via-operator`: for hosts with no way to the hub. This machine downloads the file
once (pinned, sha256-checked), then pushes it to each host over SFTP: to a temporary name,
checked again on the host, renamed into place (the same `<model_dir>/hf/<repo>/<commit12>/<file>`
as a pull there would use), and registered `ready`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from bitinglip.config import HostConfig, Profile
from bitinglip.control.models import aliases as models
from bitinglip.control.models import registry
from bitinglip.control.models.pulls import dest
from bitinglip.control.models.refs import HubFile
from bitinglip.control.store import data_dir
from bitinglip.control.store.db import Store
from bitinglip.control.transport import bootstrap, ssh
from bitinglip.errors import BitinglipError, HubError, SshError


def operator_copy(profile: Profile, file: HubFile, progress: Callable[[str], None]) -> Path:
    """The file in this machine's cache, downloaded once and verified (reused when it is)."""
    from bitinglip.control.models import hub

    path = models.models_dir(profile) / dest(file)
    if path.is_file() and _sha256(path) == file.sha256:
        return path
    progress(f"downloading {file.name} ({file.size / 2**30:.2f} GiB) to this machine")
    folder = path.parent / ".incoming"
    data_dir.ensure(profile.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    got = Path(hub.download_bare(file, str(folder)))
    digest = _sha256(got)
    if digest != file.sha256 or got.stat().st_size != file.size:
        got.unlink(missing_ok=True)
        raise HubError(
            f"{file.repo}:{file.name}: downloaded sha256 {digest[:12]} != expected "
            f"{file.sha256[:12]} (or a wrong size); removed it, nothing was pushed"
        )
    os.replace(got, path)
    shutil.rmtree(folder, ignore_errors=True)
    return path


def push_all(
    store: Store,
    profile: Profile,
    file: HubFile,
    model_id: int,
    hosts: Sequence[HostConfig],
    local: Path,
    progress: Callable[[str], None],
) -> dict[str, str]:
    """Place `local` on every host; host -> the path there, or the one-line error."""
    outcome: dict[str, str] = {}
    for host in hosts:
        registry.set_host_state(store, host.name, model_id, "pulling")
        try:
            progress(f"pushing {file.name} to {host.name}")
            path = (
                _place_local(profile, host, file, local)
                if host.kind == "local"
                else (asyncio.run(_push(profile, host, file, local)))
            )
        except BitinglipError as exc:
            registry.set_host_state(store, host.name, model_id, "failed", error=str(exc))
            outcome[host.name] = f"error: {exc}"
            continue
        registry.set_host_state(store, host.name, model_id, "ready", path=path)
        outcome[host.name] = path
    return outcome


def _place_local(profile: Profile, host: HostConfig, file: HubFile, local: Path) -> str:
    model_dir = Path(host.model_dir).expanduser() if host.model_dir else models.models_dir(profile)
    final = model_dir / dest(file)
    if final.resolve() != local.resolve():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.push")
        shutil.copyfile(local, tmp)
        os.replace(tmp, final)
    return str(final)


async def _push(profile: Profile, host: HostConfig, file: HubFile, local: Path) -> str:
    conn = await ssh.connect(host)
    try:
        found = await bootstrap.probe(conn, host, bootstrap.local_bundle(profile))
        final = f"{found.model_dir}/{dest(file)}"
        tmp = f"{final}.push-{os.getpid()}"
        await ssh.put_file(conn, local, tmp, found.executable)
        argv = [found.executable, "-c", bootstrap.PLACE, tmp, final, file.sha256, "644"]
        done = await ssh.run(conn, argv)
        if done.status != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise SshError(f"host {host.name}: {why[-1] if why else done.status}", "remote")
        return final
    finally:
        conn.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
