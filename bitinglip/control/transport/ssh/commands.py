"""Remote commands and files: run a quoted argv on a connection, copy a file to the host."""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from bitinglip.errors import SshError


@dataclass(frozen=True)
class Completed:
    status: int
    stdout: bytes
    stderr: bytes


def command_line(argv: Sequence[str]) -> str:
    """A remote command from an argv: every word quoted for a POSIX shell, never pasted."""
    return shlex.join(argv)


async def run(
    conn: Any,
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    on_output: Callable[[str], None] | None = None,
) -> Completed:
    """Run argv on the host; with `on_output`, its stdout+stderr lines are passed as they come."""
    try:
        if on_output is None:
            done = await asyncio.wait_for(
                conn.run(command_line(argv), encoding=None, check=False), timeout
            )
            return Completed(done.exit_status or 0, done.stdout or b"", done.stderr or b"")
        return await asyncio.wait_for(_stream(conn, argv, on_output), timeout)
    except TimeoutError:
        raise SshError(
            f"running {argv[0]} on the host did not finish within {timeout:g} s", "timeout"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"running {argv[0]} on the host failed: {exc}", "channel") from None


async def _stream(conn: Any, argv: Sequence[str], on_output: Callable[[str], None]) -> Completed:
    process = await conn.create_process(command_line(argv), stderr=asyncssh.STDOUT)
    lines: list[str] = []
    async for line in process.stdout:
        text = line.rstrip("\n")
        lines.append(text)
        on_output(text)
    await process.wait()
    return Completed(process.exit_status or 0, "\n".join(lines[-50:]).encode(), b"")


# Writes stdin to argv[1] (folders made): the copy for servers without the SFTP subsystem.
WRITE_STDIN = (
    "import os, shutil, sys\n"
    "os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    shutil.copyfileobj(sys.stdin.buffer, f)\n"
)


async def put_file(conn: Any, local: Path, remote: str, python: str) -> None:
    """Copy `local` to `remote` over SFTP (through `python` where the server has no SFTP)."""
    try:
        sftp = await conn.start_sftp_client()
    except (OSError, asyncssh.Error):
        sftp = None
    try:
        if sftp is None:
            done = await conn.run(
                command_line([python, "-c", WRITE_STDIN, remote]),
                input=local.read_bytes(),
                encoding=None,
                check=False,
            )
            if done.exit_status != 0:
                raise SshError(
                    f"copying {local.name} to the host failed: {done.stderr!r}", "channel"
                )
            return
        async with sftp:
            await sftp.makedirs(os.path.dirname(remote), exist_ok=True)
            await sftp.put(str(local), remote)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"copying {local.name} to the host failed: {exc}", "channel") from None
