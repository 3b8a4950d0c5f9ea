"""Forward reads through a GGUF file over `read(offset, n)`, for the one header reader.

The cursor holds one window of the file (what the last `read` returned) and moves through it;
skipping past the window reads nothing, so skipped array contents are never fetched or held.
Every read past the declared size raises InvalidGGUF naming the file. Standard library only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

ReadAt = Callable[[int, int], bytes]
"""`read(offset, n)`: the bytes from `offset`, at least `n` unless the file ends first; any more
it returns become the cursor's window, so a source may read ahead (a chunk, a fetched prefix)."""
ByteOrder = Literal["<", "="]  # little-endian as GGUFs are published, or the host's (llama.cpp's)

# GGUF's scalar metadata value types -> struct format (8 STRING and 9 ARRAY are not scalars).
_FORMATS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))
_LAYOUTS = {  # byte order -> (u32, u64, scalar value type -> struct)
    order: (
        struct.Struct(order + "I"),
        struct.Struct(order + "Q"),
        {vtype: struct.Struct(order + fmt) for vtype, fmt in _FORMATS.items()},
    )
    for order in ("<", "=")
}


class InvalidGGUF(Exception):
    """Not a GGUF llama.cpp can load; `reason` is one line naming the file."""

    code = "invalid_gguf"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def file_reads(f: BinaryIO, chunk: int = 0) -> ReadAt:
    """`read(offset, n)` over an open local file, reading at least `chunk` bytes at a time."""

    def read(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(max(n, chunk))

    return read


class Cursor:
    """Forward reads through a window of a `size`-byte file; past the end raises InvalidGGUF."""

    def __init__(self, read: ReadAt, size: int, name: str, order: ByteOrder) -> None:
        self.read_at, self.size, self.name, self.order = read, size, name, order
        self.u32s, self.u64s, self.scalars = _LAYOUTS[order]
        self.buf, self.pos, self.base = b"", 0, 0

    def fail(self, what: str) -> InvalidGGUF:
        return InvalidGGUF(f"{self.name}: {what}")

    def truncated(self, what: str, need: int) -> InvalidGGUF:
        at, size = self.tell(), self.size
        return self.fail(f"truncated: {what} needs {need} bytes at offset {at} of {size}")

    def tell(self) -> int:
        return self.base + self.pos

    def _ensure(self, n: int, what: str) -> None:
        if len(self.buf) - self.pos >= n:
            return
        start = self.tell()
        if start + n > self.size:
            raise self.truncated(what, n)
        self.buf, self.pos, self.base = self.read_at(start, n), 0, start
        if len(self.buf) < n:  # the file shrank under us
            raise self.truncated(what, n)

    def take(self, n: int, what: str) -> bytes:
        self._ensure(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self._ensure(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(self.u32s, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(self.u64s, what))

    def skip(self, n: int, what: str) -> None:
        if self.tell() + n > self.size:
            raise self.truncated(what, n)
        if self.pos + n <= len(self.buf):
            self.pos += n
        else:
            self.buf, self.pos, self.base = b"", 0, self.tell() + n

    def length(self, what: str, limit: int) -> int:
        """A string's declared length, refused above `limit` before any of it is read."""
        n = self.u64(what)
        if n > limit:
            raise self.fail(f"{what} is {n} bytes long (at most {limit}): corrupt or hostile")
        return n

    def string(self, what: str, limit: int) -> str:
        return self.take(self.length(what, limit), what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` GGUF strings: a tight loop inside the window, one refill per window."""
        unpack, left = self.u64s.unpack_from, count
        while left:
            buf, pos = self.buf, self.pos
            end = len(buf) - 8
            while left and pos <= end:
                nxt = pos + 8 + unpack(buf, pos)[0]
                if nxt > end + 8:
                    break
                pos, left = nxt, left - 1
            self.pos = pos
            if left:  # a string across the window's edge, or past the end of the file
                self.skip(self.u64(what), what)
                left -= 1
