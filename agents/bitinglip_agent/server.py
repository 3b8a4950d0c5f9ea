"""The agent's main loop: read control-plane messages from stdin, answer on stdout.

Threads: this one reads and dispatches; a telemetry thread pushes snapshots; each loaded model
has a runner thread that owns its inference child. Writes share one lock, so lines never
interleave. Nothing here waits on inference: a `run` is queued and answered later.

Each `run` read is acknowledged: the ids of the runs of one batch of lines go out in one `ack`
line when the batch is handled (a run the control plane never saw acknowledged is sent again
after a dropped connection; one already accepted here is not run twice). A result longer than
protocol.RESULT_PART_BYTES goes as `result_part` lines (protocol.split_result).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from bitinglip_agent import __version__, protocol
from bitinglip_agent.protocol import KINDS, MODEL_KINDS, TO_AGENT, ProtocolError, TaskKind

# A re-attachable agent keeps its last results to send again after a dropped connection (the
# control plane ignores those it has), and the output events it could not send while detached.
# Both are capped in bytes; a re-attach's `ping` lists the runs the control plane still waits
# for, and the results of the others (it has them) are dropped then.
REPLAY_LINES = 4096
REPLAY_BYTES_MAX = 64 * 1024 * 1024
HELD_BYTES_MAX = 64 * 1024 * 1024
# Run ids remembered, so that a run sent again (its `ack` was lost with the connection) is not
# run twice.
ACCEPTED_IDS = 65536


@dataclass(frozen=True)
class AgentOptions:
    host_name: str | None = None
    model_dir: str | None = None
    telemetry_interval: float = 1.0
    idle_unload_s: float = 300.0
    threads: int = 0
    gpu_layers: int = -1


class Agent:
    """Speaks the protocol over (rfile, wfile). With `reattachable`, a failed write detaches
    instead of stopping: results are kept for the next connection (`daemon.py`)."""

    def __init__(
        self,
        rfile: BinaryIO,
        wfile: BinaryIO | None,
        options: AgentOptions,
        *,
        reattachable: bool = False,
    ) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.options = options
        self.reattachable = reattachable
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._nudge = threading.Event()  # wakes the telemetry thread (attach, stop)
        self._runners: Any = None  # bitinglip_agent.runners.Runners, made on first model task
        self._downloads: Any = None  # bitinglip_agent.downloads.Downloads, made on first pull
        self._replay: collections.deque[tuple[str, bytes]] = collections.deque()
        self._replay_bytes = 0
        self._accepted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._acks: list[str] = []  # runs read in this batch, acknowledged at its end
        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0
        self._facts: Any = None  # (host facts, capabilities), gathered for the first hello
        self._batching = False  # replies of the reading thread wait for the batch's end
        self._reader = 0
        self._secrets: dict[str, str] = {}

    # -- output ----------------------------------------------------------------------------

    def send(self, msg_type: str, msg_id: str | None = None, **fields: Any) -> None:
        line = protocol.encode(msg_type, msg_id, **fields)
        if msg_type == "result" and msg_id is not None:
            line = protocol.split_result(line, msg_id)
        with self._write_lock:
            if self.reattachable and msg_type in ("result", "error") and msg_id is not None:
                self._keep(msg_id, line)
            if self.wfile is None:
                self._hold(msg_type, msg_id, line)
                return
            try:
                self.wfile.write(line)
                if not (self._batching and threading.get_ident() == self._reader):
                    self.wfile.flush()
            except (OSError, ValueError):
                if not self.reattachable:
                    self._stop.set()  # the control plane went away
                    return
                self.wfile = None  # detached: the next connection gets what follows
                self._hold(msg_type, msg_id, line)

    def _keep(self, run_id: str, line: bytes) -> None:
        """A result in the replay ring; the oldest go past REPLAY_LINES or REPLAY_BYTES_MAX
        (the newest stays, whatever its size)."""
        self._replay.append((run_id, line))
        self._replay_bytes += len(line)
        while len(self._replay) > 1 and (
            len(self._replay) > REPLAY_LINES or self._replay_bytes > REPLAY_BYTES_MAX
        ):
            self._replay_bytes -= len(self._replay.popleft()[1])

    def _forget_except(self, wanted: set[str]) -> None:
        """Drop the kept results of runs the control plane no longer waits for: it has them."""
        self._replay = collections.deque(item for item in self._replay if item[0] in wanted)
        self._replay_bytes = sum(len(line) for _, line in self._replay)

    def _hold(self, msg_type: str, msg_id: str | None, line: bytes) -> None:
        """Keep an output event for the next connection (results are in the replay ring)."""
        if msg_type == "event" and self._held_bytes + len(line) <= HELD_BYTES_MAX:
            self._held.append((msg_id or "", line))
            self._held_bytes += len(line)

    def attach(self, wfile: BinaryIO, wanted: set[str] | None = None) -> bool:
        """Make `wfile` the connection: send it the kept lines (only those of the `wanted` runs,
        when the control plane says which it still waits for), then `hello`. False if it broke.
        """
        with self._write_lock:
            if wanted is not None:
                self._forget_except(wanted)
            kept = [*self._replay, *self._held]
            lines = [line for run, line in kept if wanted is None or run in wanted]
            lines.append(self._hello_line())
            try:
                wfile.write(b"".join(lines))
                wfile.flush()
            except (OSError, ValueError):
                return False
            self._held, self._held_bytes = [], 0
            self.wfile = wfile
        self._nudge.set()
        return True

    def detach(self, wfile: BinaryIO) -> None:
        with self._write_lock:
            if self.wfile is wfile:
                self.wfile = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def loaded_models(self) -> list[str]:
        """Paths of the models loaded in an inference child now."""
        return [] if self._runners is None else self._runners.loaded()

    def active_runs(self) -> list[str]:
        runs = [] if self._runners is None else self._runners.active()
        return runs + ([] if self._downloads is None else self._downloads.active())

    def error(self, msg_id: str | None, code: str, message: str) -> None:
        self.send("error", msg_id, code=code, message=message, retryable=code in protocol.RETRYABLE)

    # -- the loop --------------------------------------------------------------------------

    def _hello_line(self) -> bytes:
        from bitinglip_agent import telemetry

        if self._facts is None:  # they do not change while the agent runs (~20 ms to gather)
            self._facts = (telemetry.host_facts(), telemetry.capabilities())
        return protocol.encode(
            "hello",
            version=__version__,
            protocol=protocol.PROTOCOL_VERSION,
            pid=os.getpid(),
            host=self._facts[0],
            capabilities=self._facts[1],
            kinds=[kind.value for kind in KINDS],
            name=self.options.host_name,
            model_dir=self.options.model_dir
            and os.path.abspath(os.path.expanduser(self.options.model_dir)),
            models=telemetry.model_files(self.options.model_dir),
            runs=self.active_runs(),
        )

    def serve(self) -> int:
        """Serve stdin/stdout until EOF or `shutdown`."""
        wfile, self.wfile = self.wfile, None
        if wfile is not None:
            self.attach(wfile)
        self.start_telemetry()
        fd = self.rfile.fileno()
        try:
            self.read_from(protocol.LineReader(lambda n: os.read(fd, n)))
        finally:
            self.stop()
        return 0

    def start_telemetry(self) -> None:
        if self.options.telemetry_interval > 0:
            threading.Thread(target=self._telemetry, name="telemetry", daemon=True).start()

    def read_from(self, lines: protocol.LineReader) -> None:
        """Handle lines until EOF or `shutdown`. The replies made on this thread to the lines
        already buffered are written together, with one `ack` of the runs among them, and
        flushed once the buffer is drained."""
        self._reader = threading.get_ident()
        try:
            while not self._stop.is_set():
                line = lines.next_line()
                if line is None:
                    break
                self._batching = True
                if line.strip():
                    self.handle_line(line)
                if not lines.buffered():
                    self.end_batch()
        finally:
            self.end_batch()

    def end_batch(self) -> None:
        """Acknowledge the runs read since the last batch, then flush (the reading thread). The
        model runs among them go to their runners together."""
        if self._runners is not None:
            self._runners.deliver()
        self._batching = True
        if self._acks:
            runs, self._acks = self._acks, []
            self.send("ack", runs=runs)
        self._batching = False
        self.flush()

    def flush(self) -> None:
        with self._write_lock:
            if self.wfile is None:
                return
            try:
                self.wfile.flush()
            except (OSError, ValueError):
                if not self.reattachable:
                    self._stop.set()
                    return
                self.wfile = None

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()
        if self._downloads is not None:
            self._downloads.stop_all()
        if self._runners is not None:
            self._runners.stop_all()

    def _telemetry(self) -> None:
        from bitinglip_agent import telemetry

        sampler = telemetry.Sampler(self.options.model_dir)
        interval = self.options.telemetry_interval
        next_at = time.monotonic()
        self._nudge.clear()  # an attachment before this thread began gets this first snapshot
        try:
            while not self._stop.is_set():
                if self.wfile is not None:  # nobody to tell while detached
                    snapshot = sampler.snapshot()
                    snapshot["models_loaded"] = self.loaded_models()
                    snapshot["loaded"] = self._loaded_details(snapshot.get("gpus") or [])
                    snapshot["model_loads"] = self._runners.model_loads if self._runners else 0
                    self.send("telemetry", snapshot=snapshot)
                next_at += interval
                if self._nudge.wait(max(next_at - time.monotonic(), 0.0)):
                    self._nudge.clear()  # a new attachment: a snapshot now, then every interval
                    next_at = time.monotonic()
        finally:
            sampler.close()

    def _loaded_details(self, gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from bitinglip_agent import telemetry

        if self._runners is None:
            return []
        return telemetry.with_memory(self._runners.describe(), gpus)

    def handle_line(self, line: bytes) -> None:
        try:
            msg = protocol.decode(line, TO_AGENT)
        except ProtocolError as exc:
            self.error(exc.msg_id, exc.code, str(exc))
            return
        handler = getattr(self, f"_on_{msg['type']}", None)
        if handler is None:
            self.error(msg.get("id"), "unsupported", f"{msg['type']!r} is not supported here")
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.error(msg.get("id"), "bad_request", f"bad {msg['type']} message: {exc!r}")

    # -- handlers --------------------------------------------------------------------------

    def _on_ping(self, msg: dict[str, Any]) -> None:
        self.send("pong", msg.get("id"), at=time.time())

    def _on_shutdown(self, msg: dict[str, Any]) -> None:
        self._stop.set()

    def _on_configure(self, msg: dict[str, Any]) -> None:
        """Secrets (the HF token) arrive here, over the channel: kept in memory, never logged.
        The host's limits (max_loaded_models, memory_budget_bytes) too. A configure without
        one of them keeps what the last one said."""
        if "secrets" in msg or "limits" not in msg:
            secrets = msg.get("secrets") or {}
            self._secrets = {str(k): str(v) for k, v in secrets.items()}
        result: dict[str, Any] = {"configured": sorted(self._secrets)}
        if isinstance(msg.get("limits"), dict):
            runners = self.runners()
            runners.configure(msg["limits"])
            result["limits"] = {
                "max_loaded_models": runners.max_loaded_models,
                "memory_budget_bytes": runners.memory_budget_bytes,
            }
        self.send("result", msg.get("id"), result=result)

    def secret(self, name: str) -> str | None:
        return self._secrets.get(name)

    def _on_run(self, msg: dict[str, Any]) -> None:
        run_id = str(msg["id"])
        task = msg["task"]
        kind = task["kind"]
        self._acks.append(run_id)
        if self._again(run_id):
            return
        if kind == TaskKind.ECHO:
            self.send("result", run_id, result=task.get("payload"))
        elif kind in MODEL_KINDS:
            self.runners().submit(run_id, task)
        elif kind == TaskKind.PULL:  # a queued pull task: its payload is a `pull` message's body
            payload = task.get("payload") or {}
            self.downloads().pull({**payload, "type": "pull", "id": run_id})
        elif kind == TaskKind.REMOVE:
            self.downloads().remove(run_id, (task.get("payload") or {}).get("dest"))
        elif kind == TaskKind.LOAD:
            self.runners().submit(run_id, task)
        elif kind == TaskKind.UNLOAD:
            model = task.get("model") or {}
            if not isinstance(model.get("path"), str):
                self.error(run_id, "bad_request", "an unload task needs model.path")
            elif self._runners is None:
                self.send("result", run_id, result={"unloaded": 0})
            else:
                self._runners.unload_when_idle(run_id, model["path"])
        else:
            self.error(run_id, "unsupported", f"this agent does not run {kind!r} tasks")

    def _again(self, run_id: str) -> bool:
        """True for a run sent again (its `ack` was lost with the connection) that is in
        progress here, or whose result is kept for the control plane: it is not run twice."""
        if run_id not in self._accepted:
            self._accepted[run_id] = None
            if len(self._accepted) > ACCEPTED_IDS:
                self._accepted.popitem(last=False)
            return False
        with self._write_lock:
            kept = any(run == run_id for run, _ in self._replay)
        return kept or run_id in self.active_runs()

    def _on_cancel(self, msg: dict[str, Any]) -> None:
        if self._downloads is not None and self._downloads.cancel(str(msg["id"])):
            return
        if self._runners is None or not self._runners.cancel(str(msg["id"])):
            self.send("event", str(msg["id"]), kind="log", data="cancel: no such run here")

    def _on_load(self, msg: dict[str, Any]) -> None:
        self.runners().load(str(msg.get("id")), msg["model"])

    def _on_unload(self, msg: dict[str, Any]) -> None:
        unloaded = self._runners.unload(msg["model"]["path"]) if self._runners else 0
        self.send("result", msg.get("id"), result={"unloaded": unloaded})

    def _on_pull(self, msg: dict[str, Any]) -> None:
        """A model file to the model dir, verified; answered from a worker (downloads.py)."""
        self.downloads().pull(msg)

    def downloads(self) -> Any:
        if self._downloads is None:
            from bitinglip_agent.downloads import Downloads

            self._downloads = Downloads(self)  # on this (the main) thread: it ignores SIGXFSZ
        return self._downloads

    def runners(self) -> Any:
        if self._runners is None:
            from bitinglip_agent.runners import Runners

            self._runners = Runners(self)
        return self._runners
