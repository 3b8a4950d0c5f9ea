"""`bitinglip bench fleet`: worker challenges on every host of the profile at once.

Per host, all hosts concurrently, each through its own `host_link.HostLink` (an AgentSession; no
queue, no dispatcher):

- `connect_ready_ms`: transport start to the agent's `hello`, in this fresh process (an SSH host:
  connect, probe, start the agent's daemon, open the channel; the agent must be installed);
- `rtt_p50_ms`, `rtt_p99_ms`: RTT_SAMPLES echo runs one after another, send to result;
- `tokens_per_s`: with `--model`, a short greedy generate after a warm-up one, when the host has
  the model (an SSH host: its `hello` lists it; this machine: it is in the model cache); else
  null, and `tokens_note` says why;
- `gpu`: the first GPU's name in the agent's telemetry; `status`: ok, or the one line that
  stopped the host (the others go on).

Fleet-wide:

- `ssh_echo_per_s` and `raw_asyncssh_per_s`: on the first SSH host that is ok, n echo runs
  pipelined through AgentSession + RemoteTransport with at most `window` unanswered, and the same
  n lines through `raw_echo_rate` (bench/echo_rate.py: a bare exec channel to a Python loop
  doing the agent's JSON work per line), alternating, ROUNDS times each; medians, and `ratio` =
  ssh / raw. Both top up in one write once `refill` (a quarter of the window) can go: a client
  that tops up after every answer sends about one SSH packet per line, and that is what it would
  measure;
- `e2e_per_s`: n echo tasks submitted in one batch into a fresh queue, an embedded control loop
  dispatching them over the hosts that were ok, until every one succeeded (`e2e_hosts_used`:
  how many ran some); before it, `reconnect_ready_ms_p50`: that loop's sessions, start to
  `hello`, with the daemons already running;
- `control_cpu_percent`: then, with those agents attached (`telemetry_hosts` of them pushing
  telemetry at 1 Hz) and no work, this process's CPU time (every thread) over `telemetry_s`, in %
  of one core;
- `connect_ready_ms_p50`: the median of the hosts' `connect_ready_ms`.

Everything runs on a temporary database, so the hosts run this benchmark's own agent daemons (shut
down at the end) and a running `bitinglip up` is not disturbed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bitinglip_agent import protocol

from bitinglip.bench.host_link import REPLY_TIMEOUT_S, HostFailed, HostLink, one_line, why
from bitinglip.config import HostConfig, Profile
from bitinglip.control import TaskSpec, TaskState, check_name, models_dir, open_control_plane
from bitinglip.control.transport.local import LocalTransport
from bitinglip.control.transport.sessions import AgentSession, Transport
from bitinglip.errors import BitinglipError, InputError

RTT_SAMPLES = 200
ROUNDS = 5
REFILL_PART = 4  # both pipelines top up once a quarter of the window is free
GENERATE_TIMEOUT_S = 300.0
TELEMETRY_WAIT_S = 3.0
SETTLE_S = 1.0
GENERATE = {"prompt": "Count: one, two,", "max_tokens": 32, "temperature": 0.0, "seed": 42}

# The raw baseline's remote end: the agent's per-line work (decode, encode, write, flush).
ECHO_LOOP = r"""
import json, sys
read, out = sys.stdin.buffer.readline, sys.stdout.buffer
out.write(b'{"ready":true}\n')
out.flush()
for line in iter(read, b""):
    msg = json.loads(line)
    reply = {"v": 1, "type": "result", "id": msg["id"], "result": msg["task"]["payload"]}
    out.write((json.dumps(reply, separators=(",", ":")) + "\n").encode())
    out.flush()
"""

Progress = Callable[[str], None]


@dataclass
class HostResult:
    host: str
    kind: str
    status: str = "ok"
    connect_ready_ms: float | None = None
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    tokens_per_s: float | None = None
    tokens_note: str | None = None
    gpu: str | None = None


def run(
    profile: Profile,
    model: str | None = None,
    echo: int = 10000,
    window: int = 256,
    telemetry_s: float = 10.0,
    progress: Progress = lambda _s: None,
) -> dict[str, Any]:
    if not profile.hosts:
        raise InputError(f"profile {profile.name} has no hosts; add one with `bitinglip hosts add`")
    if model is not None:
        check_name(profile, model)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as tmp:
        bench = replace(profile, data_dir=Path(tmp))
        links = [HostLink(h, _transport(profile, bench, h)) for h in profile.hosts]
        try:
            progress(f"[1/3] {len(links)} hosts at once: connect, round trip, tokens")
            results = _per_host(links, model)
            ok = [link for link, r in zip(links, results, strict=True) if r.status == "ok"]
            pipelined = _pipelined(ok, echo, window, progress)
        finally:
            _close(links)
        progress(f"[3/3] end to end over {len(ok)} hosts, then control CPU for {telemetry_s:g} s")
        whole = _fleet(replace(bench, hosts=tuple(link.host for link in ok)), echo, telemetry_s)
    ready = [r.connect_ready_ms for r in results if r.connect_ready_ms is not None]
    return {
        "hosts": [asdict(r) for r in results],
        "hosts_ok": len(ok),
        "echo": echo,
        "window": window,
        "connect_ready_ms_p50": round(statistics.median(ready), 1) if ready else None,
        **whole,
        **pipelined,
    }


def _transport(profile: Profile, bench: Profile, host: HostConfig) -> Transport:
    if host.kind == "ssh":
        from bitinglip.control.transport import bootstrap
        from bitinglip.control.transport.remote import RemoteTransport

        return RemoteTransport(bench, host, bootstrap.local_bundle(bench))
    model_dir = host.model_dir or models_dir(profile)  # the real cache, not the temp one
    return LocalTransport(host.name, ["--host-name", host.name, "--model-dir", str(model_dir)])


# -- one host through its session -----------------------------------------------------------


def _per_host(links: list[HostLink], model: str | None) -> list[HostResult]:
    if not links:
        return []
    with ThreadPoolExecutor(max_workers=len(links), thread_name_prefix="bench-host") as pool:
        return list(pool.map(lambda link: _measure(link, model), links))


def _measure(link: HostLink, model: str | None) -> HostResult:
    result = HostResult(link.host.name, link.host.kind)
    try:
        result.connect_ready_ms = round(link.start(), 1)
        samples = []
        for i in range(RTT_SAMPLES):
            reply, seconds = link.request("echo", {"i": i})
            if reply["type"] != "result":
                raise HostFailed(f"echo failed: {why(reply)}")
            samples.append(seconds * 1000)
        samples.sort()
        result.rtt_p50_ms = round(statistics.median(samples), 3)
        result.rtt_p99_ms = round(samples[max(int(len(samples) * 0.99) - 1, 0)], 3)
        result.tokens_per_s, result.tokens_note = _tokens(link, model)
        result.gpu = _gpu(link.session)
    except HostFailed as exc:
        result.status = str(exc)
    return result


def _tokens(link: HostLink, model: str | None) -> tuple[float | None, str | None]:
    """Tokens/s of one short greedy generate (after a warm-up that loads the model)."""
    if model is None:
        return None, "no --model given"
    if "generate" not in link.session.kinds():
        return None, "no llama-cpp-python on the host (`bitinglip hosts setup --runtime`)"
    spec = _model_on(link, model)
    if isinstance(spec, str):
        return None, spec
    link.request("generate", {**GENERATE, "max_tokens": 4}, spec, GENERATE_TIMEOUT_S)
    reply, seconds = link.request("generate", GENERATE, spec, GENERATE_TIMEOUT_S)
    if reply["type"] != "result":
        return None, f"generate failed: {why(reply)}"
    tokens = reply["result"]["usage"]["completion_tokens"]
    return round(tokens / seconds, 2), None


def _model_on(link: HostLink, model: str) -> dict[str, str] | str:
    """The `run` message's model for this host, or why the host does not have it."""
    hello = link.session.hello or {}
    if link.host.kind == "ssh":
        if model not in hello.get("models", []):
            return f"{model} is not in the host's model dir {hello.get('model_dir')}"
        return {"name": model, "path": f"{hello.get('model_dir')}/{model}.gguf"}
    path = Path(str(hello.get("model_dir"))) / f"{model}.gguf"
    if model.endswith(".gguf"):
        path = Path(model).expanduser().resolve()
    if not path.is_file():
        return f"{model} is not on this machine yet (`bitinglip run {model} ...` fetches it)"
    return {"name": path.stem, "path": str(path)}


def _gpu(session: AgentSession) -> str:
    deadline = time.monotonic() + TELEMETRY_WAIT_S  # the agent pushes at 1 Hz
    while session.telemetry is None and time.monotonic() < deadline:
        time.sleep(0.05)
    gpus = (session.telemetry or {}).get("gpus") or []
    return str(gpus[0].get("name") or "unnamed") if gpus else "none"


def _close(links: list[HostLink]) -> None:
    with ThreadPoolExecutor(max_workers=max(len(links), 1)) as pool:
        list(pool.map(HostLink.close, links))


# -- fleet-wide -----------------------------------------------------------------------------


def _pipelined(ok: list[HostLink], n: int, window: int, progress: Progress) -> dict[str, Any]:
    """Pipelined echo through the session and the raw asyncssh baseline, on one SSH host."""
    link = next((link for link in ok if link.host.kind == "ssh"), None)
    out: dict[str, Any] = dict.fromkeys(
        ("ssh_echo_host", "ssh_echo_per_s", "raw_asyncssh_per_s", "ratio", "refill")
    ) | {"ssh_echo_rounds": [], "raw_asyncssh_rounds": []}
    if link is None:
        return out
    refill = max(window // REFILL_PART, 1)
    out.update(ssh_echo_host=link.host.name, refill=refill)
    progress(f"[2/3] {n} pipelined echoes on {link.host.name}, session vs raw asyncssh")
    from bitinglip.bench.echo_rate import raw_echo_rate
    from bitinglip.control.transport import ssh
    from bitinglip.control.transport.remote import SshLoop

    loop = SshLoop.get()
    argv = [link.host.python, "-c", ECHO_LOOP]
    conn = None
    try:
        conn = loop.submit(ssh.connect(link.host)).result(REPLY_TIMEOUT_S)
        for _ in range(ROUNDS):  # alternating, so drift in the machine's speed hits both
            out["ssh_echo_rounds"].append(round(link.pipeline(n, window, refill)))
            coro = raw_echo_rate(conn, argv, n, window, refill=refill, line=_run_line)
            out["raw_asyncssh_rounds"].append(round(loop.submit(coro).result(REPLY_TIMEOUT_S)))
    except (BitinglipError, TimeoutError) as exc:
        progress(f"pipelined echo on {link.host.name} failed: {one_line(str(exc))}")
        return out
    finally:
        if conn is not None:
            loop.loop.call_soon_threadsafe(conn.close)
    ours, raw = (
        statistics.median(out["ssh_echo_rounds"]),
        statistics.median(out["raw_asyncssh_rounds"]),
    )
    return out | {
        "ssh_echo_per_s": round(ours),
        "raw_asyncssh_per_s": round(raw),
        "ratio": round(ours / raw, 3),
    }


def _run_line(i: int) -> bytes:
    """The line AgentSession.run writes for echo run i."""
    return protocol.encode("run", f"{i}.1", task={"id": i, "kind": "echo", "payload": {"i": i}})


def _fleet(profile: Profile, n: int, telemetry_s: float) -> dict[str, Any]:
    """End to end through a real queue and control loop, then the idle control plane's CPU."""
    out: dict[str, Any] = {
        "e2e_per_s": None,
        "e2e_hosts_used": None,
        "control_cpu_percent": None,
        "telemetry_hosts": None,
        "reconnect_ready_ms_p50": None,
        "telemetry_s": telemetry_s,
    }
    if not profile.hosts:
        return out
    with open_control_plane(profile) as plane, plane.embedded() as loop:
        assert loop is not None and loop.dispatcher is not None  # a fresh database: ours
        agents = loop.dispatcher.agents
        _wait(lambda: all(a.session is not None and a.session.ready for a in agents), "", 0.01)
        again = [_ready_ms(a.session) for a in agents if a.session is not None and a.session.ready]
        out["reconnect_ready_ms_p50"] = round(statistics.median(again), 1) if again else None
        start = time.perf_counter()
        ids = plane.submit_many([TaskSpec(kind="echo", payload={"i": i}) for i in range(n)])
        plane.wait(ids[-1], timeout=REPLY_TIMEOUT_S)
        _wait(lambda: plane.status()["tasks"]["succeeded"] >= n, "every echo task", 0.002)
        elapsed = time.perf_counter() - start
        done = plane.tasks(state=TaskState.SUCCEEDED, limit=n)
        out["e2e_per_s"] = round(n / elapsed)
        out["e2e_hosts_used"] = len({t.ran_on for t in done})
        time.sleep(SETTLE_S)
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(telemetry_s)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        out["control_cpu_percent"] = round(cpu / wall * 100, 2)
        out["telemetry_hosts"] = sum(
            1
            for a in agents
            if a.session is not None
            and a.session.ready
            and a.session.telemetry_at is not None
            and time.time() - a.session.telemetry_at < 2.5
        )
    return out


def _ready_ms(session: AgentSession) -> float:
    """A dispatcher's session: construction (then start) to the loop handling its `hello`."""
    return ((session.hello_at or session.started_at) - session.started_at) * 1000


def _wait(ready: Callable[[], bool], what: str, every: float) -> None:
    """Until `ready()`; after REPLY_TIMEOUT_S, HostFailed naming `what` (or, without, go on)."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            if not what:
                return
            raise HostFailed(f"bench fleet: waited {REPLY_TIMEOUT_S:g} s for {what}")
        time.sleep(every)
