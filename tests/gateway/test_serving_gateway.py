"""Model-aware serving through the gateway, with the official `openai` client: `keep_alive` in
every body (Ollama's meaning) reaches the task as `keep_alive_s`; a registered model is served by
its ref or short name and listed in /v1/models with where it is loaded; a model no host has is
pulled where it fits (the request waits), unless `[gateway] auto_pull = false` (503).

Gateways of their own (`serve_profile`): what these tests register would change what the
package's shared gateways list."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from bitinglip.control import resolve_ref
from bitinglip.control.models import registry
from bitinglip.control.models.refs import HubFile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.gateway.server import Served
from tests.gateway.conftest import KEY, KEYED, MODEL, assert_error_object, client, needs_model
from tests.gateway.conftest import request as http
from tests.hub.conftest import hub  # noqa: F401
from tests.hub.server import Hub

pytestmark = needs_model

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "max_tokens": 4}
MESSAGES = [{"role": "user", "content": "Hi"}]
REPO = "org/demo-270m-GGUF"
FILE = "demo-270m-Q4_K_M.gguf"
SHORT = "demo-270m:q4_k_m"
CANONICAL = f"{REPO}:{FILE}"
Start = Callable[..., AbstractContextManager[Served]]


def observe(served: Served) -> ControlPlane:
    return open_control_plane(served.bridge.profile)


def file_of(path: Path) -> HubFile:
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return HubFile(REPO, "d" * 40, FILE, path.stat().st_size, sha256, "Q4_K_M", "")


def test_keep_alive_reaches_each_task(served: Served) -> None:
    api = client(served)
    chat = api.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, extra_body={"keep_alive": "10m"}, **GREEDY
    )
    text = api.completions.with_raw_response.create(
        model=MODEL, prompt="The sky is", extra_body={"keep_alive": 0}, **GREEDY
    )
    vectors = api.embeddings.with_raw_response.create(
        model=MODEL, input="hello", extra_body={"keep_alive": -5}
    )
    with observe(served) as plane:
        seconds = [
            plane.task(int(raw.headers["x-bitinglip-task"])).payload["keep_alive_s"]
            for raw in (chat, text, vectors)
        ]
    assert seconds == [600.0, 0.0, -1.0]


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1], {"s": 1}, 1e400])
def test_a_bad_keep_alive_is_a_400_naming_it(served: Served, value: Any) -> None:
    body = {"model": MODEL, "prompt": "x", "keep_alive": value}
    error = assert_error_object(http(served, "POST", "/v1/completions", body), 400)
    assert error["param"] == "keep_alive" and "keep_alive must be a duration" in error["message"]


def test_an_unknown_model_or_a_path_is_model_not_found(served: Served, demo_model: Path) -> None:
    for name in ("no-such-model", str(demo_model)):
        body = {"model": name, "messages": MESSAGES}
        error = assert_error_object(http(served, "POST", "/v1/chat/completions", body), 400)
        assert error["code"] == "model_not_found" and error["param"] == "model"


def test_a_registered_model_is_served_by_its_short_name(
    serve_profile: Start, demo_model: Path
) -> None:
    with serve_profile(demo_model, KEYED) as served:
        with observe(served) as plane:
            model_id = registry.register(plane.store, file_of(demo_model))
            registry.set_host_state(plane.store, "local", model_id, "ready", path=str(demo_model))
        api = client(served, KEY)
        listed = {m.id: m for m in api.models.list().data}
        assert set(listed) == {MODEL, SHORT}
        extra = listed[SHORT].model_extra
        assert extra is not None and extra["source"] == f"hf:{REPO}"
        assert extra["names"] == [SHORT, f"{REPO}:Q4_K_M", CANONICAL]
        assert extra["hosts"] == {"local": {"state": "ready", "loaded": False}}
        for name in (SHORT, f"{REPO}:q4_k_m", CANONICAL):
            raw = api.chat.completions.with_raw_response.create(
                model=name, messages=MESSAGES, **GREEDY
            )
            assert raw.parse().model == name
            with observe(served) as plane:
                assert plane.task(int(raw.headers["x-bitinglip-task"])).model == CANONICAL
        # Where it is loaded: from the agent's telemetry, stored every second.
        deadline = time.monotonic() + 10
        while (loaded_on := api.models.retrieve(SHORT).model_extra["loaded_on"]) != ["local"]:
            assert time.monotonic() < deadline, loaded_on
            time.sleep(0.2)


def test_auto_pull_off_keeps_the_503(serve_profile: Start, demo_model: Path) -> None:
    with serve_profile(demo_model, "auto_pull = false") as served:
        with observe(served) as plane:
            registry.register(plane.store, file_of(demo_model))
        body = {"model": SHORT, "messages": MESSAGES}
        error = assert_error_object(http(served, "POST", "/v1/chat/completions", body), 503)
        assert error["code"] == "model_not_pulled" and error["param"] == "model"
        with observe(served) as plane:
            assert plane.tasks(limit=10) == []  # nothing queued, nothing pulled


@pytest.mark.slow
def test_a_model_no_host_has_is_pulled_once_and_then_answers(
    serve_profile: Start,
    demo_model: Path,
    hub: Hub,  # noqa: F811
) -> None:
    hub.add_repo(REPO, {FILE: demo_model})
    with serve_profile(demo_model) as served:
        with observe(served) as plane:
            registry.register(plane.store, resolve_ref(f"{REPO}:Q4_K_M"))
        api = client(served)

        def ask(n: int) -> str | None:
            answer = api.chat.completions.create(model=SHORT, messages=MESSAGES, **GREEDY)
            content: str | None = answer.choices[0].message.content
            return content

        with ThreadPoolExecutor(3) as pool:  # three requests at once: one pull
            answers = list(pool.map(ask, range(3)))
        assert all(a is not None for a in answers)
        with observe(served) as plane:
            kinds = sorted((t.kind, t.state) for t in plane.tasks(limit=10))
            copy = plane.models.find(CANONICAL)
        assert kinds == [("chat", "succeeded")] * 3 + [("pull", "succeeded")]
        assert copy is not None and copy["hosts"]["local"]["state"] == "ready"
