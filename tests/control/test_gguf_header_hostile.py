"""The control plane's GGUF header reader against hostile headers: each is refused in one line
from its first range read, never fetching (from a hub, over the network) what it declares; and
it is the agent's reader, refusing a broken header with the same reason as the agent's check."""

from __future__ import annotations

from pathlib import Path

import pytest
from bitinglip_agent import gguf_check, gguf_reader

from bitinglip.control.models import gguf_header
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


# The header-level cases of the agent's corpus (the rest are about the file or the tensor data).
HEADER_CASES = (
    "random",
    "text",
    "truncated_1k",
    "wrong_magic",
    "version_1",
    "version_9",
    "absurd_tensor_count",
    "absurd_kv_count",
    "alignment_type",
    *corpus.HOSTILE_CASES,
)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, corpus.BadCase]:
    valid = corpus.write_valid_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return corpus.write_bad_corpus(tmp_path_factory.mktemp("bad"), valid)


def test_the_agent_and_the_control_plane_share_one_reader() -> None:
    assert gguf_header.GGML_TYPES is gguf_reader.GGML_TYPES
    assert gguf_header.TensorInfo is gguf_reader.TensorInfo
    assert gguf_check.InvalidGGUF is gguf_reader.InvalidGGUF


@pytest.mark.parametrize("case", HEADER_CASES)
def test_both_sides_refuse_a_broken_header_with_the_same_reason(
    bad: dict[str, corpus.BadCase], case: str
) -> None:
    path = bad[case].path
    with pytest.raises(gguf_check.InvalidGGUF) as agent:
        gguf_check.check_gguf(str(path))
    with path.open("rb") as f, pytest.raises(InputError) as control:
        read_header(gguf_header.file_reads(f), path.stat().st_size, name=str(path))
    assert bad[case].reason in agent.value.reason
    assert str(control.value) == agent.value.reason
