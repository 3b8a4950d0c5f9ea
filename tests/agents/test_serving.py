"""What a host keeps loaded, on purpose: load and unload tasks, keep-alive per request, per
model and by default, the host's limits (max_loaded_models, a memory budget) with LRU eviction
of idle models only, and what telemetry says is loaded. The demo model under several paths
(symlinks) stands for several models."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.model_agent import ModelAgent

pytestmark = pytest.mark.slow

SMALL = {"n_ctx": 256, "threads": 2}


@pytest.fixture
def models(demo_model: Path, tmp_path: Path) -> list[Path]:
    paths = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.gguf"
        os.symlink(demo_model, path)
        paths.append(path)
    return paths


@pytest.fixture
def agent(demo_model: Path) -> Iterator[ModelAgent]:
    proc = ModelAgent(demo_model, "--idle-unload-s", "300")
    try:
        yield proc
    finally:
        proc.close()


def unloads(agent: ModelAgent) -> list[str]:
    return [t for t in agent.log_texts() if t.startswith("unloaded")]


def test_keep_alive_zero_unloads_after_the_request(agent: ModelAgent) -> None:
    payload = agent.generate("Water boils at", 3, keep_alive_s=0)
    agent.ok(agent.task("generate", payload, settings=SMALL))
    agent.until(lambda: unloads(agent), 30, "the unload")
    assert "keep-alive 0" in unloads(agent)[0]
    assert agent.loaded() == []
    assert agent.snapshot["model_loads"] == 1


def test_keep_alive_duration_and_forever(agent: ModelAgent, models: list[Path]) -> None:
    """The model's keep-alive (1 s) unloads it once idle that long; a request's -1 keeps the
    other loaded past it."""
    a, b = models[:2]
    agent.ok(
        agent.task("generate", agent.generate("Hi", 2), settings=SMALL, path=a, keep_alive_s=1)
    )
    forever = agent.generate("Hi", 2, keep_alive_s=-1)
    agent.ok(agent.task("generate", forever, settings=SMALL, path=b, keep_alive_s=1))
    (entry_b,) = [e for e in agent.loaded() if e["path"] == str(b)]
    assert entry_b["keep_alive_s"] == -1 and entry_b["unloads_in_s"] is None
    agent.until(lambda: unloads(agent), 30, "a's unload")
    assert str(a) in unloads(agent)[0] and "keep-alive of 1s" in unloads(agent)[0]
    agent.pump(1.5)
    assert [e["path"] for e in agent.loaded()] == [str(b)]
    assert len(unloads(agent)) == 1


def test_load_and_unload_tasks(agent: ModelAgent) -> None:
    """An unload waits for the model's running request; the next request loads it afresh."""
    first = agent.ok(agent.task("load", {"keep_alive_s": -1}, settings=SMALL))
    assert first["loaded"] == str(agent.model) and not first["already"] and first["load_s"] > 0
    (entry,) = agent.loaded()
    assert entry["running"] == 0 and entry["idle_s"] is not None and entry["rss_bytes"] > 0
    assert entry["unloads_in_s"] is None and entry["loaded_at"] <= time.time()
    running = agent.task("generate", agent.generate("Once upon a time", 24), settings=SMALL)
    agent.until(lambda: agent.runs[running].output, 60, "output")
    unload = agent.task("unload")
    assert agent.ok(unload) == {"unloaded": 1}
    assert agent.runs[running].ended_at is not None and agent.runs[running].error is None
    assert agent.runs[running].ended_at <= agent.runs[unload].ended_at  # type: ignore[operator]
    assert agent.loaded() == []
    assert agent.ok(agent.task("unload")) == {"unloaded": 0}
    agent.ok(agent.task("generate", agent.generate("Hi", 2), settings=SMALL))
    assert agent.loaded()[0]["path"] == str(agent.model)
    assert agent.snapshot["model_loads"] == 2


def test_new_settings_restart_the_child(agent: ModelAgent) -> None:
    agent.ok(agent.task("generate", agent.generate("Hi", 2), settings=SMALL))
    agent.ok(agent.task("generate", agent.generate("Hi", 2), settings={**SMALL, "n_ctx": 512}))
    assert any("settings changed" in t for t in unloads(agent))
    (entry,) = agent.loaded()
    assert entry["settings"]["n_ctx"] == 512


def test_lru_eviction_spares_a_model_with_running_work(
    agent: ModelAgent, models: list[Path]
) -> None:
    """Two models at most: a third load evicts the least recently used idle one, never the
    older one that is busy; when both are busy, the load fails as no_room naming them."""
    a, b, c = models
    assert agent.configure(max_loaded_models=2)["result"]["limits"]["max_loaded_models"] == 2
    agent.ok(agent.task("load", settings=SMALL, path=a))
    agent.ok(agent.task("load", settings=SMALL, path=b))
    busy = agent.task("generate", agent.generate("Once upon a time", 40), settings=SMALL, path=a)
    agent.until(lambda: agent.runs[busy].output, 60, "a's output")
    agent.ok(agent.task("load", settings=SMALL, path=c))
    assert any(t.startswith(f"unloaded {b}") and "evicted for" in t for t in unloads(agent))
    assert sorted(e["path"] for e in agent.loaded()) == [str(a), str(c)]
    assert agent.ok(busy)["usage"]["completion_tokens"] > 0
    busy_c = agent.task("generate", agent.generate("Once upon a time", 40), settings=SMALL, path=c)
    busy_a = agent.task("generate", agent.generate("Once upon a time", 40), settings=SMALL, path=a)
    agent.until(lambda: agent.runs[busy_c].output and agent.runs[busy_a].output, 60, "output")
    (refused,) = agent.ended(agent.task("load", settings=SMALL, path=b))
    assert refused.error is not None and refused.error["code"] == "no_room", refused.error
    assert refused.error["retryable"] is True
    assert str(a) in refused.error["message"] and str(c) in refused.error["message"]
    assert len(agent.loaded()) <= 2
    agent.ended(busy_c, busy_a)


def test_a_memory_budget_evicts_to_fit(agent: ModelAgent, models: list[Path]) -> None:
    """A budget for one model (file x 1.2 + its KV cache, under 1.5 files): the second load
    evicts the first, idle."""
    a, b = models[:2]
    budget = int(a.stat().st_size * 1.5)
    agent.configure(memory_budget_bytes=budget)
    agent.ok(agent.task("load", settings=SMALL, path=a))
    agent.ok(agent.task("load", settings=SMALL, path=b))
    assert any(t.startswith(f"unloaded {a}") and "memory budget" in t for t in unloads(agent))
    assert [e["path"] for e in agent.loaded()] == [str(b)]


def test_configure_keeps_secrets_and_limits_apart(agent: ModelAgent) -> None:
    agent.send("configure", "s1", secrets={"hf_token": "x"})
    assert agent.reply("s1")["result"]["configured"] == ["hf_token"]
    limits = agent.configure(max_loaded_models=3, memory_budget_bytes=None)["result"]
    assert limits["configured"] == ["hf_token"]
    assert limits["limits"] == {"max_loaded_models": 3, "memory_budget_bytes": None}
    agent.send("configure", "bad", limits={"max_loaded_models": 0})
    assert agent.reply("bad")["code"] == "bad_request"


def test_a_bad_setting_fails_the_run_in_one_line(agent: ModelAgent) -> None:
    (run,) = agent.ended(agent.task("generate", agent.generate("Hi", 2), settings={"parallel": 0}))
    assert run.error is not None and run.error["code"] == "bad_request"
    assert "parallel" in run.error["message"] and "\n" not in run.error["message"]
