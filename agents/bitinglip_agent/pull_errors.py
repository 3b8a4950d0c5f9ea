"""How a pull fails: `PullFailed` ends it with a protocol code, `Transient` earns another attempt.

downloads.py raises `PullFailed` for a pull it will not start (bad_request, unsafe_name); the
transfer, the disk side (pull_disk.py) and the hub side (hub_http.py) raise it for one that
cannot finish. `Transient` never leaves the transfer: its retry loop catches it. Standard library
only.
"""

from __future__ import annotations


class PullFailed(Exception):
    """A pull's outcome as an `error`: a protocol code and a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Transient(Exception):
    """A fault worth another attempt: stall, reset, short body, refused connection, HTTP 5xx."""
