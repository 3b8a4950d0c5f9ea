"""Numbers and errors as people read them, the same in the CLI and the console."""

from __future__ import annotations


def age(seconds: float) -> str:
    """`42s`, `5m`, `3h`, `2d` (whole units, rounded down; never negative)."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def human_size(n: int | None) -> str:
    """`1.5 GiB`, `240.0 MiB`, `12 B`; `-` when unknown."""
    if n is None:
        return "-"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def error_line(error: BaseException) -> str:
    """An error's first line (its type's name when it has no message)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
