"""API keys: `Authorization: Bearer KEY`, checked against sha256 digests only.

The profile stores digests (`gateway.api_keys`, printed by `bitinglip serve --hash-key KEY`);
`gateway.api_key_env` names an environment variable holding one more key in plain text (its
digest is all that is kept). With no key configured every request is let in, and `serve` only
binds a loopback address then.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping

from bitinglip.config_sections import GatewayConfig, hash_api_key
from bitinglip.errors import ConfigError


class Keys:
    def __init__(self, digests: tuple[str, ...]) -> None:
        self.digests = tuple(bytes.fromhex(d.removeprefix("sha256:")) for d in digests)

    @classmethod
    def from_config(cls, config: GatewayConfig, environ: Mapping[str, str] = os.environ) -> Keys:
        digests = list(config.api_keys)
        if config.api_key_env is not None:
            key = environ.get(config.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"gateway.api_key_env names {config.api_key_env}, which is not set; set it "
                    "to the API key, or remove api_key_env from the profile"
                )
            digests.append(hash_api_key(key))
        return cls(tuple(digests))

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries one of the keys (always, with no keys)."""
        if not self.digests:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = False
        for known in self.digests:  # no early exit: the time does not tell which key is close
            found |= hmac.compare_digest(digest, known)
        return found


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def check_bind(bind: str, keys: Keys) -> None:
    """Refuse to listen beyond this machine with no API key configured."""
    if not keys.enabled and not is_loopback(bind):
        raise ConfigError(
            f"refusing to serve on {bind} with no API key: anyone who can reach it could use "
            "the fleet; add gateway.api_keys (`bitinglip serve --hash-key KEY` prints one) or "
            "gateway.api_key_env to the profile, or bind 127.0.0.1"
        )
