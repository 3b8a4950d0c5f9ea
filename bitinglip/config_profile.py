"""What `load_profile` returns: the frozen `Profile`, with every section parsed and defaulted.

Its parts are the sections' values: `QueueConfig`, `HostConfig` and `ModelAlias`
(`config_control.py`), `ServingConfig` (`config_serving.py`), `GatewayConfig` and the console
keys (`config_sections.py`). `to_dict` is
the JSON view shaped like the TOML schema. Standard library only; `bitinglip.config` re-exports
it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bitinglip.config_control import HostConfig, ModelAlias, QueueConfig
from bitinglip.config_retention import RetentionConfig
from bitinglip.config_sections import DEFAULT_KEYS, GatewayConfig
from bitinglip.config_serving import ServingConfig

DURABILITY = ("normal", "full")


@dataclass(frozen=True)
class Profile:
    """A validated profile with the precedence ladder applied. Frozen, and so are its parts."""

    name: str
    path: Path | None
    data_dir: Path
    durability: str
    controller_lease_s: float
    queue: QueueConfig
    hosts: tuple[HostConfig, ...]
    models: Mapping[str, ModelAlias]
    shutdown_grace_s: float = 10.0
    give_up_after_s: float = 30.0  # a control loop whose every step fails this long stops
    hub_token_env: str | None = None  # the environment variable holding the hub token
    keys: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_KEYS))  # console keys
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.db"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view shaped like the TOML schema (`profiles show --json`)."""
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "data_dir": str(self.data_dir),
            "db_path": str(self.db_path),
            "durability": self.durability,
            "controller": {
                "lease_s": self.controller_lease_s,
                "shutdown_grace_s": self.shutdown_grace_s,
                "give_up_after_s": self.give_up_after_s,
            },
            "queue": asdict(self.queue),
            "hosts": [host.to_dict() for host in self.hosts],
            "hub": {"token_env": self.hub_token_env},
            "keys": dict(self.keys),
            "gateway": self.gateway.to_dict(),
            "serving": asdict(self.serving),
            "retention": self.retention.to_dict(),
            "models": {alias: m.to_dict() for alias, m in self.models.items()},
        }
