"""The data dir is private: prompts and completions live in it (the state database, its WAL, the
console's log, crash logs), so other users of the machine must not read them.

A data dir this process creates is 0700 and the files it creates there are 0600, whatever the
umask (the modes are set after creation, since a umask can only take bits away). SQLite gives a
database's `-wal` and `-shm` files the mode of the database file, so a 0600 `state.db` makes them
0600 too. A data dir that already exists is never changed: when others can read it, one line on
stderr says so, once per process, with the command that fixes it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from bitinglip.errors import StoreError

DIR_MODE = 0o700
FILE_MODE = 0o600
_warned: set[Path] = set()


def ensure(folder: Path) -> None:
    """Create `folder` (and missing parents) with mode 0700 when it is missing; when it exists,
    warn (once) if it is open to other users."""
    if folder.exists() and not folder.is_dir():
        raise StoreError(
            f"the data dir {folder} is a file, not a folder; point --data-dir elsewhere"
        )
    try:
        folder.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        warn_if_open(folder)
        return
    except OSError as exc:
        raise StoreError(f"cannot create the data dir {folder}: {exc.strerror}") from None
    os.chmod(folder, DIR_MODE)  # the umask may have taken bits away


def warn_if_open(folder: Path) -> None:
    """One line on stderr, once per process, when others may read `folder` (mode & 0o077)."""
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError:
        return  # not there: whoever opens a file in it says so
    key = folder.absolute()
    if mode & 0o077 and key not in _warned:
        _warned.add(key)
        sys.stderr.write(
            f"bitinglip: warning: the data dir {folder} is open to other users (mode {mode:o})"
            f" and holds prompts and completions; run `chmod 700 {folder}`\n"
        )
        sys.stderr.flush()


def open_private(path: Path, flags: int) -> int:
    """`os.open` of a file in the data dir, created 0600 (and made 0600 when it was not)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
