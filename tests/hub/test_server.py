"""The fake hub against the real huggingface_hub client (and plain urllib for raw HTTP)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bitinglip_agent.gguf_check import check_gguf

from tests.hub.gguf_files import tiny_gguf
from tests.hub.repos import git_blob_oid
from tests.hub.server import Hub

hf = pytest.importorskip("huggingface_hub")
errors = pytest.importorskip("huggingface_hub.errors")

REPO = "org/tiny-GGUF"
MODEL = "tiny.Q8_0.gguf"
README = b"# tiny\n"


@pytest.fixture
def model() -> bytes:
    return tiny_gguf(n_layers=3)


@pytest.fixture
def sha(hub: Hub, model: bytes) -> str:
    return hub.add_repo(REPO, {MODEL: model, "README.md": README}, downloads=7, likes=3)


def resolve_url(hub: Hub, filename: str = MODEL, revision: str = "main", repo: str = REPO) -> str:
    return f"{hub.url}/{repo}/resolve/{revision}/{filename}"


def fetch(url: str, *, timeout: float = 5, **headers: str) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.headers, response.read()


def sparse_file(path: Path, size: int) -> Path:
    """`size` bytes on disk that cost no time to write: a magic, zeros and a tail marker."""
    with path.open("wb") as f:
        f.truncate(size)
        f.write(b"GGUF")
        f.seek(size - 4)
        f.write(b"tail")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the API the client reads --


def test_list_models_searches_filters_sorts_and_limits(hub: Hub, model: bytes) -> None:
    hub.add_repo("org/tiny-a-GGUF", {MODEL: model}, downloads=5, likes=9)
    hub.add_repo("org/tiny-b-GGUF", {MODEL: model}, downloads=50, likes=1)
    hub.add_repo("org/tiny-c-GGUF", {MODEL: model}, downloads=20, likes=4)
    hub.add_repo("org/tiny-safetensors", {"model.safetensors": b"x"}, downloads=99, tags=["x"])
    hub.add_repo("org/tiny-private-GGUF", {MODEL: model}, downloads=999, private=True)
    hub.add_repo("org/other-GGUF", {MODEL: model}, downloads=500)
    api = hf.HfApi(endpoint=hub.url)

    found = list(api.list_models(search="tiny", filter="gguf", sort="downloads", limit=5))
    assert [m.id for m in found] == ["org/tiny-b-GGUF", "org/tiny-c-GGUF", "org/tiny-a-GGUF"]
    first = found[0]
    assert (first.downloads, first.likes, first.author, first.private) == (50, 1, "org", False)
    assert first.sha is not None and len(first.sha) == 40
    assert first.last_modified is not None and first.created_at is not None
    assert first.gated is False and "gguf" in (first.tags or [])
    by_likes = api.list_models(search="tiny", filter="gguf", sort="likes", limit=1)
    assert [m.id for m in by_likes] == ["org/tiny-a-GGUF"]
    query = hub.requests[-1].path
    assert "search=tiny" in query and "sort=likes" in query and "limit=1" in query


def test_model_info_lists_files_with_sizes_and_lfs_hashes(hub: Hub, sha: str, model: bytes) -> None:
    info = hf.HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)

    assert (info.id, info.sha, info.gated, info.private) == (REPO, sha, False, False)
    assert (info.downloads, info.likes, info.library_name) == (7, 3, "gguf")
    siblings = {s.rfilename: s for s in info.siblings or []}
    gguf_file, readme = siblings[MODEL], siblings["README.md"]
    assert gguf_file.size == len(model)
    assert gguf_file.lfs is not None and gguf_file.lfs.sha256 == hashlib.sha256(model).hexdigest()
    assert gguf_file.lfs.size == len(model)
    assert readme.size == len(README) and readme.lfs is None
    assert readme.blob_id == git_blob_oid(iter([README]), len(README))
    plain = hf.HfApi(endpoint=hub.url).model_info(REPO)
    assert {s.size for s in plain.siblings or []} == {None}  # sizes only with files_metadata


def test_list_repo_files_and_tree(hub: Hub, model: bytes) -> None:
    hub.add_repo(REPO, {MODEL: model, "quants/q4/a.gguf": model, "quants/b.gguf": model})
    api = hf.HfApi(endpoint=hub.url)

    assert api.list_repo_files(REPO) == ["quants/b.gguf", "quants/q4/a.gguf", MODEL]
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    assert top == {"quants": "RepoFolder", MODEL: "RepoFile"}
    nested = [e.path for e in api.list_repo_tree(REPO, "quants", recursive=True)]
    assert nested == ["quants/b.gguf", "quants/q4", "quants/q4/a.gguf"]
    entry = next(iter(api.list_repo_tree(REPO, "quants/q4")))
    assert isinstance(entry, hf.hf_api.RepoFile)
    assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(model).hexdigest()
    with pytest.raises(errors.RemoteEntryNotFoundError):
        list(api.list_repo_tree(REPO, "nothing-here"))


def test_file_metadata_gives_commit_etag_and_size(hub: Hub, sha: str, model: bytes) -> None:
    meta = hf.get_hf_file_metadata(hf.hf_hub_url(REPO, MODEL, endpoint=hub.url))
    assert (meta.commit_hash, meta.size) == (sha, len(model))
    assert meta.etag == hashlib.sha256(model).hexdigest()  # LFS: the etag is the sha256

    small = hf.get_hf_file_metadata(hf.hf_hub_url(REPO, "README.md", endpoint=hub.url))
    assert small.etag == git_blob_oid(iter([README]), len(README))  # git: the blob sha1
    assert small.size == len(README)


def test_download_by_commit_is_byte_identical(
    hub: Hub, sha: str, model: bytes, tmp_path: Path
) -> None:
    path = hf.hf_hub_download(REPO, MODEL, revision=sha, local_dir=tmp_path, endpoint=hub.url)
    assert Path(path).read_bytes() == model
    cached = hf.hf_hub_download(REPO, "README.md")  # no endpoint: the fixture's HF_* settings
    assert Path(cached).read_bytes() == README
    assert Path(cached).is_relative_to(Path(os.environ["HF_HUB_CACHE"]))
    assert hub.bytes_sent[f"{REPO}/{MODEL}"] == len(model)


def test_ranges_return_the_exact_slice(hub: Hub, sha: str, model: bytes) -> None:
    url, size = resolve_url(hub, revision=sha), len(model)
    cases = {"bytes=10-19": (10, 20), "bytes=1000-": (1000, size), "bytes=-16": (size - 16, size)}
    for header, (start, stop) in cases.items():
        status, headers, body = fetch(url, Range=header)
        assert status == 206 and body == model[start:stop]
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert headers["Content-Length"] == str(stop - start)
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(url, Range=f"bytes={size}-")
    assert raised.value.code == 416
    assert hub.ranges(REPO, MODEL) == [*cases, f"bytes={size}-"]


def test_keep_alive_serves_several_requests_on_one_connection(
    hub: Hub, sha: str, model: bytes
) -> None:
    host, port = hub.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", f"/{REPO}/resolve/{sha}/{MODEL}")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == model
            assert response.headers["Accept-Ranges"] == "bytes"
        conn.request("HEAD", f"/{REPO}/resolve/main/{MODEL}")
        head = conn.getresponse()
        assert head.read() == b"" and head.headers["X-Linked-Size"] == str(len(model))
        assert head.headers["X-Repo-Commit"] == sha
    finally:
        conn.close()


def test_a_commit_moves_main_and_the_old_commit_still_serves(
    hub: Hub, sha: str, model: bytes, tmp_path: Path
) -> None:
    newer = tiny_gguf(n_layers=3, seed=1)
    assert newer != model
    second = hub.commit(REPO, {MODEL: newer})
    api = hf.HfApi(endpoint=hub.url)

    assert second != sha and len(second) == 40
    assert api.model_info(REPO, revision="main").sha == second
    assert api.model_info(REPO, revision=sha).sha == sha
    old = hf.hf_hub_download(REPO, MODEL, revision=sha, local_dir=tmp_path / "old")
    new = hf.hf_hub_download(REPO, MODEL, revision="main", local_dir=tmp_path / "new")
    assert Path(old).read_bytes() == model and Path(new).read_bytes() == newer
    assert [b.target_commit for b in api.list_repo_refs(REPO).branches] == [second]


def test_snapshots_paths_info_and_the_file_system_work_too(
    hub: Hub, sha: str, model: bytes, tmp_path: Path
) -> None:
    api = hf.HfApi(endpoint=hub.url)
    folder = hf.snapshot_download(REPO, allow_patterns=["*.gguf"], local_dir=tmp_path)
    assert (Path(folder) / MODEL).read_bytes() == model
    assert not (Path(folder) / "README.md").exists()
    info = api.get_paths_info(REPO, [MODEL, "missing.txt"], revision=sha)
    assert [(entry.path, entry.size) for entry in info] == [(MODEL, len(model))]
    assert api.file_exists(REPO, "README.md") and not api.file_exists(REPO, "missing.txt")
    assert api.repo_exists(REPO) and not api.repo_exists("org/missing")
    with hf.HfFileSystem(endpoint=hub.url).open(f"{REPO}/{MODEL}", "rb") as f:
        f.seek(4)
        assert f.read(4) == model[4:8]
    assert hub.ranges(REPO, MODEL)[-1] == f"bytes=4-{len(model) - 1}"


def test_unknown_repo_revision_and_file_raise_the_clients_errors(hub: Hub, sha: str) -> None:
    api = hf.HfApi(endpoint=hub.url)
    with pytest.raises(errors.RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(errors.RevisionNotFoundError):
        api.model_info(REPO, revision="f" * 40)
    with pytest.raises(errors.RevisionNotFoundError):
        hf.hf_hub_download(REPO, MODEL, revision="no-such-branch")
    with pytest.raises(errors.RemoteEntryNotFoundError):
        hf.hf_hub_download(REPO, "missing.gguf")
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(resolve_url(hub, "missing.gguf"))
    assert raised.value.headers["X-Error-Code"] == "EntryNotFound"
    assert raised.value.headers["X-Repo-Commit"] == sha


def test_gated_repo_needs_the_token_to_download(hub: Hub, model: bytes, tmp_path: Path) -> None:
    hub.add_repo("org/gated", {MODEL: model}, gated=True)
    api = hf.HfApi(endpoint=hub.url)

    assert api.model_info("org/gated").gated == "auto"  # the card is public, the files are not
    with pytest.raises(errors.GatedRepoError):
        hf.hf_hub_download("org/gated", MODEL, local_dir=tmp_path)
    path = hf.hf_hub_download("org/gated", MODEL, local_dir=tmp_path, token=hub.token)
    assert Path(path).read_bytes() == model
    assert hub.requests[-1].headers["authorization"] == f"Bearer {hub.token}"
    with pytest.raises(errors.HfHubHTTPError) as raised:
        api.model_info("org/gated", token="hf_wrong")
    assert raised.value.response.status_code == 401


def test_private_repo_is_invisible_without_the_token(hub: Hub, model: bytes) -> None:
    hub.add_repo("org/private", {MODEL: model}, private=True)
    api = hf.HfApi(endpoint=hub.url)

    with pytest.raises(errors.RepositoryNotFoundError):
        api.model_info("org/private")
    assert [m.id for m in api.list_models()] == []
    assert api.model_info("org/private", token=hub.token).private is True
    assert [m.id for m in api.list_models(token=hub.token)] == ["org/private"]
    assert api.whoami(token=hub.token)["name"] == hub.user
    with pytest.raises(errors.HfHubHTTPError):
        api.whoami(token="hf_wrong")


# -- faults --


def test_truncate_sends_fewer_bytes_then_closes(hub: Hub, sha: str) -> None:
    hub.fault(REPO, MODEL, "truncate", after_bytes=100)
    with pytest.raises(http.client.IncompleteRead) as raised:
        fetch(resolve_url(hub))
    assert len(raised.value.partial) == 100
    assert hub.bytes_sent[f"{REPO}/{MODEL}"] == 100


def test_flip_changes_exactly_one_bit(hub: Hub, sha: str, model: bytes) -> None:
    hub.fault(REPO, MODEL, "flip", at=500)
    _, headers, body = fetch(resolve_url(hub))
    assert len(body) == len(model) == int(headers["Content-Length"])
    diffs = [i for i, (a, b) in enumerate(zip(body, model, strict=True)) if a != b]
    assert diffs == [500] and bin(body[500] ^ model[500]).count("1") == 1


def test_wrong_length_announces_more_than_it_sends(hub: Hub, sha: str, model: bytes) -> None:
    hub.fault(REPO, MODEL, "wrong_length", extra=10)
    with pytest.raises(http.client.IncompleteRead) as raised:
        fetch(resolve_url(hub))
    assert raised.value.partial == model and raised.value.expected == 10


def test_stall_makes_a_client_with_a_timeout_give_up(hub: Hub, sha: str) -> None:
    hub.fault(REPO, MODEL, "stall", after_bytes=64, seconds=30)  # ended by the hub's stop()
    with pytest.raises(TimeoutError):
        fetch(resolve_url(hub), timeout=1)
    assert hub.bytes_sent[f"{REPO}/{MODEL}"] == 64


def test_a_short_stall_ends_and_the_body_completes(hub: Hub, sha: str, model: bytes) -> None:
    hub.fault(REPO, MODEL, "stall", after_bytes=64, seconds=0.2)
    assert fetch(resolve_url(hub))[2] == model


def test_reset_aborts_the_connection(hub: Hub, sha: str) -> None:
    hub.fault(REPO, MODEL, "reset", after_bytes=64)
    with pytest.raises(ConnectionResetError):
        fetch(resolve_url(hub))


@pytest.mark.parametrize("status", ["401", "403"])
def test_status_faults_answer_head_and_get(hub: Hub, sha: str, status: str) -> None:
    hub.fault(REPO, MODEL, status)
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(resolve_url(hub))
    assert raised.value.code == int(status)
    with pytest.raises(errors.HfHubHTTPError) as from_client:
        hf.get_hf_file_metadata(hf.hf_hub_url(REPO, MODEL))  # a HEAD
    assert from_client.value.response.status_code == int(status)


def test_times_faults_only_the_first_requests(hub: Hub, sha: str, model: bytes) -> None:
    hub.fault(REPO, MODEL, "403", times=1)
    with pytest.raises(urllib.error.HTTPError):
        fetch(resolve_url(hub))
    assert fetch(resolve_url(hub))[2] == model
    hub.fault(REPO, MODEL, "flip", times=1)
    assert fetch(resolve_url(hub))[2] != model
    assert fetch(resolve_url(hub))[2] == model


def test_body_faults_leave_head_alone(hub: Hub, sha: str, model: bytes) -> None:
    hub.fault(REPO, MODEL, "truncate", times=1)
    assert hf.get_hf_file_metadata(hf.hf_hub_url(REPO, MODEL)).size == len(model)
    with pytest.raises(http.client.IncompleteRead):
        fetch(resolve_url(hub))  # the one faulted request is still the GET


def test_the_client_resumes_a_truncated_download_with_a_range(hub: Hub, tmp_path: Path) -> None:
    # huggingface_hub writes in 10 MiB pieces (constants.DOWNLOAD_CHUNK_SIZE) and resumes from
    # what it wrote: a cut at 11 MiB resumes at 10 MiB; a cut below 10 MiB restarts from 0.
    content = sparse_file(tmp_path / "twelve.gguf", 12 << 20)
    sha = hub.add_repo(REPO, {"twelve.gguf": content})
    hub.fault(REPO, "twelve.gguf", "truncate", after_bytes=11 << 20, times=1)
    path = hf.hf_hub_download(REPO, "twelve.gguf", revision=sha, local_dir=tmp_path / "out")
    assert file_sha256(Path(path)) == file_sha256(content)
    assert hub.ranges(REPO, "twelve.gguf") == [None, f"bytes={10 << 20}-"]
    assert hub.bytes_sent[f"{REPO}/twelve.gguf"] == (11 << 20) + (2 << 20)


# -- big files, helpers, isolation --


def test_a_big_file_on_disk_is_streamed_not_loaded(hub: Hub, tmp_path: Path) -> None:
    size = 50 << 20
    big = sparse_file(tmp_path / "big.gguf", size)
    hub.add_repo("org/big", {"big.gguf": big})
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        with urllib.request.urlopen(resolve_url(hub, "big.gguf", repo="org/big")) as response:
            etag = response.headers["ETag"].strip('"')
            while chunk := response.read(1 << 20):
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert etag == digest.hexdigest()  # served and hashed without holding the file
    assert peak < 10 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert hub.bytes_sent["org/big/big.gguf"] == size


def test_tiny_gguf_is_a_valid_llama_gguf(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    data = tiny_gguf(path, n_layers=4, context_length=512)
    summary = check_gguf(str(path))
    assert (summary.architecture, summary.block_count, summary.context_length) == ("llama", 4, 512)
    assert summary.file_size == len(data)
    assert tiny_gguf(seed=1) != tiny_gguf(seed=2)


def test_the_fixture_points_the_client_at_the_hub(hub: Hub, tmp_path: Path) -> None:
    from huggingface_hub import constants

    assert os.environ["HF_ENDPOINT"] == constants.ENDPOINT == hub.url
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False
    assert Path(constants.HF_HUB_CACHE).is_relative_to(Path(os.environ["HF_HOME"]))
    assert not Path(os.environ["HF_HOME"]).is_relative_to(Path.home() / ".cache")
    assert hf.hf_hub_url(REPO, MODEL).startswith(hub.url)
    assert list(hf.HfApi().list_models()) == []
    assert hub.requests[-1].path == "/api/models"
