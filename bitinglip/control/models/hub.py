"""The Hugging Face hub: search, a repo's GGUF files, and a reference pinned to one exact file.

The only importer of huggingface_hub in bitinglip (an import-linter contract checks it), and only
inside the functions that talk to the hub, so nothing else pays for the import. The hub is
`$HF_ENDPOINT` (default https://huggingface.co); the token is `$HF_TOKEN`, read when a request
is made and sent only to that endpoint: it is never stored, logged or put in a message. Without
it, requests go out with no token at all (huggingface_hub's own token file is not consulted).

A reference (`resolve`; parsed by `refs`) is `owner/repo`, `owner/repo:FILE` or
`owner/repo:QUANT`. Its revision (a branch, tag or commit; default `main`) becomes an exact
commit sha in the same request that lists the files, so everything after it (size, LFS sha256,
the download URL) belongs to that one commit and a branch that moves on never changes it.
Errors are one line: `HubError` (the hub refused or cannot be reached), `NotFoundError` (no such
repo, revision or file), `InputError` (a malformed or ambiguous reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from bitinglip.control.models.refs import (
    COMMIT_SHA,
    REPO_ID,
    HubFile,
    RepoSummary,
    check_repo,
    choose,
    endpoint,
    file_url,
    parse_quant,
    split_ref,
    token,
)
from bitinglip.errors import BitinglipError, HubError, InputError, NotFoundError

__all__ = [
    "COMMIT_SHA",
    "REPO_ID",
    "SORTS",
    "TIMEOUT_S",
    "HubFile",
    "RepoSummary",
    "check_repo",
    "choose",
    "endpoint",
    "file_url",
    "list_gguf",
    "parse_quant",
    "read_range",
    "resolve",
    "search",
    "split_ref",
    "token",
]

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoSibling

TIMEOUT_S = 30.0  # connect/read timeout of each request
SORTS: dict[str, Literal["downloads", "likes", "last_modified"]] = {
    "downloads": "downloads",
    "likes": "likes",
    "updated": "last_modified",
}


# -- talking to the hub -----------------------------------------------------------------------


def search(
    query: str,
    *,
    gguf: bool = True,
    sort: str = "downloads",
    limit: int = 20,
) -> list[RepoSummary]:
    """Model repos whose id contains `query`, best first by `sort` (downloads, likes, updated)."""
    if sort not in SORTS:
        raise InputError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit < 1:
        raise InputError(f"limit {limit}: give at least 1")
    _require()
    from huggingface_hub import get_session, hf_raise_for_status

    params: dict[str, Any] = {
        "search": query,
        "sort": SORTS[sort],
        "limit": limit,
        "expand": ["downloads", "likes", "lastModified", "gated", "tags"],
    }
    if gguf:
        params["filter"] = "gguf"
    # One page, one request, a timeout and no retries (list_models pages with a backoff of
    # up to 23 s on a refused connection); the same query huggingface_hub's list_models sends.
    with _hub_errors(what=f"search {query!r}"):
        response = get_session().get(
            f"{endpoint()}/api/models", params=params, headers=_headers(), timeout=TIMEOUT_S
        )
        hf_raise_for_status(response)
        items = response.json()
    if not isinstance(items, list):
        raise HubError(f"the hub at {endpoint()} answered a search with something not a list")
    return [_summary(item) for item in items[:limit] if isinstance(item, dict) and "id" in item]


def list_gguf(repo: str, revision: str = "main") -> tuple[str, list[HubFile]]:
    """(the commit `revision` is now, the GGUF files at that commit sorted by name)."""
    commit, files, _ = _listing(repo, revision)
    return commit, files


def _listing(repo: str, revision: str) -> tuple[str, list[HubFile], bool]:
    """One request: the commit, its GGUF files, and whether the repo is gated."""
    check_repo(repo)
    api = _api()
    with _hub_errors(repo=repo, revision=revision):
        info = api.model_info(repo, revision=revision, files_metadata=True, timeout=TIMEOUT_S)
    commit = info.sha or ""
    if not COMMIT_SHA.fullmatch(commit):
        raise HubError(f"the hub at {endpoint()} gave no commit sha for {repo}@{revision}")
    siblings = [s for s in info.siblings or [] if s.rfilename.lower().endswith(".gguf")]
    files = [_hub_file(repo, commit, s) for s in sorted(siblings, key=lambda s: s.rfilename)]
    return commit, files, bool(info.gated)


def resolve(ref: str, revision: str | None = None) -> HubFile:
    """The one file `ref` names, pinned to the commit `revision` (default main) is now.

    For a gated repo, access to the file is checked (a HEAD request) before returning, so a
    refused token fails here, not halfway through a pull.
    """
    repo, selector = split_ref(ref)
    commit, files, gated = _listing(repo, revision or "main")
    file = choose(repo, commit, files, selector)
    if not file.sha256:
        raise HubError(
            f"{repo}:{file.name} is not stored with LFS, so the hub gives no sha256 to verify a "
            "download against; download it yourself and pass its path"
        )
    if gated:
        _check_access(file)
    return file


def read_range(url: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of the file at `url` (fewer at the end of the file).

    One HTTP Range request; the token goes only to the hub's own endpoint. A server that
    ignores the Range gets its body read only as far as needed.
    """
    if start < 0 or length < 0:
        raise InputError(f"read_range: start {start} and length {length} must not be negative")
    if length == 0:
        return b""
    _require()
    from huggingface_hub import get_session, hf_raise_for_status

    headers = _headers(with_token=url.startswith(endpoint() + "/"))
    headers["Range"] = f"bytes={start}-{start + length - 1}"
    headers["Accept-Encoding"] = "identity"
    repo, revision, name = _file_of(url)
    with (
        _hub_errors(repo=repo, revision=revision, filename=name, what=url),
        get_session().stream("GET", url, headers=headers, timeout=TIMEOUT_S) as response,
    ):
        if response.status_code == 416:
            return b""
        if response.status_code >= 400:
            response.read()  # the error's message is in the body
            hf_raise_for_status(response)
        skip = start if response.status_code == 200 else 0
        return _read_body(response.iter_bytes(), skip, length)


def _read_body(chunks: Iterable[bytes], skip: int, length: int) -> bytes:
    out = bytearray()
    for chunk in chunks:
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        out += chunk[: length - len(out)]
        if len(out) >= length:
            break
    return bytes(out)


def _headers(with_token: bool = True) -> dict[str, str]:
    """huggingface_hub's request headers, with `$HF_TOKEN` only when asked (never its file)."""
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    headers: dict[str, str] = build_hf_headers(token=(token() or False) if with_token else False)
    return headers


def _require() -> None:
    """A one-line error, not an ImportError, when huggingface_hub is not installed."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise HubError(
            "the model manager needs huggingface_hub; run `pip install huggingface_hub`"
        ) from None


def _api() -> HfApi:
    _require()
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token() or False)


def _summary(item: dict[str, Any]) -> RepoSummary:
    """A search hit from one entry of GET /api/models (as huggingface_hub's ModelInfo reads)."""
    updated = item.get("lastModified") or item.get("last_modified")
    return RepoSummary(
        id=str(item["id"]),
        downloads=int(item.get("downloads") or 0),
        likes=int(item.get("likes") or 0),
        updated=str(updated) if updated else None,
        gated=bool(item.get("gated")),
        tags=tuple(str(t) for t in item.get("tags") or ()),
    )


def _hub_file(repo: str, commit: str, sibling: RepoSibling) -> HubFile:
    lfs = sibling.lfs
    size = lfs.size if lfs is not None else sibling.size
    return HubFile(
        repo=repo,
        commit=commit,
        name=sibling.rfilename,
        size=int(size or 0),
        sha256=lfs.sha256 if lfs is not None else "",
        quant=parse_quant(sibling.rfilename),
        url=file_url(repo, commit, sibling.rfilename),
    )


def _check_access(file: HubFile) -> None:
    from huggingface_hub import get_hf_file_metadata

    with _hub_errors(repo=file.repo, revision=file.commit, filename=file.name):
        get_hf_file_metadata(file.url, token=token() or False, timeout=TIMEOUT_S)


def _file_of(url: str) -> tuple[str | None, str | None, str | None]:
    """(repo, revision, file name) of a resolve URL of the hub's endpoint, else Nones."""
    base = endpoint() + "/"
    if not url.startswith(base) or "/resolve/" not in url:
        return None, None, None
    repo, _, rest = url[len(base) :].partition("/resolve/")
    revision, _, name = rest.partition("/")
    return repo, unquote(revision) or None, unquote(name) or None


@contextmanager
def _hub_errors(
    *,
    repo: str | None = None,
    revision: str | None = None,
    filename: str | None = None,
    what: str | None = None,
) -> Iterator[None]:
    """Turns what huggingface_hub and its HTTP client raise into one-line BitingLip errors."""
    try:
        yield
    except BitinglipError:
        raise
    except Exception as exc:
        translated = _translate(exc, _Where(repo, revision, filename, what))
        if translated is None:
            raise
        raise translated from None


@dataclass(frozen=True)
class _Where:
    repo: str | None
    revision: str | None
    filename: str | None
    what: str | None


def _translate(exc: Exception, at: _Where) -> BitinglipError | None:
    from httpx2 import HTTPError, TimeoutException  # huggingface_hub's HTTP client
    from huggingface_hub import errors as hf

    name = at.repo or at.what or "the hub"
    where = endpoint()
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code
        server = _one_line(exc.server_message or "")
        if isinstance(exc, hf.GatedRepoError) or status in (401, 403):
            return _refused(name, status, server)
        if isinstance(exc, hf.RevisionNotFoundError):
            return NotFoundError(
                f"{name} has no revision {at.revision!r} on the hub at {where}; give a branch, "
                "tag or full commit sha"
            )
        if isinstance(exc, hf.RemoteEntryNotFoundError):
            file = at.filename or "that file"
            return NotFoundError(f"{name} has no file {file} at {at.revision or 'main'}")
        if isinstance(exc, hf.RepositoryNotFoundError) or status == 404:
            private = "" if token() else " (or it is private and HF_TOKEN is not set)"
            return NotFoundError(
                f"no repo {name} on the hub at {where}{private}; check the name "
                "(`bitinglip models search` finds repos)"
            )
        detail = f": {server}" if server else ""
        return HubError(f"the hub at {where} answered {status} for {name}{detail}")
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return HubError(f"HF_HUB_OFFLINE is set, so the hub at {where} is not asked; unset it")
    if isinstance(exc, TimeoutException):
        return HubError(f"the hub at {where} did not answer within {TIMEOUT_S:g} s ({name})")
    if isinstance(exc, HTTPError | OSError):
        reason = _one_line(str(exc)) or type(exc).__name__
        return HubError(f"cannot reach the hub at {where}: {reason}")
    return None


def _refused(name: str, status: int, server: str) -> HubError:
    if server == "Invalid credentials in Authorization header":
        return HubError(
            f"the hub at {endpoint()} refused HF_TOKEN ({status}: invalid credentials); "
            "set a valid token or unset HF_TOKEN"
        )
    if token() is None:
        return HubError(
            f"{name} is gated or private: the hub refused access ({status}); accept its terms "
            "on the hub and set HF_TOKEN"
        )
    return HubError(
        f"{name} is gated or private: the hub refused access ({status}) with the HF_TOKEN "
        "given; accept its terms on the hub with that account, or use a token that may read it"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def download_bare(file: HubFile, folder: str) -> str:
    """`hf_hub_download` of the file at its commit into `folder`, nothing else (no hash check):
    the baseline of `bitinglip bench pull`."""
    _require()
    from huggingface_hub import hf_hub_download

    with _hub_errors(repo=file.repo, revision=file.commit, filename=file.name, what=file.url):
        return str(
            hf_hub_download(
                file.repo,
                file.name,
                revision=file.commit,
                local_dir=folder,
                endpoint=endpoint(),
                token=token() or False,
            )
        )
