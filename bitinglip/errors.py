"""One error tree for BitingLip.

Every error the control plane raises on purpose is a `BitinglipError`. Its message is one line
that says what went wrong, where, and what to do; front ends print it as is. `exit_code` is the
CLI's exit status for it: 1 for runtime errors, 2 for usage and configuration errors.
Nothing heavy is imported here.
"""

from __future__ import annotations


class BitinglipError(Exception):
    """Base of every deliberate BitingLip error."""

    exit_code = 1


class UsageError(BitinglipError):
    """The command line or an input file is wrong."""

    exit_code = 2


class ConfigError(UsageError):
    """A profile is missing, malformed or invalid."""


class InputError(UsageError):
    """An input file (a JSONL batch, a payload) is invalid; nothing of it was used."""


class StoreError(BitinglipError):
    """The state database cannot be used (corrupt, foreign, locked, unwritable)."""


class NotFoundError(BitinglipError):
    """A task, job, host or model named by the user does not exist."""


class StateError(BitinglipError):
    """An operation is not allowed in the object's current state."""


class StaleLeaseError(StateError):
    """A runner reported on a task with a lease token that is no longer current (fencing)."""


class ControllerBusyError(BitinglipError):
    """Another process holds the controller lease."""


class SshError(BitinglipError):
    """A host cannot be reached, trusted or logged into over SSH, or a remote step failed.

    `reason` is a stable word for health signals and tests: refused, timeout, unreachable,
    unknown_host_key, changed_host_key, auth, no_key, remote, channel.
    """

    def __init__(self, message: str, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason


class HubError(BitinglipError):
    """The model hub refused a request (gated, private, a bad token) or cannot be reached."""
