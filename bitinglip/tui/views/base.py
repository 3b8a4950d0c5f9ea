"""What every view is: `fetch` reads on the backend thread, `show` paints on the UI thread.

The app refreshes the visible view about once a second (`reload`). A reload runs in an
exclusive worker of the view's group, so refreshes never overlap or queue up: a slow read is
replaced by the next, and a keypress is never behind a query. Each refresh posts `Refreshed`
with its timings (the benchmark and the tests listen for it).

Keys: a view lists the console actions it offers in `ACTIONS` (names from `[keys]` in the
profile, see `bitinglip.config_sections.DEFAULT_KEYS`); the base binds them to the profile's keys
and hides the ones in `MUTATING` when the console is read-only.

Attributes down, messages up: a view gets what it reads (the backend, the keys, the read-only
flag, the clock) as its `Context` when the app builds it, and posts what the app must do
(`bitinglip.tui.messages`); it never imports the app.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from textual.containers import Vertical
from textual.message import Message

from bitinglip.control import ControlPlane
from bitinglip.tui.context import Context

# Actions that change state: they ask first (where destructive) and are hidden when read-only.
MUTATING = frozenset(
    {"cancel", "retry", "priority", "submit", "batch", "pull", "remove", "load", "unload"}
)


class View(Vertical):
    """Subclass with `VIEW`, `title`, `ACTIONS`, `fetch` and `show`."""

    VIEW: ClassVar[str]  # its name: the `:` command that shows it
    title: ClassVar[str]
    ACTIONS: ClassVar[dict[str, str]] = {}  # action -> footer description

    class Refreshed(Message):
        """A refresh finished: `fetch_ms` on the backend thread, `show_ms` painting; `started`
        is when its read began (`time.perf_counter()`), so a waiter can tell a refresh that read
        after its own writes from one already under way."""

        def __init__(self, view: str, fetch_ms: float, show_ms: float, started: float) -> None:
            super().__init__()
            self.view, self.fetch_ms, self.show_ms = view, fetch_ms, show_ms
            self.started = started

    def __init__(self, context: Context) -> None:
        super().__init__(id=f"view-{self.VIEW}")
        self.context = context
        self.filter_text = ""

    def on_mount(self) -> None:
        keys = self.context.keys
        for action, description in self.ACTIONS.items():
            self._bindings.bind(keys[action], action, description)

    def focus_main(self) -> None:
        """Focus the view's main widget (its first focusable one), or nothing."""
        for widget in self.query("*"):
            if widget.focusable:
                widget.focus()
                return
        self.app.set_focus(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in MUTATING and self.context.readonly)

    # -- refreshing ------------------------------------------------------------------------

    def fetch(self, plane: ControlPlane) -> Any:
        """Read what `show` needs. Runs on the backend thread: touch no widget here."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Paint `data` (from `fetch`). Runs on the UI thread."""
        raise NotImplementedError

    def reload(self) -> None:
        self.run_worker(
            self._load,  # type: ignore[arg-type]  # mypy infers Never from WorkType
            group=f"load:{self.VIEW}",
            exclusive=True,
            exit_on_error=False,
            description=f"refresh {self.VIEW}",
        )

    async def _load(self) -> None:
        started = time.perf_counter()
        data = await self.context.backend.call(self.fetch)
        fetched = time.perf_counter()
        self.show(data)
        shown = time.perf_counter()
        self.post_message(
            self.Refreshed(self.VIEW, (fetched - started) * 1e3, (shown - fetched) * 1e3, started)
        )

    def set_filter(self, text: str) -> None:
        """`/` filters the view (what a filter means is the view's); then refresh."""
        self.filter_text = text.strip()
        self.reload()

    @property
    def crumbs(self) -> list[str]:
        """The breadcrumb path below the profile, shown in the header."""
        crumbs = [self.title]
        if self.filter_text:
            crumbs.append(f"/{self.filter_text}")
        return crumbs
