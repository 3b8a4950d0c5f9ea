"""Fit planning: GGUF headers read by range, per-layer and KV bytes, verdicts at the boundaries.

Every expected number is computed here by hand from the shapes in `gguf_model.Spec` (F32 is 4
bytes an element, F16 2, Q8_0 34 bytes per 32 elements), not by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import pytest

from bitinglip.config import Profile
from bitinglip.control.fleet.telemetry_ring import TelemetryRing, latest
from bitinglip.control.models import gguf_header
from bitinglip.control.models.fit import (
    GIB,
    Device,
    Fit,
    Need,
    estimate,
    gpus_from_telemetry,
    needs_for_files,
    plan,
    read_header,
)
from bitinglip.control.store.db import Store, open_store
from bitinglip.errors import InputError
from tests.control.gguf_model import Spec, Written, tensors, write_model

MIB = 1 << 20
SPEC = Spec()  # 4 layers, E 256, FFN 512, 8 heads, 2 KV heads (head_dim 32), vocab 1024
E, F, L, V = SPEC.embd, SPEC.ffn, SPEC.layers, SPEC.vocab
HKV, HEAD_DIM = SPEC.kv_heads, SPEC.embd // SPEC.heads


def q8(elements: int) -> int:
    return elements // 32 * 34


# One layer: two F32 norms, Q8_0 q/k/v/o, three F16 FFN matrices.
LAYER = 2 * (E * 4) + 2 * q8(E * E) + 2 * q8(HKV * HEAD_DIM * E) + 3 * (F * E * 2)
INPUT = q8(V * E)  # token_embd
OUTPUT = E * 4 + q8(V * E)  # output_norm + output
WEIGHTS = L * LAYER + INPUT + OUTPUT


def kv_bytes(ctx: int) -> int:
    """2 (K and V) × layers × ctx × head_count_kv × head_dim × 2 bytes (f16)."""
    return 2 * L * ctx * HKV * HEAD_DIM * 2


class Reader:
    """`read(start, length)` over a local file, counting what was asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[int, int]] = []

    def __call__(self, start: int, length: int) -> bytes:
        self.calls.append((start, length))
        with self.path.open("rb") as f:
            f.seek(start)
            return f.read(length)

    @property
    def requested(self) -> int:
        return sum(n for _, n in self.calls)


@pytest.fixture
def model(tmp_path: Path) -> Written:
    return write_model(tmp_path / "model-Q8_0.gguf", SPEC)


def header_of(written: Written) -> gguf_header.GGUFHeader:
    return read_header(Reader(written.path), written.size, name=written.path.name)


# -- the header ---------------------------------------------------------------------------------


def test_the_type_table_matches_gguf_py() -> None:
    for ggml_type, (elements, size) in gguf.GGML_QUANT_SIZES.items():
        assert gguf_header.GGML_TYPES[ggml_type.value] == (ggml_type.name, elements, size)
    assert len(gguf_header.GGML_TYPES) == len(gguf.GGML_QUANT_SIZES)


def test_the_header_numbers_match_what_was_written(model: Written) -> None:
    h = header_of(model)
    assert (h.architecture, h.model_name, h.version) == ("llama", "fit-test", 3)
    assert (h.block_count, h.context_length, h.embedding_length) == (L, 2048, E)
    assert (h.head_count, h.head_count_kv, h.key_length, h.value_length) == (8, 2, None, None)
    assert (h.file_type, h.quant, h.alignment) == (7, "Q8_0", 32)
    assert h.data_offset == model.data_offset
    by_name = {t.name: t for t in h.tensors}
    assert len(by_name) == 1 + 9 * L + 2
    q = by_name["blk.0.attn_q.weight"]
    assert (q.shape, q.type_name, q.nbytes) == ((E, E), "Q8_0", q8(E * E))
    down = by_name["blk.3.ffn_down.weight"]
    assert (down.shape, down.type_name, down.nbytes) == ((F, E), "F16", E * F * 2)
    assert by_name["output_norm.weight"].nbytes == E * 4
    assert h.tensor_bytes == WEIGHTS


def test_tensor_sizes_and_offsets_agree_with_gguf_py(model: Written) -> None:
    ours = header_of(model).tensors
    theirs = gguf.GGUFReader(model.path).tensors
    assert [(t.name, t.nbytes) for t in ours] == [(t.name, int(t.n_bytes)) for t in theirs]
    assert [model.data_offset + t.offset for t in ours] == [t.data_offset for t in theirs]


def test_a_small_header_costs_one_read(model: Written) -> None:
    reader = Reader(model.path)
    h = read_header(reader, model.size)
    assert reader.calls == [(0, gguf_header.FIRST_READ)]
    assert h.bytes_read == reader.requested == gguf_header.FIRST_READ


def test_a_long_header_doubles_and_never_reaches_far_into_the_data(tmp_path: Path) -> None:
    """A 2.6 MB header (100k tokens) before 7B-sized layers, tensor data as a sparse hole.

    Doubling overshoots the header by less than the last read, so a header of H bytes costs
    less than 2H; for a 600 MB file that is well under 1%."""
    spec = Spec(layers=2, embd=4096, ffn=11008, heads=32, kv_heads=8, vocab=4096, tokens=100_000)
    written = write_model(tmp_path / "big.gguf", spec)
    data_bytes = written.size - written.data_offset
    assert data_bytes >= 100_000_000
    reader = Reader(written.path)
    h = read_header(reader, written.size, name="big.gguf")
    # Contiguous, each read at the end of the last, each (but a last one) doubling the prefix.
    starts = [s for s, _ in reader.calls]
    assert starts == [0, *[sum(n for _, n in reader.calls[:i]) for i in range(1, len(starts))]]
    assert len(reader.calls) > 2
    assert h.bytes_read == reader.requested
    assert h.data_offset == written.data_offset  # the token list was walked across reads
    assert h.tensor_bytes == sum(size for *_, size in tensors(spec))
    assert reader.requested < written.data_offset + max(n for _, n in reader.calls)
    assert reader.requested <= written.size // 100
    print(f"\nheader {written.data_offset} B, read {reader.requested} B of {written.size} B")


def test_a_short_read_is_finished_with_more_reads(model: Written) -> None:
    data = model.path.read_bytes()
    h = read_header(lambda s, n: data[s : s + min(n, 1000)], model.size)
    assert h.tensor_bytes == WEIGHTS


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"GGML" + b[4:], "model.gguf: not a GGUF file (magic b'GGML'"),
        (lambda b: b[:4] + (9).to_bytes(4, "little") + b[8:], "unsupported GGUF version 9"),
        (lambda b: b[:2000], "model.gguf: truncated"),
        (lambda b: b[:300], "model.gguf: truncated or corrupt: 9 metadata kvs and 39 tensor"),
        (
            lambda b: b[:16] + (10**12).to_bytes(8, "little") + b[24:],
            "model.gguf: absurd metadata kv count 1000000000000 (at most 65536)",
        ),
    ],
)
def test_a_broken_header_is_one_line_naming_the_file(
    model: Written, mutate: Callable[[bytes], bytes], message: str
) -> None:
    data = mutate(model.path.read_bytes()[:4096])
    with pytest.raises(InputError) as caught:
        read_header(lambda s, n: data[s : s + n], len(data), name="model.gguf")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_server_that_sends_nothing_is_an_error(model: Written) -> None:
    with pytest.raises(InputError, match=r"^model.gguf: the server sent no bytes at offset 0$"):
        read_header(lambda s, n: b"", model.size, name="model.gguf")


# -- the estimate -------------------------------------------------------------------------------


def test_estimate_splits_layers_and_computes_the_kv_cache(model: Written) -> None:
    need = estimate(header_of(model), model.size, ctx=4096)
    assert need.weights_bytes == WEIGHTS
    assert need.layer_bytes == (LAYER,) * L
    assert (need.input_bytes, need.output_bytes) == (INPUT, OUTPUT)
    # 2 × 4 layers × 4096 tokens × 2 KV heads × 32 head dims × 2 bytes = 4 MiB
    assert need.kv_bytes == kv_bytes(4096) == 4 * MIB
    assert need.kv_layer_bytes == (MIB,) * L
    assert need.quant == "Q8_0" and need.file_size == model.size
    assert need.notes == ("ctx 4096 is past the model's trained context 2048",)
    assert estimate(header_of(model), model.size, ctx=1024).notes == ()


def test_key_and_value_lengths_override_the_head_dim(tmp_path: Path) -> None:
    spec = Spec(key_length=64, value_length=32)
    written = write_model(tmp_path / "kl.gguf", spec)
    need = estimate(header_of(written), written.size, ctx=1000)
    # per layer: ctx × Hkv × (key_length + value_length) × 2 bytes
    assert need.kv_layer_bytes == (1000 * 2 * (64 + 32) * 2,) * L


def test_a_per_layer_kv_head_array_sizes_each_layer(tmp_path: Path) -> None:
    written = write_model(tmp_path / "hybrid.gguf", replace(SPEC, kv_heads_per_layer=(2, 0, 2, 4)))
    h = header_of(written)
    assert (h.head_count_kv, h.head_count_kv_per_layer) == (4, (2, 0, 2, 4))
    need = estimate(h, written.size, ctx=100)
    # per layer: ctx × that layer's KV heads × (32 + 32) × 2 bytes
    assert need.kv_layer_bytes == tuple(100 * heads * 64 * 2 for heads in (2, 0, 2, 4))


def test_a_type_newer_than_the_table_is_sized_by_its_offsets(
    model: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(gguf_header.GGML_TYPES, gguf.GGMLQuantizationType.Q8_0.value)
    h = header_of(model)
    # Every tensor here is a multiple of 32 bytes, so the distance to the next offset is exact.
    assert h.tensor_bytes == WEIGHTS
    assert {t.type_name for t in h.tensors} == {"F32", "F16", "type8"}


# -- the plan -----------------------------------------------------------------------------------


@pytest.fixture
def need(model: Written) -> Need:
    return estimate(header_of(model), model.size, ctx=4096)


def gpu(free: int, ram_free: int | None = None) -> Device:
    return Device("h1", 0, "Test GPU", free, ram_free)


def test_fits_exactly_at_the_boundary(need: Need) -> None:
    margin = MIB
    total = WEIGHTS + kv_bytes(4096) + margin
    (v,) = plan(need, [gpu(total)], margin=margin)
    assert (v.verdict, v.layers_on_gpu, v.layers_total, v.need, v.free) == (
        Fit.FITS,
        L,
        L,
        total,
        total,
    )
    assert v.why.startswith("needs 0.0 GiB (0.0 weights + 0.0 KV at ctx 4096 + 0.0 margin) of")
    (short,) = plan(need, [gpu(total - 1)], margin=margin)
    # Every layer still fits; only the token embedding stays on the CPU.
    assert (short.verdict, short.layers_on_gpu) == (Fit.PARTIAL, L)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_layers_at_their_boundary_and_one_byte_short_is_one_fewer(need: Need, n: int) -> None:
    margin = MIB
    per_layer = LAYER + kv_bytes(4096) // L
    # N = floor((free − margin − output) / (layer weights + layer KV))
    free = margin + OUTPUT + n * per_layer
    (v,) = plan(need, [gpu(free)], margin=margin)
    assert (v.verdict, v.layers_on_gpu, v.layers_total) == (Fit.PARTIAL, n, L)
    assert v.why.startswith(f"{n} of {L} layers: ")
    (short,) = plan(need, [gpu(free - 1)], margin=margin)
    assert short.layers_on_gpu == n - 1
    assert short.verdict == (Fit.NO if n == 1 else Fit.PARTIAL)


def test_a_tiny_gpu_does_not_fit(need: Need) -> None:
    (v,) = plan(need, [gpu(600 * 1024)], margin=MIB)
    assert (v.verdict, v.layers_on_gpu) == (Fit.NO, 0)
    assert "not one layer of 0.0 GiB" in v.why


def test_the_default_margin_is_one_gib(need: Need) -> None:
    fits, no = plan(need, [gpu(GIB + 9 * MIB), gpu(GIB + 8 * MIB)])
    assert (fits.verdict, no.verdict) == (Fit.FITS, Fit.PARTIAL)
    assert fits.need == WEIGHTS + kv_bytes(4096) + GIB
    assert "+ 1.0 margin" in fits.why


def test_a_cpu_host_is_judged_against_its_free_ram(need: Need) -> None:
    total = WEIGHTS + kv_bytes(4096) + MIB
    cpu_ok, cpu_short = plan(
        need, [Device("h2", None, "CPU", total), Device("h3", None, "CPU", total - 1)], margin=MIB
    )
    assert (cpu_ok.verdict, cpu_ok.gpu, cpu_ok.layers_on_gpu) == (Fit.FITS, None, 0)
    assert cpu_ok.to_dict()["gpu"] == "cpu"
    assert cpu_short.verdict == Fit.NO
    assert "RAM free" in cpu_short.why


def test_a_partial_offload_needs_room_in_host_ram_for_the_rest(need: Need) -> None:
    margin = MIB
    per_layer = LAYER + kv_bytes(4096) // L
    free = margin + OUTPUT + 2 * per_layer
    cpu_share = INPUT + 2 * per_layer  # the token embedding and the two other layers
    ok, no = plan(need, [gpu(free, cpu_share + margin), gpu(free, cpu_share + margin - 1)], margin)
    assert (ok.verdict, ok.layers_on_gpu) == (Fit.PARTIAL, 2)
    assert (no.verdict, no.layers_on_gpu) == (Fit.NO, 0)
    assert "stays in host RAM" in no.why


def test_verdicts_serialise_flat(need: Need) -> None:
    (v,) = plan(need, [gpu(GIB * 80)])
    assert v.to_dict() == {
        "quant": "Q8_0",
        "host": "h1",
        "gpu": 0,
        "device": "Test GPU",
        "free_bytes": 80 * GIB,
        "need_bytes": WEIGHTS + kv_bytes(4096) + GIB,
        "layers_on_gpu": L,
        "layers_total": L,
        "verdict": "fits",
        "why": v.why,
    }


# -- telemetry ----------------------------------------------------------------------------------


def snapshot(
    gpus: list[dict[str, object]] | None, ram: tuple[int, int] | None = None
) -> dict[str, object]:
    snap: dict[str, object] = {"at": 1_700_000_000.0}
    if gpus is not None:
        snap["gpus"] = gpus
    if ram is not None:
        snap["ram_total_bytes"], snap["ram_used_bytes"] = ram
    return snap


def test_free_memory_from_snapshots() -> None:
    latest_snaps = {
        "b": snapshot(
            [
                {
                    "index": 1,
                    "name": "H100",
                    "memory_total_bytes": 80 * GIB,
                    "memory_used_bytes": 30 * GIB,
                },
                {
                    "index": 0,
                    "name": "H100",
                    "memory_total_bytes": 80 * GIB,
                    "memory_used_bytes": None,
                },
            ],
            ram=(64 * GIB, 16 * GIB),
        ),
        "a": snapshot([], ram=(32 * GIB, 8 * GIB)),
        "c": snapshot(None),
        "gone": snapshot([], ram=(1, 0)),
    }
    devices, notes = gpus_from_telemetry(latest_snaps, hosts={"a", "b", "c", "d"})
    assert devices == [
        Device("a", None, "CPU", 24 * GIB, 24 * GIB),
        Device("b", 1, "H100", 50 * GIB, 48 * GIB),
    ]
    assert notes == [
        "d: no telemetry yet",
        "b GPU 0: memory unknown; skipped",
        "c: no GPUs and RAM unknown; skipped",
    ]


@pytest.fixture
def store(profile: Profile) -> Iterator[Store]:
    opened = open_store(profile.db_path)
    yield opened
    opened.close()


def test_free_memory_from_the_stored_telemetry(store: Store, need: Need) -> None:
    gpus = [
        {
            "index": 0,
            "name": "RTX 4090",
            "memory_used_bytes": 20 * GIB,
            "memory_total_bytes": 24 * GIB,
        },
        {"index": 1, "name": "RTX 4090", "memory_used_bytes": GIB, "memory_total_bytes": 24 * GIB},
    ]
    TelemetryRing().record(store, [("gpu-box", snapshot(gpus, ram=(128 * GIB, 8 * GIB)))])
    devices, notes = gpus_from_telemetry(latest(store))
    assert notes == []
    assert [(d.host, d.gpu, d.free) for d in devices] == [
        ("gpu-box", 0, 4 * GIB),
        ("gpu-box", 1, 23 * GIB),
    ]
    # Layers of 10 GiB: none fits in 4 GiB free, two in 23 GiB (− 1 GiB margin − output).
    big = replace(need, layer_bytes=(10 * GIB,) * L, weights_bytes=40 * GIB + INPUT + OUTPUT)
    verdicts = plan(big, devices)
    assert [v.verdict for v in verdicts] == [Fit.NO, Fit.PARTIAL]
    assert [v.layers_on_gpu for v in verdicts] == [0, 2]


# -- many files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    name: str
    size: int
    url: str
    quant: str | None


def test_needs_for_files_reads_headers_and_merges_split_parts(tmp_path: Path) -> None:
    single = write_model(tmp_path / "m-Q8_0.gguf", SPEC)
    split = write_model(tmp_path / "m-F16.gguf", SPEC, split_max_tensors=20)
    assert len(split.paths) == 2
    files = [LocalFile(single.path.name, single.size, str(single.path), "Q8_0")]
    files += [
        LocalFile(p.name, s, str(p), None) for p, s in zip(split.paths, split.sizes, strict=True)
    ]
    asked: list[int] = []

    def read_range(url: str, start: int, length: int) -> bytes:
        asked.append(length)
        with open(url, "rb") as f:
            f.seek(start)
            return f.read(length)

    first, merged = needs_for_files(files, read_range, ctx=512)
    assert first.quant == "Q8_0" and merged.quant == "Q8_0"  # from the header's file type
    assert (first.file, merged.file) == ("m-Q8_0.gguf", "m-F16.gguf")
    assert first.weights_bytes == merged.weights_bytes == WEIGHTS
    assert merged.layer_bytes == (LAYER,) * L
    assert merged.file_size == sum(split.sizes)
    assert merged.bytes_read == sum(min(s, gguf_header.FIRST_READ) for s in split.sizes)
    assert sum(asked) == first.bytes_read + merged.bytes_read
