"""A pull's hub side: one ranged GET of the file, and what the hub's refusals and faults mean.

`open_range` asks for the bytes from an offset (`Range`), with the token as a Bearer header only
when the caller says it may go there (hub_token.py decides); an HTTP refusal comes back as the
`HTTPError` for `refusal` to map to a protocol code (401/403 unauthorized, 404 not_found, 408,
416, 429 and 5xx transient), a network fault as `Transient` with `why` as its reason. Standard
library only (urllib, http.client).
"""

from __future__ import annotations

import http.client
import re
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from bitinglip_agent import __version__
from bitinglip_agent.pull_errors import PullFailed, Transient

if TYPE_CHECKING:
    from bitinglip_agent.downloads import PullSpec


def open_range(
    opener: urllib.request.OpenerDirector, spec: PullSpec, offset: int, bearer: str | None
) -> http.client.HTTPResponse:
    """The response for `spec.url` from byte `offset`; an HTTP refusal raises its HTTPError."""
    request = urllib.request.Request(spec.url)
    request.add_header("User-Agent", f"bitinglip-agent/{__version__}")
    request.add_header("Accept-Encoding", "identity")
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    if bearer is not None:
        request.add_unredirected_header("Authorization", f"Bearer {bearer}")
    try:
        resp = opener.open(request, timeout=spec.timeout_s)
    except urllib.error.HTTPError:
        raise  # a refusal: the caller maps it with `refusal`
    except (OSError, http.client.HTTPException) as exc:
        raise Transient(why(exc)) from None
    assert isinstance(resp, http.client.HTTPResponse)
    return resp


def refusal(
    spec: PullSpec, status: int, reason: str, *, token_sent: bool, token_given: bool
) -> Exception:
    """What an HTTP error status means for the pull: `PullFailed` with its code, or `Transient`."""
    if status in (401, 403):
        if token_sent:
            fix = "the HF_TOKEN given has no access to it (accept its terms on the hub?)"
        elif token_given:
            fix = f"HF_TOKEN goes only over https to the hub ({spec.hub or 'none named'})"
        else:
            fix = "set HF_TOKEN to a token with access to it"
        return PullFailed(
            "unauthorized",
            f"the hub refused access to {spec.repo or spec.url} (gated or private,"
            f" HTTP {status}): {fix}",
        )
    if status == 404:
        where = f" at {spec.commit[:12]}" if spec.commit else ""
        return PullFailed("not_found", f"{spec.label}{where} is not on the hub (HTTP 404)")
    if status in (408, 416, 429) or status >= 500:
        return Transient(f"HTTP {status} {reason}")
    return PullFailed("download_failed", f"{spec.label}: HTTP {status} {reason}")


def range_start(resp: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 body, from `Content-Range: bytes START-END/TOTAL`."""
    match = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def socket_of(resp: http.client.HTTPResponse) -> socket.socket | None:
    """The socket under a response (SocketIO keeps it as `_sock`; None if that changes)."""
    sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def why(exc: BaseException) -> str:
    """A one-line reason for a network fault (URLError wraps the socket's own)."""
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    if isinstance(inner, TimeoutError) or "timed out" in str(inner):
        return "stalled: no data within the read timeout"
    if isinstance(inner, http.client.IncompleteRead):
        return f"short body ({len(inner.partial)} bytes, {inner.expected} more expected)"
    text = str(inner) or type(inner).__name__
    return f"{type(inner).__name__}: {text}" if type(inner).__name__ not in text else text
