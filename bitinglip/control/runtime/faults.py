"""The control loop's error boundary: what a failed step means, how long to back off, and when
the loop gives up.

A step that raises (the database locked past its busy timeout, a full disk, a bug) is logged
once per distinct reason and retried after a capped exponential backoff; nothing it held is
dropped (the dispatcher keeps received results until they are stored). The loop gives up, and
its `run()` raises, when the database cannot be used at all (damaged, not a database) or when
every step has failed for `give_up_after_s` (the profile's `controller.give_up_after_s`): a
controller that cannot store anything must not go on holding the fleet (`bitinglip up` and
`bitinglip serve` then exit 1 naming the reason).
"""

from __future__ import annotations

import logging
import sqlite3
import time

from bitinglip.errors import BitinglipError, StateError, StoreError

log = logging.getLogger("bitinglip.control.runtime.loop")

GIVE_UP_AFTER_S = 30.0
BACKOFF_S = (0.05, 2.0)


def is_storage(exc: BaseException) -> bool:
    """A failure of the state database (every host's, not one host's)."""
    return isinstance(exc, (StoreError, sqlite3.Error))


def unusable(exc: BaseException) -> bool:
    """The database cannot be used again: damaged, not a database, or closed."""
    return type(exc) is sqlite3.DatabaseError or isinstance(exc, sqlite3.ProgrammingError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, BitinglipError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"the state database: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Faults:
    """The loop's run of failed steps: `failed(exc)` after each, `ok()` after a good one."""

    def __init__(self, give_up_after_s: float = GIVE_UP_AFTER_S) -> None:
        self.give_up_after_s = give_up_after_s
        self.since: float | None = None  # when the current run of failures began
        self.backoff = 0.0
        self._said = ""

    def failed(self, exc: Exception) -> float:
        """Seconds to back off before the next step; raises the error that ends the loop when
        it cannot go on."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        reason, failing = describe(exc), now - self.since
        if unusable(exc) or failing >= self.give_up_after_s:
            error = StoreError if is_storage(exc) else StateError
            raise error(
                f"the control loop stopped: {reason}"
                + (f" (every step failed for {failing:.0f} s)" if failing else "")
            ) from exc
        if reason != self._said:
            self._said = reason
            log.warning(
                "control loop step failed: %s; retrying (stops after %.0f s of failures)",
                reason,
                self.give_up_after_s,
                exc_info=None if isinstance(exc, BitinglipError | sqlite3.Error) else exc,
            )
        self.backoff = min(max(self.backoff * 2, BACKOFF_S[0]), BACKOFF_S[1])
        return self.backoff

    def ok(self) -> None:
        if self.since is not None:
            log.warning(
                "control loop working again after %.1f s of failures",
                time.monotonic() - self.since,
            )
        self.since, self.backoff, self._said = None, 0.0, ""
