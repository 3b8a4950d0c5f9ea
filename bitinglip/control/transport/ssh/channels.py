"""A channel of JSON lines: to the agent's Unix socket on the host, or to a command's stdio."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncssh
from bitinglip_agent.protocol import MAX_LINE_BYTES

from bitinglip.control.transport.ssh.commands import command_line
from bitinglip.errors import SshError


class LineChannel(asyncssh.SSHClientSession[bytes]):
    """Bytes in, whole lines out to `on_line`; `on_end(reason)` once when it closes.

    Every SSH host's channel runs on the one SSH loop, so a packet costs time in proportion to
    its own size (never to the line it belongs to), and the partial line is bounded: one longer
    than MAX_LINE_BYTES is handed on as its first MAX_LINE_BYTES + 1 bytes (as the agent's
    `read_line` does, for `protocol.decode` to refuse as line_too_long) and the rest of it, up
    to the next newline, is discarded as it arrives.
    """

    def __init__(self, on_line: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        self.on_line, self.on_end = on_line, on_end
        self._partial = bytearray()
        self._skip = False  # discarding the rest of an over-long line
        self._chan: Any = None
        self._ended = False

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype is not None:
            return  # stderr of the relay: not protocol
        view = memoryview(data)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._skip:
                self._skip = False  # the end of a line already handed on
            elif self._partial:
                self._partial += view[start : end + 1]
                self.on_line(bytes(self._partial[: MAX_LINE_BYTES + 1]))
                self._partial.clear()
            else:
                self.on_line(data[start : min(end + 1, start + MAX_LINE_BYTES + 1)])
            start = end + 1
        if self._skip or start == len(data):
            return
        self._partial += view[start:]
        if len(self._partial) > MAX_LINE_BYTES:
            self.on_line(bytes(self._partial[: MAX_LINE_BYTES + 1]))
            self._partial.clear()
            self._skip = True

    def eof_received(self) -> bool:
        self._end("the agent closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the channel was lost: {exc}" if exc else "the channel closed")

    def write(self, data: bytes) -> None:
        if self._chan is not None and not self._ended:
            self._chan.write(data)

    def finish(self) -> None:
        """Send what is pending, then EOF (the agent sees the end of its input)."""
        if self._chan is not None and not self._ended:
            self._chan.write_eof()

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.on_end(reason)


async def open_socket_channel(conn: Any, path: str, channel: LineChannel) -> bool:
    """Connect `channel` to the Unix socket `path` on the host (a streamlocal channel).

    False when the server forbids forwarding (then relay through `open_command_channel`);
    SshError when the socket is not there.
    """
    try:
        await conn.create_unix_connection(lambda: channel, path)
    except asyncssh.ChannelOpenError as exc:
        if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            return False
        raise SshError(
            f"no agent listening at {path} on the host: {exc.reason}", "channel"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"opening a channel to {path} failed: {exc}", "channel") from None
    return True


async def open_command_channel(conn: Any, argv: Sequence[str], channel: LineChannel) -> None:
    """Connect `channel` to the stdin/stdout of argv run on the host."""
    try:
        await conn.create_session(lambda: channel, command_line(argv), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"starting {argv[0]} on the host failed: {exc}", "channel") from None
