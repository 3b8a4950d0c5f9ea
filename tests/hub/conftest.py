"""The `hub` fixture: a fake Hugging Face hub on 127.0.0.1, and a huggingface_hub client that
talks only to it and keeps its files under a temporary HF_HOME.

huggingface_hub reads its environment once, at import (`constants.ENDPOINT`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`, `HF_TOKEN_PATH`, ...). So the fixture does both: it sets the environment
(for child processes, and for a first import after it) and, when huggingface_hub is
installed, patches those constants in this process, so `HfApi()` and `hf_hub_download(...)`
reach the fake hub with no `endpoint=` argument. Passing `endpoint=hub.url` works as well.

Tests elsewhere get the fixture with `from tests.hub.conftest import hub  # noqa: F401`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub.gguf_files import tiny_gguf
from tests.hub.server import Hub

__all__ = ["hub", "isolate_hf_client", "tiny_gguf"]

# Variables that would send the client elsewhere, sign it in, or switch it offline.
_UNSET = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_ID_TOKEN",
    "HF_OIDC_RESOURCE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)


def isolate_hf_client(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Point huggingface_hub (env and, if imported or importable, its constants) at `endpoint`
    with every cache and token file under `home`."""
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    if importlib.util.find_spec("huggingface_hub") is None:
        return
    from huggingface_hub import constants

    patched: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": env["HF_HOME"],
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HF_XET_CACHE": env["HF_XET_CACHE"],
        "HF_TOKEN_PATH": env["HF_TOKEN_PATH"],
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HUB_ETAG_TIMEOUT": constants.DEFAULT_ETAG_TIMEOUT,
        "HF_HUB_DOWNLOAD_TIMEOUT": constants.DEFAULT_DOWNLOAD_TIMEOUT,
    }
    for attribute, setting in patched.items():
        monkeypatch.setattr(constants, attribute, setting)


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A started fake hub (stopped at teardown) that the huggingface_hub client talks to."""
    with Hub() as started:
        isolate_hf_client(monkeypatch, started.url, tmp_path_factory.mktemp("hf-home"))
        yield started
