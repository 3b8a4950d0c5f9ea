"""A pull's disk side: the partial opened safely, writes that fail as `write_failed`, quarantine.

Files the agent writes are opened never through a symlink and never inherited (`O_NOFOLLOW`,
`O_CLOEXEC`); the partial must be a plain file, and one process at a time writes it (`flock`).
Every disk operation goes through `disk_op`, so ENOSPC, EFBIG and EIO fail the pull as
`write_failed`. `check_space` runs before any byte moves; `quarantine` moves a file that does not
verify to `.quarantine/` with a `.why` beside it. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from bitinglip_agent.pull_errors import PullFailed

if TYPE_CHECKING:
    from bitinglip_agent.downloads import PullSpec

GIB = 1 << 30
PARTIAL_SUFFIX = ".partial"
QUARANTINE_DIR = ".quarantine"
# Files the agent writes are opened with these: never through a symlink, never inherited.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_PLAIN = (
    "is a symlink or not a plain file; refused to write through it (remove it and pull again)"
)


def disk_op(call: Callable[..., Any], *args: Any, path: str, **kwargs: Any) -> Any:
    """A disk operation whose OSError fails the pull as `write_failed` (ENOSPC, EFBIG, EIO)."""
    try:
        return call(*args, **kwargs)
    except OSError as exc:
        raise PullFailed("write_failed", f"writing {path}: {exc.strerror or exc}") from None


def open_partial(partial: str) -> int:
    """The partial, opened never through a symlink (one planted there would have the agent
    write wherever it points) and only when it is a plain file."""
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PullFailed("write_failed", f"{partial} {_NOT_PLAIN}") from None
        raise PullFailed("write_failed", f"creating {partial}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PullFailed("write_failed", f"{partial} {_NOT_PLAIN}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise PullFailed("download_failed", f"another process is writing {partial}") from None
    return fd


def write_all(fd: int, data: bytes, path: str) -> None:
    view = memoryview(data)
    while view:
        written = disk_op(os.write, fd, view, path=path)
        if not written:
            raise PullFailed("write_failed", f"writing {path}: no bytes written")
        view = view[written:]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        disk_op(os.fsync, fd, path=path)
    finally:
        os.close(fd)


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def check_space(final: str, remaining: int, margin: int) -> None:
    """`no_space` unless the filesystem that will hold `final` has `remaining + margin` free."""
    folder = os.path.dirname(final)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    st = os.statvfs(folder)
    free, need = st.f_bavail * st.f_frsize, remaining + margin
    if free < need:
        raise PullFailed(
            "no_space",
            f"needs {need / GIB:.2f} GiB ({remaining} bytes + {margin}"
            f" margin), {free / GIB:.2f} GiB free on {_mount_point(folder)}"
            f" ({free} bytes)",
        )


def _mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def quarantine(partial: str, root: str, spec: PullSpec, reason: str) -> NoReturn:
    """Move the partial to `<root>/.quarantine/` with a `.why` beside it; fail the pull."""
    folder = os.path.join(root, QUARANTINE_DIR)
    disk_op(os.makedirs, folder, exist_ok=True, path=folder)
    base = os.path.join(folder, f"{spec.dest.replace('/', '__')}.{int(time.time())}")
    path, n = base, 0
    while os.path.exists(path):
        n += 1
        path = f"{base}.{n}"
    disk_op(os.replace, partial, path, path=path)
    why = (
        f"{reason}\nrepo: {spec.repo}\ncommit: {spec.commit}\n"
        f"name: {spec.name}\nurl: {spec.url}\nat: {time.time():.0f}\n"
    )
    with contextlib.suppress(OSError):  # a new file only: never through what is there
        fd = os.open(path + ".why", os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(why)
    fsync_dir(folder)
    raise PullFailed("checksum_mismatch", f"{reason}; quarantined at {path}")
