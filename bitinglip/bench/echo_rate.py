"""The raw asyncssh baseline of `bitinglip bench fleet`: echo lines/s through a bare channel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncssh

from bitinglip.control.transport.ssh.commands import command_line
from bitinglip.errors import SshError


async def raw_echo_rate(
    conn: Any,
    argv: Sequence[str],
    n: int,
    window: int,
    *,
    refill: int = 1,
    line: Callable[[int], bytes] = lambda i: b'{"i":%d}\n' % i,
    timeout: float = 60.0,
) -> float:
    """Lines/s through a bare exec channel: the baseline of `bitinglip bench fleet`.

    `argv` runs on the host; it must print one line when it is ready, then answer each line it
    reads with one line. After the ready line, `line(0)` .. `line(n - 1)` are written with at most
    `window` unanswered, topped up from the receive callback in one write once `refill` lines (or
    all that are left) can go. The rate is n over the time from the first write to the n-th
    answer (the remote start is not timed).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    class Echo(asyncssh.SSHClientSession[bytes]):
        def __init__(self) -> None:
            self.chan: Any = None
            self.partial = b""
            self.started = 0.0
            self.sent = self.got = 0

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def data_received(self, data: bytes, datatype: Any) -> None:
            if datatype is not None or done.done():
                return  # stderr is not an answer
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            if not self.started and lines:
                lines.pop(0)  # the ready line: start the clock
                self.started = loop.time()
            if self.started:
                self.got += len(lines)
                if self.got >= n:
                    done.set_result(n / max(loop.time() - self.started, 1e-9))
                    return
                self.write_upto(min(self.got + window, n))

        def write_upto(self, count: int) -> None:
            if count - self.sent >= min(refill, n - self.sent) and count > self.sent:
                self.chan.write(b"".join(line(i) for i in range(self.sent, count)))
                self.sent = count

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(
                    SshError(
                        f"{argv[0]} on the host ended after {self.got} of {n} lines", "channel"
                    )
                )

    try:
        chan, echo = await conn.create_session(Echo, command_line(argv), encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SshError(f"starting {argv[0]} on the host failed: {exc}", "channel") from None
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise SshError(
            f"{argv[0]} on the host answered {echo.got} of {n} lines in {timeout:g} s", "timeout"
        ) from None
    finally:
        chan.close()
