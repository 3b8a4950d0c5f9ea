"""Profile sections for the front ends: `[keys]` (the console) and `[gateway]` (the HTTP API).

Standard library only, like the rest of the loader; the console and the gateway read the parsed
values from `Profile.keys` and `Profile.gateway`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from bitinglip.config_tables import Table, describe

# -- [keys] ----------------------------------------------------------------------------------

# Every console action that has a key, with its default. Keys are Textual key names ("q",
# "colon", "ctrl+r", "f5") or a single printable character (":" "/" "?").
DEFAULT_KEYS: dict[str, str] = {
    "command": ":",
    "filter": "/",
    "help": "?",
    "quit": "q",
    "back": "escape",
    "hosts": "1",
    "gpus": "2",
    "tasks": "3",
    "jobs": "4",
    "models": "5",
    "pulls": "6",
    "logs": "7",
    "ps": "8",
    "submit": "n",
    "batch": "b",
    "cancel": "c",
    "retry": "r",
    "priority": "p",
    "sort": "s",
    "export": "e",
    "search": "f",
    "fit": "t",
    "pull": "u",
    "remove": "d",
    "load": "l",
    "unload": "o",
}
_KEY_NAME = re.compile(r"[a-z0-9_]+(\+[a-z0-9_]+)*")


def parse_keys(table: Table) -> dict[str, str]:
    """The `[keys]` table: action = key. Every action keeps its default unless remapped here;
    two actions may not share a key."""
    keys = dict(DEFAULT_KEYS)
    for action, key in table.data.items():
        if action not in DEFAULT_KEYS:
            table.fail(action, "unknown console action", "actions: " + ", ".join(DEFAULT_KEYS))
        if not isinstance(key, str):
            table.wrong_type(action, "a string", f'{action} = "{DEFAULT_KEYS[action]}"')
        if not (len(key) == 1 and key.isprintable() and not key.isspace()) and not (
            _KEY_NAME.fullmatch(key)
        ):
            fix = 'use one character ("x", ":") or a key name ("f5", "ctrl+r", "escape")'
            table.fail(action, f"{describe(key)} is not a key", fix)
        keys[action] = key
    taken: dict[str, str] = {}
    for action, key in keys.items():
        if key in taken:
            where = action if action in table.data else taken[key]
            table.fail(where, f"key {key!r} is used by both {taken[key]} and {action}", "remap one")
        taken[key] = action
    return keys


# -- [gateway] -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """`bitinglip serve`: where it listens, who may call it, how much interactive work waits."""

    bind: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()  # "sha256:<hex>" digests of the accepted keys
    api_key_env: str | None = None  # a variable holding one more accepted key (plain text)
    max_queued: int = 64  # interactive tasks waiting (queued) before requests get 429
    priority: int = 100  # the priority of gateway tasks (batch jobs use 0)
    auto_pull: bool = True  # a request for a model on no host pulls it (False: 503)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "api_keys": list(self.api_keys)
        }


GATEWAY_KEYS = tuple(f.name for f in fields(GatewayConfig))
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def hash_api_key(key: str) -> str:
    """The form a key is stored in: `sha256:<hex>` (`bitinglip serve --hash-key` prints it)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_gateway(table: Table) -> GatewayConfig:
    bind = table.opt_str("bind") or "127.0.0.1"
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        table.fail("bind", f"{describe(bind)} is not an IP address", 'use "127.0.0.1" or "0.0.0.0"')
    digests = table.data.get("api_keys", [])
    example = 'api_keys = ["sha256:..."] (print one with `bitinglip serve --hash-key`)'
    if not isinstance(digests, list):
        table.wrong_type("api_keys", "an array of strings", example)
    for digest in digests:
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            table.fail("api_keys", f"{describe(digest)} is not a sha256 digest", example)
    key_env = table.opt_str("api_key_env")
    if key_env is not None and not _ENV_NAME.fullmatch(key_env):
        problem = f"{describe(key_env)} is not an environment variable name"
        table.fail("api_key_env", problem, 'use a name like "BITINGLIP_API_KEY"')
    return GatewayConfig(
        bind=bind,
        port=table.integer("port", 8080, 1, 65535, "use a port from 1 to 65535"),
        api_keys=tuple(digests),
        api_key_env=key_env,
        max_queued=table.integer("max_queued", 64, 1, None, "use a number of tasks, at least 1"),
        priority=table.integer("priority", 100, 1, None, "use a priority above 0 (batch work)"),
        auto_pull=table.opt_bool("auto_pull") is not False,
    )
