"""What every request must show before its body is read: a Host this gateway answers to, and
JSON for a POST.

With no API key configured the gateway trusts whoever reaches it, so it must be sure that is a
program on this machine and not a web page the operator's browser opened: a page of another
site can point its own name at 127.0.0.1 (DNS rebinding) or POST a `text/plain` form to
localhost (no CORS preflight for that). So without keys only a loopback Host is accepted
(`localhost`, `127.0.0.1`, `[::1]`, any loopback address, or the bound address; any port), else
421; and a POST must be `application/json` everywhere (OpenAI clients send it), else 415.
"""

from __future__ import annotations

import ipaddress

from bitinglip.gateway.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str | None) -> str:
    """The name of a Host header, without its port and brackets, lower case ('' if none)."""
    value = (header or "").strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1 : value.find("]")] if "]" in value else value
    return value.partition(":")[0] if value.count(":") == 1 else value


def is_local_host(name: str, bind: str) -> bool:
    if name in LOOPBACK_NAMES or name == bind.lower():
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(header: str | None, bind: str, keys_enabled: bool) -> None:
    """Without keys, refuse a Host other than this machine's loopback names (421)."""
    if keys_enabled:
        return
    name = host_name(header)
    if not is_local_host(name, bind):
        raise ApiError(
            421,
            f"this gateway has no API key, so it answers only to Host localhost, 127.0.0.1 or "
            f"[::1], not {name or 'a request without one'!r}; use one of those, or configure "
            "gateway.api_keys",
            code="misdirected_request",
        )


def check_json(method: str, content_type: str | None) -> None:
    """A POST body must be declared `application/json` (415)."""
    if method != "POST":
        return
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            415,
            f"a POST body must be sent as Content-Type: application/json, not "
            f"{media or 'none'}; send JSON with that header",
            code="unsupported_media_type",
        )
