"""Faults the fake hub injects into file downloads, and the writer that sends a body through
them. Kinds and options are documented on `Hub.fault`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.hub.repos import Blob

BODY_FAULTS = frozenset({"truncate", "flip", "wrong_length", "stall", "reset"})
_CUTTING = frozenset({"truncate", "stall", "reset"})


@dataclass
class Fault:
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    remaining: int | None = None  # requests left to break; None: every one

    def __post_init__(self) -> None:
        if self.kind not in BODY_FAULTS and not (
            self.kind.isdigit() and 400 <= int(self.kind) < 600
        ):
            raise ValueError(f"unknown fault kind {self.kind!r}")

    @property
    def status(self) -> int | None:
        """The HTTP status a status fault answers with; None for a body fault."""
        return int(self.kind) if self.kind.isdigit() else None

    def extra_length(self) -> int:
        """How many bytes more than it sends the response announces."""
        return int(self.options.get("extra", 1)) if self.kind == "wrong_length" else 0


class BodyWriter:
    """Writes the bytes [start, stop) of a blob, breaking them as the fault says.

    `write` sends (and counts) bytes, `reset` aborts the connection with an RST, `stopping`
    ends a stall early. `run()` returns whether the connection may be kept alive afterwards.
    """

    def __init__(
        self,
        blob: Blob,
        start: int,
        stop: int,
        fault: Fault | None,
        *,
        write: Callable[[bytes], None],
        reset: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        self.blob, self.start, self.stop = blob, start, stop
        self.kind = fault.kind if fault else None
        options = fault.options if fault else {}
        self.cut = int(options.get("after_bytes", (stop - start) // 2))
        self.flip_at = int(options.get("at", (start + stop) // 2))
        self.seconds = float(options.get("seconds", 30))
        self._write, self._reset, self._stopping = write, reset, stopping

    def run(self) -> bool:
        sent, at = 0, self.start
        cutting = self.kind in _CUTTING
        for piece in self.blob.chunks(self.start, self.stop):
            chunk = self._flipped(piece, at)
            at += len(chunk)
            if cutting and sent + len(chunk) > self.cut:
                self._write(chunk[: self.cut - sent])
                if not self._cut():
                    return False
                cutting = False  # a stall that ended: the rest follows
                sent, chunk = self.cut, chunk[self.cut - sent :]
            self._write(chunk)
            sent += len(chunk)
        if cutting and sent == self.cut:  # the cut falls at the very end of the body
            return self._cut()
        return self.kind != "wrong_length"

    def _flipped(self, chunk: bytes, at: int) -> bytes:
        if self.kind != "flip" or not at <= self.flip_at < at + len(chunk):
            return chunk
        flipped = bytearray(chunk)
        flipped[self.flip_at - at] ^= 0x01
        return bytes(flipped)

    def _cut(self) -> bool:
        """Apply the fault where the body is cut; True when the transfer goes on afterwards."""
        if self.kind == "stall":
            return not self._stopping.wait(self.seconds)
        if self.kind == "reset":
            self._reset()
        return False
