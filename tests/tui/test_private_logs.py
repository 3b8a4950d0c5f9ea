"""The console's files in the data dir are private under a umask of 022: the dir 0700, its
`console.log` and a crash log 0600 (they quote prompts and errors). Modes are read with stat."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def settle(c: Any, until: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if until():
            return
        await c.pilot.pause(0.05)
    raise AssertionError("condition not met in time")


async def test_the_console_log_is_0600_in_a_0700_dir(console: Any, profile: Profile) -> None:
    async with console(control=False) as c:
        await c.pilot.pause()
    assert mode(profile.data_dir) == 0o700
    assert mode(profile.data_dir / "console.log") == 0o600
    assert mode(profile.db_path) == 0o600


async def test_an_old_open_console_log_is_made_0600(console: Any, profile: Profile) -> None:
    profile.data_dir.mkdir(mode=0o700)
    (profile.data_dir / "console.log").write_text("an older console's lines\n")
    (profile.data_dir / "console.log").chmod(0o644)
    async with console(control=False) as c:
        await c.pilot.pause()
    assert mode(profile.data_dir / "console.log") == 0o600
    assert (profile.data_dir / "console.log").read_text().startswith("an older console's lines\n")


async def test_a_crash_log_is_0600(console: Any, profile: Profile) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with console(control=False) as c:
            c.app.call_later(_boom)
            await settle(c, lambda: not c.app.is_running)
    assert c.app.crash_log is not None and mode(c.app.crash_log) == 0o600
    assert "RuntimeError: boom" in c.app.crash_log.read_text()


def _boom() -> None:
    raise RuntimeError("boom")
