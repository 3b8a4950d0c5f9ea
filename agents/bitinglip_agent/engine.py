"""The generate child's llama.cpp: one model and one context holding `parallel` sequences, each
with its own KV cache of n_ctx tokens, through llama-cpp-python's low-level (C) API.

Only the inference child imports this (it imports llama_cpp). Settings are the agent's names
(`settings.py`); the context's effective values are read back from llama.cpp (`facts`).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any, Callable

N_BATCH = 512  # tokens per llama_decode (prompt chunks and generated tokens together)
PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama-cpp-python's default)
SPLIT_MODES = {"none": "NONE", "layer": "LAYER", "row": "ROW"}


class EngineError(RuntimeError):
    """The model or its context could not be made."""


@dataclass(frozen=True)
class Sampler:
    """A sequence's sampler chain; `greedy` when it is plain argmax (temperature 0, penalties
    neutral): then the token is the logits' argmax, read without the chain's copy of the whole
    vocabulary (llama_sampler_sample's cost, per sequence per step, on a 262k vocabulary)."""

    chain: Any
    greedy: bool


class Engine:
    """A loaded model, its vocabulary and a context of `parallel` sequences; one batch."""

    def __init__(self, path: str, settings: dict[str, Any], threads: int) -> None:
        import llama_cpp
        import numpy  # llama-cpp-python's own dependency

        self.ll = ll = llama_cpp
        self._np = numpy
        # llama-cpp-python's log callback prints below this level only (Llama(verbose=False)):
        # llama.cpp's load chatter would bury a crash's last words on stderr.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        gpu_layers = int(settings["gpu_layers"])
        mparams.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
        mparams.split_mode = getattr(ll, f"LLAMA_SPLIT_MODE_{SPLIT_MODES[settings['split_mode']]}")
        mparams.main_gpu = int(settings["main_gpu"])
        if settings["tensor_split"]:
            values = [float(x) for x in settings["tensor_split"]][: ll.LLAMA_MAX_DEVICES]
            self._split = (ctypes.c_float * ll.LLAMA_MAX_DEVICES)(*values)
            mparams.tensor_split = self._split
        # No repacked CPU weights: with them a token's logits depend on how many rows its
        # matmul had (gemm from 4 rows, gemv below), so a request's text would depend on what
        # else ran beside it. Without them a decode step gives each sequence the same logits
        # whatever the batch (and on a small CPU it batched faster, measured).
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = False
        self.model = ll.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {path}")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.parallel = int(settings["parallel"])
        n_ctx = int(settings["n_ctx"]) or int(ll.llama_model_n_ctx_train(self.model))
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * self.parallel
        cparams.n_batch = cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = self.parallel
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = (
            ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if settings["flash_attn"]
            else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.type_k = getattr(ll, f"GGML_TYPE_{settings['cache_type_k'].upper()}")
        cparams.type_v = getattr(ll, f"GGML_TYPE_{settings['cache_type_v'].upper()}")
        cparams.kv_unified = False  # a cache per sequence: one cannot starve the others
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise EngineError(f"llama.cpp could not make a context of {cparams.n_ctx} tokens")
        # llama.cpp's per-sequence KV removal: llama_memory_seq_rm since mid 2025, before it
        # llama_kv_self_seq_rm on the context.
        self._seq_rm: Callable[[int], Any]
        if hasattr(ll, "llama_memory_seq_rm"):
            memory = ll.llama_get_memory(self.ctx)
            self._seq_rm = lambda seq: ll.llama_memory_seq_rm(memory, seq, -1, -1)
        else:
            seq_rm = getattr(ll, "llama_kv_self_seq_rm")  # noqa: B009 (not in this version)
            self._seq_rm = lambda seq: seq_rm(self.ctx, seq, -1, -1)
        self.n_ctx_seq = int(ll.llama_n_ctx_seq(self.ctx))
        self.batch = ll.llama_batch_init(N_BATCH, 0, 1)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}

    def facts(self) -> dict[str, Any]:
        """The context's effective size, sequences and threads, as llama.cpp reports them."""
        ll = self.ll
        return {
            "n_ctx": self.n_ctx_seq,
            "n_ctx_total": int(ll.llama_n_ctx(self.ctx)),
            "parallel": int(ll.llama_n_seq_max(self.ctx)),
            "threads": int(ll.llama_n_threads(self.ctx)),
            "threads_batch": int(ll.llama_n_threads_batch(self.ctx)),
            "n_batch": int(ll.llama_n_batch(self.ctx)),
        }

    # -- text ------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        size = len(text) + 8
        while True:
            buf = (self.ll.llama_token * size)()
            n = self.ll.llama_tokenize(
                self.vocab, text, len(text), buf, size, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            size = -n

    def piece(self, token: int) -> bytes:
        """The bytes of a token as text (control tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self.ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = self._pieces[token] = buf.raw[: max(n, 0)]
        return cached

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self.ll.llama_vocab_get_text(self.vocab, token) or b"").decode(
            errors="replace"
        )

    def bos(self) -> int:
        return int(self.ll.llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        return int(self.ll.llama_vocab_eos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self.ll.llama_vocab_is_eog(self.vocab, token))

    def chat_template(self) -> str | None:
        raw = self.ll.llama_model_chat_template(self.model, None)
        return raw.decode(errors="replace") if raw else None

    # -- sampling and decoding -------------------------------------------------------------

    def sampler(self, params: dict[str, Any]) -> Sampler:
        """A sampler chain of its own for one sequence, like llama-cpp-python's: penalties,
        then greedy at temperature 0, else top-k, typical, top-p, min-p, temperature, seeded."""
        ll = self.ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        add = ll.llama_sampler_chain_add
        penalties: tuple[Any, ...] = (
            PENALTY_LAST_N,
            float(params["repeat_penalty"]),
            float(params["frequency_penalty"]),
            float(params["presence_penalty"]),
        )
        if len(getattr(ll.llama_sampler_init_penalties, "argtypes", ()) or ()) == 5:
            penalties = (self.n_vocab, *penalties)  # this build's llama.h still takes n_vocab
        add(chain, ll.llama_sampler_init_penalties(*penalties))
        temp = float(params["temperature"])
        seed = params.get("seed")
        seed = ll.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
        if temp == 0.0:
            add(chain, ll.llama_sampler_init_greedy())
        elif temp < 0.0:
            add(chain, ll.llama_sampler_init_dist(seed))
        else:
            add(chain, ll.llama_sampler_init_top_k(int(params["top_k"])))
            add(chain, ll.llama_sampler_init_typical(float(params["typical_p"]), 1))
            add(chain, ll.llama_sampler_init_top_p(float(params["top_p"]), 1))
            add(chain, ll.llama_sampler_init_min_p(float(params["min_p"]), 1))
            add(chain, ll.llama_sampler_init_temp(temp))
            add(chain, ll.llama_sampler_init_dist(seed))
        neutral = penalties[-3:] == (1.0, 0.0, 0.0)
        return Sampler(chain, greedy=temp == 0.0 and neutral)

    def sample(self, sampler: Sampler, index: int) -> int:
        """The next token from the logits of the batch's `index`th token (accepted by the
        chain). Greedy: the first largest logit, as llama.cpp's greedy sampler picks it (its
        neutral penalties keep no state that matters)."""
        if sampler.greedy:
            logits = self._np.ctypeslib.as_array(
                self.ll.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
            )
            return int(logits.argmax())
        return int(self.ll.llama_sampler_sample(sampler.chain, self.ctx, index))

    def free_sampler(self, sampler: Sampler) -> None:
        self.ll.llama_sampler_free(sampler.chain)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> int:
        """One llama_decode of (token, position, sequence, wants logits) entries; its status."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        return int(self.ll.llama_decode(self.ctx, batch))

    def forget(self, seq: int) -> None:
        """Drop a sequence's KV cache: its slot is free for the next request."""
        self._seq_rm(seq)

    def close(self) -> None:
        ll = self.ll
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)
