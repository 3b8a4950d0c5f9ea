"""Continuous batching: up to `parallel` requests decoded together, one sequence each, in one
llama.cpp context and one batch per step (what llama-server's `--parallel` does).

Between steps new requests join and finished ones leave, their sequence's KV cache dropped at
once. A step is one llama_decode: one token of every generating sequence and the next chunk of
each new prompt together. Each sequence keeps its own sampler chain (temperature,
top-p/k, penalties, seed), max_tokens, stop strings (text that may be the start of one is held
back until it is not), and cancel; its text goes out in coalesced `chunk` lines, its result with
usage and timings. Like llama-server's slots, a sequence's numbers (so its text at a near tie)
may differ with what runs beside it: the same requests arriving together give the same texts.
"""

from __future__ import annotations

import codecs
import collections
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bitinglip_agent.engine import N_BATCH, Engine, Sampler
from bitinglip_agent.prompts import Prompt, Prompter

CHUNK_EVERY_S = 0.05

Emit = Callable[..., None]


@dataclass
class Sequence:
    """One request in the batch."""

    run_id: str
    seq: int
    prompt: list[int]
    stops: list[str]
    max_tokens: int | None
    sampler: Sampler
    start: float
    fed: int = 0  # prompt tokens decoded so far
    next_token: int = -1  # the sampled token to decode next
    generated: int = 0
    text: str = ""
    sent: int = 0  # characters of `text` that went out (or are pending)
    pending: list[str] = field(default_factory=list)
    flushed_at: float = 0.0
    first_at: float | None = None
    finish: str | None = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def pos(self) -> int:
        """The position of the sampled token to decode next (the first goes after the prompt)."""
        return len(self.prompt) + self.generated - 1


class Batcher:
    """Serves generate and chat requests from `requests` until it yields None (exit)."""

    def __init__(
        self,
        engine: Engine,
        prompter: Prompter,
        requests: queue.Queue[list[dict[str, Any]] | None],
        canceled: set[str],
        emit: Emit,
    ) -> None:
        self.engine = engine
        self.prompter = prompter
        self.requests = requests
        self.canceled = canceled
        self.emit = emit
        self.active: list[Sequence] = []
        self.free = list(range(engine.parallel - 1, -1, -1))  # sequence ids, the lowest first
        self.backlog: collections.deque[dict[str, Any]] = collections.deque()
        self.exiting = False

    def serve(self) -> None:
        while not (self.exiting and not self.active):
            self._admit()
            self._drop_canceled()
            if self.active:
                self._step()

    # -- joining and leaving ---------------------------------------------------------------

    def _admit(self) -> None:
        """Take the requests waiting (wait for some when nothing runs) while a sequence is free."""
        while self.free and not self.exiting:
            if not self.backlog:
                try:
                    burst = self.requests.get(block=not self.active)
                except queue.Empty:
                    return
                if burst is None:
                    self.exiting = True
                    return
                self.backlog.extend(burst)
            self._start(self.backlog.popleft())

    def _start(self, msg: dict[str, Any]) -> None:
        run_id, start = str(msg.get("id")), time.perf_counter()
        try:
            prompt = self._prompt(msg)
            if len(prompt.tokens) >= self.engine.n_ctx_seq:
                raise ValueError(
                    f"Requested tokens ({len(prompt.tokens)}) exceed context window of"
                    f" {self.engine.n_ctx_seq}"
                )
            sampler = self.engine.sampler(prompt.params)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            self.emit("error", id=run_id, code="inference_failed", message=_line(exc))
            self.canceled.discard(run_id)
            return
        seq = Sequence(
            run_id=run_id,
            seq=self.free.pop(),
            prompt=prompt.tokens,
            stops=prompt.stops,
            max_tokens=prompt.max_tokens,
            sampler=sampler,
            start=start,
        )
        self.active.append(seq)

    def _prompt(self, msg: dict[str, Any]) -> Prompt:
        op, payload = msg.get("op"), msg.get("payload") or {}
        if op == "generate":
            return self.prompter.completion(payload)
        if op == "chat":
            return self.prompter.chat(payload)
        raise ValueError(f"unknown op {op!r}")

    def _drop_canceled(self) -> None:
        for seq in list(self.active):
            if seq.run_id in self.canceled:
                self._finish(seq, "canceled")

    def _finish(self, seq: Sequence, reason: str) -> None:
        """The sequence leaves: its text out, its KV cache and sampler freed, its result sent."""
        seq.finish = reason
        seq.pending.append(seq.text[seq.sent :])  # what was held back for a stop string
        seq.sent = len(seq.text)
        self._flush(seq)
        self.active.remove(seq)
        self.engine.forget(seq.seq)
        self.engine.free_sampler(seq.sampler)
        self.free.append(seq.seq)
        self.free.sort(reverse=True)
        self.canceled.discard(seq.run_id)
        self.emit("done", id=seq.run_id, result=_result(seq))

    # -- one decode step -------------------------------------------------------------------

    def _step(self) -> None:
        """One llama_decode: a token of every generating sequence, then the next prompt chunk of
        each new one while the batch has room (a new arrival costs no decode of its own), then
        the next token of each sequence whose logits it made. A sequence's logits do not depend
        on its neighbours' (a row per token, a KV cache per sequence: see engine.Engine)."""
        entries: list[tuple[int, int, int, bool]] = []
        sampled: list[Sequence] = []
        for seq in self.active:
            if seq.fed == len(seq.prompt):
                entries.append((seq.next_token, seq.pos, seq.seq, True))
                sampled.append(seq)
        for seq in self.active:
            room = N_BATCH - len(entries)
            if seq.fed == len(seq.prompt) or room <= 0:
                continue
            chunk = seq.prompt[seq.fed : seq.fed + room]
            last = seq.fed + len(chunk) == len(seq.prompt)
            entries.extend((token, seq.fed + i, seq.seq, False) for i, token in enumerate(chunk))
            seq.fed += len(chunk)
            if last:
                token, pos, seq_id, _ = entries[-1]
                entries[-1] = (token, pos, seq_id, True)
                sampled.append(seq)
        if not self._decoded(entries, sampled):
            return
        now = time.perf_counter()
        for seq in self.active:
            if seq.pending and now - seq.flushed_at >= CHUNK_EVERY_S:
                self._flush(seq)

    def _decoded(self, entries: list[tuple[int, int, int, bool]], sampled: list[Sequence]) -> bool:
        """Decode `entries`, then sample the next token of each of `sampled` (whose logits are
        the entries', in order); False when llama_decode failed (every sequence did)."""
        status = self.engine.decode(entries)
        if status != 0:
            self._failed_step(status)
            return False
        now = time.perf_counter()
        at = [i for i, entry in enumerate(entries) if entry[3]]
        for seq, index in zip(sampled, at, strict=True):
            self._sampled(seq, self.engine.sample(seq.sampler, index), now)
        return True

    def _failed_step(self, status: int) -> None:
        """llama_decode failed: every sequence of the batch fails; the context is cleared."""
        message = f"llama_decode failed with status {status}"
        for seq in list(self.active):
            self.active.remove(seq)
            self.engine.forget(seq.seq)
            self.engine.free_sampler(seq.sampler)
            self.free.append(seq.seq)
            self.canceled.discard(seq.run_id)
            self.emit("error", id=seq.run_id, code="inference_failed", message=message)
        self.free.sort(reverse=True)

    def _sampled(self, seq: Sequence, token: int, now: float) -> None:
        if self.engine.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        seq.next_token = token
        seq.first_at = seq.first_at or now
        seq.text += seq.decoder.decode(self.engine.piece(token))
        if self._stopped(seq):
            self._finish(seq, "stop")
        elif self._at_length(seq):
            self._finish(seq, "length")

    def _at_length(self, seq: Sequence) -> bool:
        """max_tokens reached, or no room left for the sampled token in its context."""
        if seq.max_tokens is not None and seq.generated >= seq.max_tokens:
            return True
        return seq.pos >= self.engine.n_ctx_seq

    def _stopped(self, seq: Sequence) -> bool:
        """Whether a stop string ends the text now (cut before it); else the text that cannot
        be the start of one is made ready to send."""
        text = seq.text
        if seq.stops:
            # A stop string starts at or after `sent`: text that may start one is held back.
            found = [i for i in (text.find(s, seq.sent) for s in seq.stops) if i >= 0]
            if found:
                cut = min(found)
                seq.text = text[:cut]
                seq.pending.append(text[seq.sent : cut])
                seq.sent = cut
                return True
            held = _held_back(text, seq.stops)
        else:
            held = 0
        ready = len(text) - held
        if ready > seq.sent:
            seq.pending.append(text[seq.sent : ready])
            seq.sent = ready
            if seq.first_at is not None and seq.flushed_at == 0.0:
                self._flush(seq)  # the first text at once
        return False

    def _flush(self, seq: Sequence) -> None:
        text = "".join(seq.pending)
        seq.pending.clear()
        seq.flushed_at = time.perf_counter()
        if text:
            self.emit("chunk", id=seq.run_id, text=text)


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` may be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _result(seq: Sequence) -> dict[str, Any]:
    end = time.perf_counter()
    first = seq.first_at
    prompt = len(seq.prompt)
    return {
        "text": seq.text,
        "finish_reason": seq.finish or "stop",
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": seq.generated,
            "total_tokens": prompt + seq.generated,
        },
        "timings": {
            "ttft_s": None if first is None else first - seq.start,
            "total_s": end - seq.start,
            "tokens_per_s": seq.generated / (end - first) if first and end > first else None,
        },
    }


def _line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
