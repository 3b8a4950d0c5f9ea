"""Writing a file whole or not at all: a private temp file beside it, fsynced, then renamed.

The temp file is made by `tempfile.mkstemp` in the target's folder (a random name, created with
O_EXCL and mode 0600, so a symlink planted there is never followed, and the rename stays on one
file system). It is fsynced before the rename and the folder after, so a crash leaves either the
old file or the new one, and it is removed on any way out (an error, Ctrl-C).

`os.replace` renames onto the target: when the target is a symlink, the link itself is replaced
by the new file and the file it pointed to is left as it was. The new file is 0600 (results hold
prompts and completions); `chmod` it to share it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from bitinglip.errors import InputError


def write_lines(target: Path, lines: Iterable[str]) -> int:
    """Write each of `lines` and a newline to `target`, replacing it whole; returns how many.

    An OSError (no such folder, no space, not allowed) propagates after the temp file is gone.
    """
    if target.is_dir():
        raise InputError(f"{target} is a directory; give the path of a file to write")
    folder = target.parent
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            count = 0
            for line in lines:
                out.write(line)
                out.write("\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        _fsync_folder(folder)
    finally:
        with suppress(FileNotFoundError):  # gone when the rename happened
            tmp.unlink()
    return count


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (the folder's entry, not only the file's data)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
