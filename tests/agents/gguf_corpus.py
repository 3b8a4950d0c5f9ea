"""A tiny valid GGUF written with gguf-py, and a corpus of broken files derived from it."""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import quantize

ARCH = "llama"
NAME = "bitinglip-tiny"
CONTEXT_LENGTH = 128
BLOCK_COUNT = 2
FILE_TYPE = 7  # MOSTLY_Q8_0
TENSOR_NAMES = ("token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight")


def write_valid_gguf(
    path: Path,
    *,
    n_tokens: int = 300,
    alignment: int | None = None,
    chat_template: str | None = None,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> Path:
    """Metadata (architecture, name, counts, a string array) and Q8_0, F16 and F32 tensors.

    The last tensor is F32 with a byte size that is a multiple of 32, so the file ends exactly
    where its data ends: cutting one byte must be caught.
    """
    writer = gguf.GGUFWriter(path, ARCH, endianess=endian)
    writer.add_name(NAME)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_file_type(FILE_TYPE)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}" for i in range(n_tokens)])
    writer.add_token_scores([float(-i) for i in range(n_tokens)])
    rng = np.random.default_rng(0)
    q8 = rng.standard_normal((2, 64)).astype(np.float32)
    writer.add_tensor(
        TENSOR_NAMES[0],
        quantize(q8, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor(TENSOR_NAMES[1], rng.standard_normal((8, 16)).astype(np.float16))
    writer.add_tensor(TENSOR_NAMES[2], rng.standard_normal((4, 8)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wrong_alignment_type(path: Path) -> Path:
    """`general.alignment` as a uint64: llama.cpp asserts (aborts the process) on it."""
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_key_value("general.alignment", 32, gguf.GGUFValueType.UINT64)
    writer.add_tensor("t", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_misaligned_offset(path: Path, valid: Path) -> Path:
    """The second tensor's offset moved off the 32-byte grid."""
    data = bytearray(valid.read_bytes())
    name = TENSOR_NAMES[1].encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    offset_at = at + 4 + 8 * n_dims + 4
    offset = struct.unpack_from("<Q", data, offset_at)[0]
    struct.pack_into("<Q", data, offset_at, offset + 1)
    path.write_bytes(bytes(data))
    return path


HOSTILE = 1 << 28  # 256 MiB: what a hostile length declares (and what the file then holds)
# Headers whose lengths and counts are within the file's size but far past any real model's:
# each must be refused before the reader allocates or walks what they declare.
HOSTILE_CASES = ("huge_key", "huge_string", "huge_array", "many_tensors", "many_kvs")


BAD_CASES = (
    "empty",
    "random",
    "text",
    "truncated_1k",
    "truncated_half",
    "one_byte_short",
    "wrong_magic",
    "version_1",
    "version_9",
    "absurd_tensor_count",
    "absurd_kv_count",
    "alignment_type",
    "misaligned_offset",
    "directory",
    "missing",
    "permission_denied",
    *HOSTILE_CASES,
)


@dataclass(frozen=True)
class BadCase:
    path: Path
    reason: str  # a word the one-line reason must contain


def _gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def write_hostile(path: Path, case: str) -> BadCase:
    """A hand-made header for one of HOSTILE_CASES, in a sparse file large enough that only the
    declared length or count is wrong (as in a multi-GiB model a hostile hub could serve)."""
    gguf_type = {"string": 8, "array": 9}
    kvs, tensors, reason = 1, 0, "bytes long"
    if case == "huge_key":  # a key of 256 MiB
        body = struct.pack("<Q", HOSTILE)
    elif case == "huge_string":  # a value the reader keeps, of 256 MiB
        body = _gguf_string("general.name") + struct.pack("<IQ", gguf_type["string"], HOSTILE)
    elif case == "huge_array":  # 32 Mi empty strings: one tight loop step each
        body = _gguf_string("tokenizer.ggml.tokens") + struct.pack(
            "<IIQ", gguf_type["array"], gguf_type["string"], HOSTILE // 8
        )
        reason = "elements"
    elif case == "many_tensors":  # 128 Ki tensor infos of zeros
        kvs, tensors, body, reason = 0, 1 << 17, b"", "absurd tensor count"
    elif case == "many_kvs":  # 128 Ki metadata entries of zeros
        kvs, body, reason = 1 << 17, b"", "absurd metadata kv count"
    else:
        raise ValueError(case)
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + body)
        f.truncate(HOSTILE + (1 << 20))  # sparse: no disk blocks for the zeros
    return BadCase(path, reason)


def write_bad_corpus(root: Path, valid: Path) -> dict[str, BadCase]:
    """Every broken input the agent must refuse, each with the word its reason must use."""
    root.mkdir(parents=True, exist_ok=True)
    good = valid.read_bytes()
    assert len(good) > 2048, "the valid file must be larger than the 1 KB truncation"
    junk = random.Random(7).randbytes(64)
    assert not junk.startswith(b"GGUF")

    def put(name: str, data: bytes) -> Path:
        path = root / name
        path.write_bytes(data)
        return path

    def patched(offset: int, fmt: str, value: int) -> bytes:
        data = bytearray(good)
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)

    (root / "a-directory.gguf").mkdir(exist_ok=True)
    cases = {
        "empty": BadCase(put("empty.gguf", b""), "empty"),
        "random": BadCase(put("random.gguf", junk), "not a GGUF file"),
        "text": BadCase(put("text.gguf", b"this is a text file\n" * 20), "not a GGUF file"),
        "truncated_1k": BadCase(put("cut-1k.gguf", good[:1024]), "truncated"),
        "truncated_half": BadCase(put("cut-half.gguf", good[: len(good) // 2]), "truncated"),
        "one_byte_short": BadCase(put("cut-1.gguf", good[:-1]), "truncated"),
        "wrong_magic": BadCase(put("magic.gguf", b"GGML" + good[4:]), "not a GGUF file"),
        "version_1": BadCase(put("v1.gguf", patched(4, "<I", 1)), "version 1"),
        "version_9": BadCase(put("v9.gguf", patched(4, "<I", 9)), "unsupported GGUF version"),
        "absurd_tensor_count": BadCase(
            put("tensors.gguf", patched(8, "<Q", 1 << 40)), "absurd tensor count"
        ),
        "absurd_kv_count": BadCase(
            put("kvs.gguf", patched(16, "<Q", 1 << 62)), "absurd metadata kv count"
        ),
        "alignment_type": BadCase(
            write_wrong_alignment_type(root / "align-u64.gguf"), "general.alignment"
        ),
        "misaligned_offset": BadCase(
            write_misaligned_offset(root / "misaligned.gguf", valid), "not a multiple of 32"
        ),
        "directory": BadCase(root / "a-directory.gguf", "directory"),
        "missing": BadCase(root / "no-such-model.gguf", "missing file"),
    }
    unreadable = put("unreadable.gguf", good)
    os.chmod(unreadable, 0)
    cases["permission_denied"] = BadCase(unreadable, "permission denied")
    for case in HOSTILE_CASES:
        cases[case] = write_hostile(root / f"{case}.gguf", case)
    return cases


def permission_checks_apply() -> bool:
    """False as root (or with CAP_DAC_OVERRIDE), where mode 000 does not stop reads."""
    return hasattr(os, "geteuid") and os.geteuid() != 0
