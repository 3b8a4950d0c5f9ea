"""The cap on what one /v1/embeddings request may ask for: inputs × the model's embedding width.

An answer holds one vector of `embedding_length` floats per input (~14 bytes each as JSON), so
the count of floats, not of inputs, is what costs the agent, the database and the client. A
request may ask for up to MAX_EMBED_FLOATS (2^20: 1,638 inputs of gemma-3-270m's 640, 256 of a
4096-wide model); more is a 400 naming the limit, what was asked and what to do.

The width comes from the GGUF header (`{arch}.embedding_length`), read once per model from a
copy on this machine (a `pypi:` alias's assembled file, or a registered copy on a local host:
`plane.models.embedding_width`).
A model with no copy here has its width learned from its first answer; until then it is taken
as FALLBACK_WIDTH (said so in the refusal).
"""

from __future__ import annotations

import threading

from bitinglip.control import ControlPlane
from bitinglip.gateway.errors import bad_request

MAX_EMBED_FLOATS = 1 << 20
FALLBACK_WIDTH = 4096


class Widths:
    """Each model's embedding width, as far as this gateway knows it."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()  # read in the bridge's thread, learned on the event loop

    def width(self, plane: ControlPlane, model: str) -> int | None:
        """The model's width (reading a local copy's header the first time), or None."""
        with self._lock:
            known = self._known.get(model)
        if known is not None:
            return known
        found = plane.models.embedding_width(model)
        if found is not None:
            self.learn(model, found)
        return found

    def learn(self, model: str, width: int) -> None:
        if width > 0:
            with self._lock:
                self._known[model] = width

    def check(self, plane: ControlPlane, model: str, inputs: int) -> None:
        """400 when `inputs` vectors of the model would be more than MAX_EMBED_FLOATS floats."""
        width = self.width(plane, model)
        floats = inputs * (width or FALLBACK_WIDTH)
        if floats <= MAX_EMBED_FLOATS:
            return
        per = MAX_EMBED_FLOATS // (width or FALLBACK_WIDTH)
        known = (
            f"{width} floats each"
            if width is not None
            else f"taken as {FALLBACK_WIDTH} floats each until its first answer tells its width"
        )
        raise bad_request(
            f"this request asks for {inputs} embeddings of {model} ({known}): {floats:,} floats, "
            f"over the limit of {MAX_EMBED_FLOATS:,} per request; send at most {per} inputs per "
            "request (split the list)",
            param="input",
            code="request_too_large",
        )
