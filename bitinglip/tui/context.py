"""What the console hands every view and screen when it builds them (attributes down): the
backend (the control plane's thread), the profile's keys, whether it is read-only, the clock and
the tick. A view never reaches up to the app for these; what it needs the app to do it posts as
a message (`bitinglip.tui.messages`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bitinglip.config import Profile
from bitinglip.tui.backend import Backend


@dataclass(frozen=True)
class Context:
    backend: Backend
    keys: Mapping[str, str]  # console action -> Textual key name (the profile's [keys])
    now: Callable[[], float] = time.time  # the clock for ages ("3s ago"); snapshot tests fix it
    tick_s: float = 1.0  # how often the visible view and screen refresh

    @property
    def readonly(self) -> bool:
        """A read-only console hides and refuses the actions that change state."""
        return self.backend.readonly

    @property
    def profile(self) -> Profile:
        return self.backend.profile
