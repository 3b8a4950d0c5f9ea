"""`control.models.hub` against the fake hub: refs pinned to commits, errors in one line."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitinglip.control.models import hub as hf
from bitinglip.control.models import registry
from bitinglip.control.store.db import open_store
from bitinglip.errors import HubError, InputError, NotFoundError
from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub

REPO = "org/tiny-GGUF"
Q4 = tiny_gguf(seed=1, name="q4")
Q8 = tiny_gguf(seed=2, name="q8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def commit(hub: Hub) -> str:
    return hub.add_repo(
        REPO,
        {"tiny-Q4_K_M.gguf": Q4, "tiny-Q8_0.gguf": Q8, "README.md": b"# tiny", "x.bin": b"0" * 99},
    )


def test_resolve_by_file_name_pins_commit_size_sha256_and_url(hub: Hub, commit: str) -> None:
    file = hf.resolve(f"{REPO}:tiny-Q8_0.gguf")
    assert (file.repo, file.commit, file.name) == (REPO, commit, "tiny-Q8_0.gguf")
    assert (file.size, file.sha256, file.quant) == (len(Q8), sha256(Q8), "Q8_0")
    assert file.url == f"{hub.url}/{REPO}/resolve/{commit}/tiny-Q8_0.gguf"


@pytest.mark.parametrize("selector", ["Q4_K_M", "q4_k_m", "Q4_k_M"])
def test_resolve_by_quant_in_any_case(hub: Hub, commit: str, selector: str) -> None:
    file = hf.resolve(f"{REPO}:{selector}")
    assert (file.name, file.sha256, file.commit) == ("tiny-Q4_K_M.gguf", sha256(Q4), commit)


def test_a_repo_with_one_gguf_file_needs_no_selector(hub: Hub) -> None:
    hub.add_repo("org/one", {"model-F16.gguf": Q4, "README.md": b"hi"})
    assert hf.resolve("org/one").name == "model-F16.gguf"
    assert hf.resolve("hf:org/one").name == "model-F16.gguf"


def test_several_files_without_a_selector_name_the_choices(hub: Hub, commit: str) -> None:
    with pytest.raises(InputError) as caught:
        hf.resolve(REPO)
    message = str(caught.value)
    assert f"{REPO}@{commit[:12]} has 2 GGUF files" in message
    assert f"{REPO}:Q4_K_M" in message and f"{REPO}:Q8_0" in message
    assert "\n" not in message


def test_two_files_of_one_quant_are_ambiguous(hub: Hub) -> None:
    hub.add_repo("org/two", {"a/m-Q4_K_M.gguf": Q4, "b/m-Q4_K_M.gguf": Q8})
    with pytest.raises(InputError, match=r"has 2 Q4_K_M files; name one: org/two:a/m-Q4_K_M\.gguf"):
        hf.resolve("org/two:q4_k_m")
    assert hf.resolve("org/two:b/m-Q4_K_M.gguf").sha256 == sha256(Q8)


def test_missing_quant_file_repo_revision_and_ggufs(hub: Hub, commit: str) -> None:
    with pytest.raises(InputError, match=r"has no Q5_K_M file; pick one: .*:Q4_K_M"):
        hf.resolve(f"{REPO}:Q5_K_M")
    with pytest.raises(NotFoundError, match=r"has no file nope\.gguf; its GGUF files: tiny-Q4"):
        hf.resolve(f"{REPO}:nope.gguf")
    with pytest.raises(NotFoundError, match="no repo org/absent on the hub at http://127"):
        hf.resolve("org/absent:Q4_K_M")
    with pytest.raises(NotFoundError, match="has no revision 'v9'"):
        hf.resolve(REPO, revision="v9")
    hub.add_repo("org/none", {"model.safetensors": b"x" * 20_000})
    with pytest.raises(NotFoundError, match=r"has no \.gguf files"):
        hf.resolve("org/none")


@pytest.mark.parametrize("ref", ["noslash", "a/b/c", "../etc", "org/m:", "", "org/ m"])
def test_malformed_refs_are_input_errors(hub: Hub, ref: str) -> None:
    with pytest.raises(InputError, match=r"not a hub reference|nothing after ':'"):
        hf.resolve(ref)
    assert hub.requests == []  # refused before any request


def test_gated_repo_is_refused_without_a_token_and_read_with_it(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = hub.add_repo("org/gated", {"g-Q8_0.gguf": Q8}, gated=True)
    with pytest.raises(HubError) as caught:
        hf.resolve("org/gated")
    assert str(caught.value) == (
        "org/gated is gated or private: the hub refused access (401); accept its terms on the "
        "hub and set HF_TOKEN"
    )
    url = f"{hub.url}/org/gated/resolve/{sha}/g-Q8_0.gguf"
    with pytest.raises(HubError, match=r"gated or private: the hub refused access \(401\)"):
        hf.read_range(url, 0, 4)

    monkeypatch.setenv("HF_TOKEN", hub.token or "")
    file = hf.resolve("org/gated")
    assert (file.commit, file.sha256) == (sha, sha256(Q8))
    assert hf.read_range(file.url, 0, 8) == Q8[:8]
    assert hub.requests[-1].headers["authorization"] == f"Bearer {hub.token}"


def test_a_refused_token_never_appears_in_the_message(
    hub: Hub, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_do_not_print")
    with pytest.raises(HubError) as caught:
        hf.resolve(REPO)
    assert "refused HF_TOKEN (401: invalid credentials)" in str(caught.value)
    assert "hf_secret" not in str(caught.value)


def test_a_private_repo_needs_the_token(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("org/private", {"p-Q8_0.gguf": Q8}, private=True)
    with pytest.raises(NotFoundError, match="or it is private and HF_TOKEN is not set"):
        hf.resolve("org/private")
    monkeypatch.setenv("HF_TOKEN", hub.token or "")
    assert hf.resolve("org/private").sha256 == sha256(Q8)


def test_branch_moved_an_explicit_commit_keeps_the_old_file(hub: Hub, commit: str) -> None:
    newer = tiny_gguf(seed=3, name="q8 v2")
    moved = hub.commit(REPO, {"tiny-Q8_0.gguf": newer})
    now = hf.resolve(f"{REPO}:Q8_0")
    assert (now.commit, now.sha256) == (moved, sha256(newer))
    old = hf.resolve(f"{REPO}:Q8_0", revision=commit)
    assert (old.commit, old.sha256, old.size) == (commit, sha256(Q8), len(Q8))
    assert hf.read_range(old.url, 0, len(Q8)) == Q8


def test_a_registered_model_keeps_its_commit_after_the_branch_moves(
    hub: Hub, commit: str, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "state.db")
    first = registry.register(store, hf.resolve(f"{REPO}:Q8_0"))
    before = registry.get(store, first)
    moved = hub.commit(REPO, {"tiny-Q8_0.gguf": tiny_gguf(seed=4)})
    second = registry.register(store, hf.resolve(f"{REPO}:Q8_0"))
    assert second != first
    assert registry.get(store, first) == before
    assert before is not None and before["commit"] == commit
    assert [m["commit"] for m in registry.rows(store)] == [commit, moved]
    assert registry.register(store, hf.resolve(f"{REPO}:Q8_0", revision=commit)) == first


def test_a_revision_may_be_a_branch(hub: Hub, commit: str) -> None:
    dev = hub.commit(REPO, {"tiny-Q8_0.gguf": Q4}, branch="dev")
    assert hf.resolve(f"{REPO}:Q8_0", revision="dev").commit == dev
    assert hf.resolve(f"{REPO}:Q8_0").commit == commit


def test_search_sorts_filters_and_limits(hub: Hub) -> None:
    hub.add_repo("a/popular-GGUF", {"m.gguf": Q4}, downloads=900, likes=1)
    hub.add_repo("b/liked-GGUF", {"m.gguf": Q4}, downloads=10, likes=500)
    hub.add_repo("c/fresh-GGUF", {"m.gguf": Q4}, downloads=50, likes=5)
    hub.add_repo("d/torch", {"m.bin": b"x"}, downloads=5000, tags=("pytorch",))
    assert [r.id for r in hf.search("")] == ["a/popular-GGUF", "c/fresh-GGUF", "b/liked-GGUF"]
    assert [r.id for r in hf.search("", sort="likes", limit=2)] == [
        "b/liked-GGUF",
        "c/fresh-GGUF",
    ]
    assert [r.id for r in hf.search("gguf", sort="updated")] == [
        "c/fresh-GGUF",
        "b/liked-GGUF",
        "a/popular-GGUF",
    ]
    assert [r.id for r in hf.search("", gguf=False, limit=1)] == ["d/torch"]
    hit = hf.search("liked")[0]
    assert (hit.downloads, hit.likes, hit.gated, hit.tags) == (10, 500, False, ("gguf",))
    assert hit.updated is not None and hit.updated.startswith("2025-01-01T")
    with pytest.raises(InputError, match="sort 'stars'"):
        hf.search("", sort="stars")


def test_list_gguf_sizes_and_sha256_are_the_served_files(hub: Hub) -> None:
    files = {"z-Q8_0.gguf": Q8, "sub dir/m Q4_K_M.gguf": Q4, "a-BF16.gguf": tiny_gguf(seed=9)}
    sha = hub.add_repo("org/listed", {**files, "notes.txt": b"n"})
    commit, listed = hf.list_gguf("org/listed")
    assert commit == sha
    assert [f.name for f in listed] == sorted(files)
    assert [f.quant for f in listed] == ["BF16", "Q4_K_M", "Q8_0"]
    for f in listed:
        served = hf.read_range(f.url, 0, f.size + 100)
        assert (len(served), sha256(served)) == (f.size, f.sha256)
        assert served == files[f.name]
    assert "/sub%20dir/m%20Q4_K_M.gguf" in listed[1].url


def test_read_range_returns_exactly_the_bytes_asked_for(hub: Hub, commit: str) -> None:
    file = hf.resolve(f"{REPO}:Q8_0")
    assert hf.read_range(file.url, 10, 20) == Q8[10:30]
    assert hf.read_range(file.url, len(Q8) - 5, 100) == Q8[-5:]
    assert hf.read_range(file.url, len(Q8) + 10, 4) == b""
    assert hf.read_range(file.url, 0, 0) == b""
    assert hub.ranges(REPO, "tiny-Q8_0.gguf")[:2] == ["bytes=10-29", f"bytes={len(Q8) - 5}-"
                                                      f"{len(Q8) + 94}"]  # fmt: skip
    assert hub.bytes_sent[f"{REPO}/tiny-Q8_0.gguf"] == 20 + 5


def test_read_range_never_sends_the_token_to_another_server(
    hub: Hub, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.token or "")
    with Hub(token=None) as other:
        other.token = None
        sha = other.add_repo(REPO, {"tiny-Q8_0.gguf": Q8})
        assert hf.read_range(f"{other.url}/{REPO}/resolve/{sha}/tiny-Q8_0.gguf", 0, 4) == Q8[:4]
        assert "authorization" not in other.requests[-1].headers


def test_a_hub_error_status_is_one_line(hub: Hub, commit: str) -> None:
    file = hf.resolve(f"{REPO}:Q8_0")
    hub.fault(REPO, "tiny-Q8_0.gguf", "503", message="Service Unavailable")
    with pytest.raises(
        HubError, match=f"the hub at {hub.url} answered 503 for {REPO}: Service Unavailable$"
    ):
        hf.read_range(file.url, 0, 4)


def test_a_stalled_transfer_times_out_instead_of_hanging(
    hub: Hub, commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = hf.resolve(f"{REPO}:Q8_0")
    monkeypatch.setattr(hf, "TIMEOUT_S", 0.3)
    hub.fault(REPO, "tiny-Q8_0.gguf", "stall", after_bytes=4, seconds=20)
    started = time.monotonic()
    with pytest.raises(HubError, match=r"did not answer within 0\.3 s"):
        hf.read_range(file.url, 0, 64)
    assert time.monotonic() - started < 5


def test_a_file_gone_from_its_commit_is_not_found(hub: Hub, commit: str) -> None:
    url = hf.file_url(REPO, commit, "gone-Q2_K.gguf")
    with pytest.raises(NotFoundError, match=f"{REPO} has no file gone-Q2_K.gguf at {commit}"):
        hf.read_range(url, 0, 4)


def test_an_unreachable_hub_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/")
    for call in (lambda: hf.search("x"), lambda: hf.resolve("org/m")):
        with pytest.raises(HubError) as caught:
            call()
        assert str(caught.value).startswith(f"cannot reach the hub at http://127.0.0.1:{port}: ")
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("gemma-3-270m-it-IQ2_XS.gguf", "IQ2_XS"),
        ("model.q8_0.gguf", "Q8_0"),
        ("ggml-model-f16.gguf", "F16"),
        ("Llama-3.2-1B-Instruct-BF16.gguf", "BF16"),
        ("UD-Q4_K_XL/model-UD-Q4_K_XL-00001-of-00002.gguf", "Q4_K_XL"),
        ("mistral_7b_iq4_nl.gguf", "IQ4_NL"),
        ("phi-Q4_0_4_8.gguf", "Q4_0_4_8"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("Q8_0/model-Q6_K.gguf", "Q6_K"),
        ("mmproj-model.gguf", None),
        ("model-Q4.gguf", None),
    ],
)
def test_parse_quant(name: str, quant: str | None) -> None:
    assert hf.parse_quant(name) == quant


def test_the_cli_and_the_control_plane_do_not_load_huggingface_hub() -> None:
    code = (
        "import sys, bitinglip.cli, bitinglip.control.plane, bitinglip.control.models.registry;"
        "print('huggingface_hub' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
