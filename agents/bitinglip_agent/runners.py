"""Model runners: one supervised inference child per loaded model (runner.py), and the host's
limits over them.

llama.cpp contexts are not thread-safe and abort the whole process on OOM or a failed assert,
so each model runs in its own child process (`infer.py`) behind an explicit queue, keyed by
(model path, mode). The host's limits (`configure`: max_loaded_models, memory_budget_bytes) hold
when a child starts: the least recently used idle models are unloaded to make room, never one
with running or queued work; when nothing idle can go, the run fails as `no_room` (retryable),
naming what holds the room, or as `too_large` when the model alone breaks the limits. Loads
and unloads are told as `log` events (with why).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from bitinglip_agent import settings as run_settings
from bitinglip_agent.gguf_check import GGUFSummary, InvalidGGUF, check_gguf
from bitinglip_agent.protocol import TaskKind
from bitinglip_agent.runner import ModelRunner, Request

if TYPE_CHECKING:
    from bitinglip_agent.child import ChildProcess
    from bitinglip_agent.server import Agent

GIB = float(1 << 30)


class Runners:
    """Every model runner of the agent, by (model path, mode), and the host's limits."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.model_loads = 0  # children that finished loading since the agent started
        self.max_loaded_models: int | None = None
        self.memory_budget_bytes: int | None = None
        self._lock = threading.Lock()
        self._room = threading.Lock()  # one load decides at a time
        self._runners: dict[tuple[str, str], ModelRunner] = {}
        self._checked: dict[tuple[str, int, float], GGUFSummary] = {}
        # Requests of the lines read in one batch, per runner: they go in together (`deliver`),
        # so a burst of runs starts in the same decode step.
        self._incoming: dict[ModelRunner, list[Request]] = {}

    # -- work in ---------------------------------------------------------------------------

    def submit(self, run_id: str, task: dict[str, Any]) -> None:
        """A model task (generate, chat, embed) or a load task: queued on its model's runner."""
        model = task.get("model") or {}
        path = model.get("path")
        if not isinstance(path, str):
            self.agent.error(run_id, "bad_request", "a model task needs model.path")
            return
        try:
            self._check(path)
            settings = run_settings.effective(model.get("settings"), self.agent.options)
        except InvalidGGUF as exc:
            self.agent.error(run_id, "invalid_gguf", str(exc))
            return
        except run_settings.SettingsError as exc:
            self.agent.error(run_id, "bad_request", str(exc))
            return
        embed = task["kind"] == TaskKind.EMBED or model.get("mode") == "embed"
        keep = run_settings.keep_alive_s(task, self.agent.options.idle_unload_s)
        request = Request(run_id, task, settings=settings, keep_alive_s=keep)
        self._put(self._runner(path, "embed" if embed else "generate", keep), request)

    def _put(self, runner: ModelRunner, request: Request) -> None:
        with self._lock:
            self._incoming.setdefault(runner, []).append(request)

    def deliver(self) -> None:
        """The requests of the batch of lines just read, to their runners (the agent calls this
        at each batch's end)."""
        with self._lock:
            incoming, self._incoming = self._incoming, {}
        for runner, requests in incoming.items():
            if not runner.alive:  # stopped since (an `unload` message): a fresh one serves them
                runner = self._runner(runner.path, runner.mode, runner.keep_alive_s)
            runner.put(*requests)

    def load(self, msg_id: str, model: dict[str, Any]) -> None:
        """A `load` message: the model's child started, like a load task."""
        self.submit(msg_id, {"kind": TaskKind.LOAD, "model": model})

    def _check(self, path: str) -> GGUFSummary:
        """The GGUF header check, once per file version (it parses the whole header)."""
        try:
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime)
        except OSError:
            key = (path, -1, 0.0)
        summary = self._checked.get(key)
        if summary is None:
            summary = self._checked[key] = check_gguf(path)
        return summary

    def _runner(self, path: str, mode: str, keep_alive_s: float) -> ModelRunner:
        with self._lock:
            runner = self._runners.get((path, mode))
            if runner is None or not runner.alive:
                runner = ModelRunner(self, path, mode, keep_alive_s)
                self._runners[(path, mode)] = runner
            return runner

    def _all(self) -> list[ModelRunner]:
        with self._lock:
            return list(self._runners.values())

    def cancel(self, run_id: str) -> bool:
        return any(r.cancel(run_id) for r in self._all())

    def unload_when_idle(self, run_id: str, path: str) -> None:
        """An `unload` task: each runner of `path` stops its child once the requests queued
        before this one are done; the result counts the children stopped."""
        runners = [r for r in self._all() if r.path == path and r.alive]
        if not runners:
            self.agent.send("result", run_id, result={"unloaded": 0})
            return
        left = [len(runners), 0]
        lock = threading.Lock()

        def one_done(stopped: bool) -> None:
            with lock:
                left[0] -= 1
                left[1] += int(stopped)
                finished = left[0] == 0
            if finished:
                self.agent.send("result", run_id, result={"unloaded": left[1]})

        for runner in runners:
            marker = Request(f"{run_id}:{runner.mode}", {"kind": "unload"}, on_unload=one_done)
            self._put(runner, marker)

    def unload(self, path: str) -> int:
        """An `unload` message: the model's runners stop now (running work is canceled)."""
        with self._lock:
            gone = [r for (p, _), r in self._runners.items() if p == path]
        for runner in gone:
            runner.stop()
        return len(gone)

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every runner and give them `timeout` to report their last words."""
        runners = self._all()
        for runner in runners:
            runner.stop()
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(deadline - time.monotonic(), 0.0))

    # -- what is loaded --------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Model paths with a live inference child."""
        return sorted({r.path for r in self._all() if r.loaded})

    def describe(self) -> list[dict[str, Any]]:
        """Contract 4's `loaded` list (the telemetry thread adds each child's memory)."""
        entries = [r.describe() for r in self._all()]
        return sorted((e for e in entries if e is not None), key=lambda e: e["loaded_at"])

    def active(self) -> list[str]:
        """Run ids queued or running here."""
        return [run_id for runner in self._all() for run_id in runner.pending()]

    # -- limits ----------------------------------------------------------------------------

    def configure(self, limits: dict[str, Any]) -> None:
        """The host's limits from `configure` (None: no limit)."""
        count, budget = limits.get("max_loaded_models"), limits.get("memory_budget_bytes")
        for name, value in (("max_loaded_models", count), ("memory_budget_bytes", budget)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"limit {name} = {value!r}: expected a positive integer or null")
        self.max_loaded_models, self.memory_budget_bytes = count, budget

    def make_room(self, runner: ModelRunner, settings: dict[str, Any]) -> tuple[str, str] | None:
        """Room for `runner` to load with `settings`: idle models unloaded, least recently used
        first, until the limits hold. None when there is room (the runner then counts as
        loaded), else (code, why): `no_room` while busy models hold the room (it frees when
        their work ends), `too_large` when the model alone breaks the limits."""
        try:
            need = run_settings.estimate_bytes(self._check(runner.path), settings)
        except InvalidGGUF:
            need = 0  # changed since the run was checked: llama.cpp's load says what is wrong
        with self._room:
            while True:
                others = [r for r in self._all() if r is not runner and (r.loaded or r.loading)]
                over = self._over(others, need)
                if over is None:
                    runner.estimate, runner.loading = need, True
                    return None
                idle = sorted((r for r in others if not r.busy and r.loaded), key=_lru)
                why = f"evicted for {runner.path} ({over})"
                if not any(r.evict(why) for r in idle):  # the first that is still idle goes
                    return self._no_room(runner, need, over, others)

    def _over(self, others: list[ModelRunner], need: int) -> str | None:
        """Which limit loading `need` more bytes beside `others` breaks, or None."""
        count, budget = self.max_loaded_models, self.memory_budget_bytes
        if count is not None and len(others) + 1 > count:
            return f"max_loaded_models {count}"
        if budget is not None and sum(r.estimate for r in others) + need > budget:
            return f"memory budget {budget / GIB:.2f} GiB"
        return None

    def _no_room(
        self, runner: ModelRunner, need: int, over: str, held: list[ModelRunner]
    ) -> tuple[str, str]:
        if not held:
            return "too_large", (
                f"{runner.path} (needs {need / GIB:.2f} GiB) is larger than this host's {over}"
            )
        holders = ", ".join(
            f"{r.path} ({r.estimate / GIB:.2f} GiB, {len(r.pending())} running or queued)"
            for r in held
        )
        return "no_room", (
            f"no room to load {runner.path} (needs {need / GIB:.2f} GiB) within {over}: held by"
            f" {holders}, none of them idle"
        )

    # -- told by the runners ---------------------------------------------------------------

    def loaded_one(self, runner: ModelRunner, child: ChildProcess) -> None:
        with self._lock:
            self.model_loads += 1
        facts = child.facts
        load_s = float(facts.get("load_s") or 0.0)
        self._log(
            f"loaded {runner.path} ({runner.mode}) in {load_s:.1f}s: n_ctx {facts.get('n_ctx')},"
            f" parallel {facts.get('parallel')}, threads {facts.get('threads')}",
            action="load",
            model=runner.path,
            mode=runner.mode,
            load_s=load_s,
        )

    def unloaded_one(self, runner: ModelRunner, why: str) -> None:
        runner.estimate = 0
        self._log(
            f"unloaded {runner.path} ({runner.mode}): {why}",
            action="unload",
            model=runner.path,
            mode=runner.mode,
            reason=why,
        )

    def _log(self, text: str, **fields: Any) -> None:
        self.agent.send("event", kind="log", data=text, **fields)


def _lru(runner: ModelRunner) -> float:
    return runner.last_used
