"""The agent protocol: one JSON object per line, UTF-8, each with `v`, `type` and, where a reply
is expected, `id`. This is the one module of the agent that the control plane imports, and the
one home of the task vocabulary both sides speak: `TaskKind` (with its groups: `MODEL_KINDS`,
`LIGHT_KINDS`, `PULL_KINDS`, `SERVE_KINDS`, `JOB_KINDS`, every kind in `KINDS`) and `TaskState`
(`TERMINAL`).

A result longer than RESULT_PART_BYTES goes as numbered `result_part` lines of the same id, each
carrying a slice of the `result` line's text (`split_result`); the control plane joins them
(`Parts`). A result over RESULT_MAX_BYTES fails its run as `result_too_large`. The agent answers
the runs of each batch of lines it reads with one `ack` line listing their ids: a run written but
never acknowledged did not reach the agent, and is sent again after a dropped connection.
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from typing import IO, Any, Callable

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # an agent host's python may be 3.9 or 3.10

    class StrEnum(str, Enum):
        """Python 3.11's enum.StrEnum: a member is its value wherever a string is."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


PROTOCOL_VERSION = 1

# Control plane -> agent.
TO_AGENT = frozenset({"run", "cancel", "load", "unload", "pull", "ping", "shutdown", "configure"})
# Agent -> control plane.
FROM_AGENT = frozenset(
    {"hello", "telemetry", "event", "result", "result_part", "error", "pong", "ack"}
)


class TaskKind(StrEnum):
    """What a task does; the agent runs every kind (`server.Agent._on_run`)."""

    ECHO = "echo"
    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"
    PULL = "pull"
    REMOVE = "remove"
    LOAD = "load"
    UNLOAD = "unload"


# Every kind, in the order messages list them.
KINDS: tuple[TaskKind, ...] = tuple(TaskKind)
# Kinds that need a model (and llama_cpp on the host); a host runs max_concurrency at once.
MODEL_KINDS = (TaskKind.GENERATE, TaskKind.CHAT, TaskKind.EMBED)
# Kinds that cost a host almost nothing: many run at once beside the model kinds.
LIGHT_KINDS = (TaskKind.ECHO,)
# Kinds that change a host's model dir (a download, a deletion): a few at once per host, beside
# the model kinds.
PULL_KINDS = (TaskKind.PULL, TaskKind.REMOVE)
# Kinds that load or unload a model on a host (no inference of their own): a few at once per
# host, beside the model kinds. A load's result: {"loaded", "load_s", "already"}; an unload's:
# {"unloaded": N}.
SERVE_KINDS = (TaskKind.LOAD, TaskKind.UNLOAD)
# What a job file may run: work only. A batch file someone hands you must not pull from a URL of
# its choosing or remove model files, so those kinds are commands of their own, never job lines.
JOB_KINDS = (*LIGHT_KINDS, *MODEL_KINDS)


class TaskState(StrEnum):
    """Where a task is in the queue; the control plane moves it (`states.transition`)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    DEAD = "dead"


# States a task leaves only when retried by hand.
TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED, TaskState.DEAD})

# Longest line either side accepts; a longer one is answered with an error and skipped (and
# fails its run, when its start names one).
MAX_LINE_BYTES = 8 * 1024 * 1024
# A result line longer than this goes as `result_part` lines, each with at most this many
# characters of it: well under MAX_LINE_BYTES, as a character takes at most 4 bytes in UTF-8 and
# a quote or backslash 2 once escaped inside the part's JSON string.
RESULT_PART_BYTES = 1024 * 1024
# The longest result line either side accepts (parts joined); a longer one fails its run.
RESULT_MAX_BYTES = 128 * 1024 * 1024


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


# The start of a line as `encode` writes it: version, type, then the id (if any).
_HEAD = re.compile(rb'\{"v":\d+,"type":"([a-z_]+)","id":"([^"\\]{1,200})"')


def decode(line: bytes | str, accepted: frozenset[str]) -> dict[str, Any]:
    """Parse one line into a message whose type is in `accepted`, or raise ProtocolError. An
    over-long line is refused with the id its start names (the run it was for can then fail)."""
    if len(line) > MAX_LINE_BYTES:
        head = _HEAD.match(line[:256] if isinstance(line, bytes) else line[:256].encode())
        raise ProtocolError(
            "line_too_long",
            f"a line of over {_mib(MAX_LINE_BYTES)}, the protocol's limit",
            head.group(2).decode() if head else None,
        )
    return _parse(line, accepted)


def _parse(line: bytes | str, accepted: frozenset[str]) -> dict[str, Any]:
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


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def too_large(size: int) -> str:
    """The error message of a result over RESULT_MAX_BYTES."""
    return (
        f"the result is over {_mib(RESULT_MAX_BYTES)} (got {_mib(size)} so far), the limit of"
        " one task's result: ask for less per task (e.g. fewer inputs)"
    )


def split_result(line: bytes, msg_id: str) -> bytes:
    """A `result` line as it goes out: itself when short, else numbered `result_part` lines of
    the same id that carry its text in slices (joined by `Parts`), or an `error` line when over
    RESULT_MAX_BYTES."""
    if len(line) <= RESULT_PART_BYTES:
        return line
    if len(line) > RESULT_MAX_BYTES:
        return encode("error", msg_id, code="result_too_large", message=too_large(len(line)))
    text = line[:-1].decode()
    step = RESULT_PART_BYTES
    parts = -(-len(text) // step)
    return b"".join(
        encode("result_part", msg_id, part=n, parts=parts, data=text[n * step : (n + 1) * step])
        for n in range(parts)
    )


class Parts:
    """Joins the `result_part` messages of each id back into its `result` message.

    The parts of one result arrive together, in order: one result is joined at a time (so an
    agent holds at most RESULT_MAX_BYTES here). A part out of order or of another run before
    the open one ends, or a result growing over RESULT_MAX_BYTES, raises ProtocolError with the
    part's id, and the rest of that result's parts are dropped.
    """

    def __init__(self) -> None:
        self._open: dict[str, tuple[list[str], int]] = {}
        self._dropping: set[str] = set()

    def add(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The joined message once `msg` is its last part, else None (or ProtocolError)."""
        msg_id, part, parts = str(msg.get("id")), msg.get("part"), msg.get("parts")
        data = msg.get("data")
        if not (isinstance(part, int) and isinstance(parts, int) and isinstance(data, str)):
            self._open.pop(msg_id, None)
            raise ProtocolError("malformed", "a result_part needs part, parts and data", msg_id)
        last = part + 1 >= parts
        if msg_id in self._dropping:
            if last:
                self._dropping.discard(msg_id)
            return None
        if self._open and msg_id not in self._open:
            self._drop(msg_id, last)
            raise ProtocolError("malformed", "result parts of two runs interleaved", msg_id)
        chunks, size = self._open.pop(msg_id, ([], 0))
        if part != len(chunks):
            self._drop(msg_id, last)
            raise ProtocolError("malformed", f"result part {part} came after {len(chunks)}", msg_id)
        size += len(data)
        if size > RESULT_MAX_BYTES:
            self._drop(msg_id, last)
            raise ProtocolError("result_too_large", too_large(size), msg_id)
        chunks.append(data)
        if not last:
            self._open[msg_id] = (chunks, size)
            return None
        try:
            joined = _parse("".join(chunks), frozenset({"result"}))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"joined result parts: {exc}", msg_id) from None
        if joined.get("id") != msg_id:
            raise ProtocolError("malformed", "result parts carry another id's result", msg_id)
        return joined

    def _drop(self, msg_id: str, last: bool) -> None:
        """Drop the rest of `msg_id`'s parts (only those: parts come one result at a time)."""
        self._dropping = set() if last else {msg_id}

    def clear(self) -> None:
        """Forget partial results (the connection dropped: they come again whole)."""
        self._open.clear()
        self._dropping.clear()


# Error codes an agent reports. Retryable ones are infrastructure failures: the queue retries
# them; the others are the task's own fault.
RETRYABLE = frozenset(
    {"runner_crashed", "agent_stopping", "overloaded", "download_failed", "no_room", "too_large"}
)
CODES = RETRYABLE | frozenset(
    {
        "malformed",
        "version_mismatch",
        "unknown_type",
        "line_too_long",
        "result_too_large",
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
