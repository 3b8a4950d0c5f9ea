"""The control plane's GGUF header reader against hostile headers: each is refused in one line
from its first range read, never fetching (from a hub, over the network) what it declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitinglip.control.models.gguf_header import FIRST_READ, read_header
from bitinglip.errors import InputError
from tests.agents import gguf_corpus as corpus


@pytest.mark.parametrize("case", corpus.HOSTILE_CASES)
def test_a_hostile_header_is_refused_without_fetching_what_it_declares(
    tmp_path: Path, case: str
) -> None:
    bad = corpus.write_hostile(tmp_path / f"{case}.gguf", case)
    size = bad.path.stat().st_size
    fetched: list[int] = []

    def read(start: int, length: int) -> bytes:
        fetched.append(length)
        with bad.path.open("rb") as f:
            f.seek(start)
            return f.read(length)

    with pytest.raises(InputError) as caught:
        read_header(read, size, name=bad.path.name)
    reason = str(caught.value)
    assert reason.startswith(f"{bad.path.name}: ") and "\n" not in reason, reason
    assert bad.reason in reason and "at most" in reason, reason
    assert sum(fetched) == FIRST_READ, f"{case}: fetched {fetched}"
