"""The agent protocol: one JSON object per line, UTF-8, each with `v`, `type` and, where a reply
is expected, `id`. This is the one module of the agent that the control plane imports.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any, Callable

PROTOCOL_VERSION = 1

# Control plane -> agent.
TO_AGENT = frozenset({"run", "cancel", "load", "unload", "pull", "ping", "shutdown", "configure"})
# Agent -> control plane.
FROM_AGENT = frozenset({"hello", "telemetry", "event", "result", "error", "pong"})

# Task kinds that need a model (and llama_cpp on the host).
MODEL_KINDS = ("generate", "chat", "embed")

# Longest line either side accepts; a longer one is answered with an error and skipped.
MAX_LINE_BYTES = 8 * 1024 * 1024


class ProtocolError(ValueError):
    """A line that is not a valid protocol message; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.msg_id = msg_id


# One encoder: json.dumps with options builds a new JSONEncoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(msg_type: str, msg_id: str | None = None, **fields: Any) -> bytes:
    """One message as a line of bytes, newline included."""
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg_type}
    if msg_id is not None:
        msg["id"] = msg_id
    msg.update(fields)
    return (_ENCODER.encode(msg) + "\n").encode()


def decode(line: bytes, accepted: frozenset[str]) -> dict[str, Any]:
    """Parse one line into a message whose type is in `accepted`, or raise ProtocolError."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("line_too_long", f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("malformed", f"not a JSON line: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed", "a message must be a JSON object")
    msg_id = msg.get("id") if isinstance(msg.get("id"), str) else None
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "version_mismatch", f"protocol v{msg.get('v')!r}, expected v{PROTOCOL_VERSION}", msg_id
        )
    if msg.get("type") not in accepted:
        raise ProtocolError("unknown_type", f"unknown message type {msg.get('type')!r}", msg_id)
    return msg


# Error codes an agent reports. Retryable ones are infrastructure failures: the queue retries
# them; the others are the task's own fault.
RETRYABLE = frozenset({"runner_crashed", "agent_stopping", "overloaded", "download_failed"})
CODES = RETRYABLE | frozenset(
    {
        "malformed",
        "version_mismatch",
        "unknown_type",
        "line_too_long",
        "bad_request",
        "invalid_gguf",
        "unsupported",
        "canceled",
        "inference_failed",
        "missing_capability",
        # pull
        "unsafe_name",
        "no_space",
        "unauthorized",
        "not_found",
        "checksum_mismatch",
        "write_failed",
    }
)


class LineReader:
    """Lines from a raw reader (`os.read` on a fd, `socket.recv`), which also says whether a
    whole line is already buffered: a reply can then wait and go out with the next ones (one
    write for a batch instead of one per message). Over-long lines as `read_line` returns them.
    """

    def __init__(self, read: Callable[[int], bytes], chunk: int = 1 << 16) -> None:
        self._read = read
        self._chunk = chunk
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._skip = False  # discarding the rest of an over-long line

    def buffered(self) -> bool:
        return self._buf.find(b"\n", self._pos) >= 0

    def next_line(self) -> bytes | None:
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end + 1])
                self._pos = end + 1
                self._compact()
                if self._skip:
                    self._skip = False
                    continue
                return line
            if len(self._buf) - self._pos > MAX_LINE_BYTES and not self._skip:
                line = bytes(self._buf[self._pos : self._pos + MAX_LINE_BYTES + 1])
                self._skip = True
                del self._buf[:]
                self._pos = 0
                return line
            if self._skip:
                del self._buf[:]
                self._pos = 0
            if self._eof:
                rest = bytes(self._buf[self._pos :])
                del self._buf[:]
                self._pos = 0
                return rest or None
            data = self._read(self._chunk)
            if not data:
                self._eof = True
            else:
                self._buf += data

    def _compact(self) -> None:
        if self._pos > (1 << 16) and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0


def read_line(stream: IO[bytes]) -> bytes | None:
    """The next line of `stream` (None at EOF). A line longer than MAX_LINE_BYTES is consumed
    whole and returned as its first MAX_LINE_BYTES + 1 bytes (no newline), for decode to refuse.
    """
    line = stream.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while True:  # skip the rest of the oversized line
            rest = stream.readline(1 << 20)
            if not rest or rest.endswith(b"\n"):
                break
    return line


# A drive letter (`C:`): refused in names, whatever the host's OS.
_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_reason(path: str) -> str | None:
    """Why `path` may not name a file under a host's model dir, or None when it may (the
    control plane checks a pull's names with this before queueing it, the agent again)."""
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL byte"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute (leading '/')"
    if _DRIVE.match(path):
        return "starts with a drive letter"
    if any(ord(c) < 0x20 for c in path):
        return "contains a control character"
    for part in path.split("/"):
        if part == "":
            return "has an empty component"
        if part in (".", ".."):
            return f"has a {part!r} component"
    return None
