"""Where the agent may send the HF token: only to the hub the control plane named, and only over
https (plain http only when that hub is on this machine's loopback, as a local mirror is).

A pull names its file by URL and, in `hub`, the hub the control plane talks to (`$HF_ENDPOINT`
there, https://huggingface.co by default). The token goes with a request when the URL has the
hub's scheme, host and port and that scheme is https, or http to a loopback host (127.0.0.0/8,
::1, localhost): a token on plain http to any other host could be read off the wire. Redirects
keep it only when their target passes the same test, so the hub's CDN never sees it. Standard
library only.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request
from typing import Any

_DEFAULT_PORTS = {"https": 443, "http": 80}


def sends_token(url: str, hub: str | None) -> bool:
    """True when a request to `url` may carry the token for `hub` (None: no hub named, never)."""
    if not hub:
        return False
    here, there = _origin(url), _origin(hub)
    if here is None or here != there:
        return False
    scheme, host, _ = here
    return scheme == "https" or (scheme == "http" and is_loopback(host))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, or None for anything else or a malformed one."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


class TokenRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, sending the token on only where `sends_token` allows it: the hub
    serves file bodies from a CDN whose signed URLs need (and must not see) no other credential."""

    def __init__(self, hub: str | None) -> None:
        super().__init__()
        self.hub = hub

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and sends_token(newurl, self.hub):
            new.add_unredirected_header("Authorization", auth)
        return new
