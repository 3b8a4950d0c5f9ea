"""The command palette (ctrl+p): every view, and the current view's actions."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from bitinglip.tui.app import ConsoleApp


class ViewCommands(Provider):
    def _entries(self) -> list[tuple[str, str, object]]:
        app: ConsoleApp = self.app  # type: ignore[assignment]
        entries: list[tuple[str, str, object]] = []
        for view in app.views.values():
            entries.append(
                (f"Show {view.title}", f":{view.VIEW}", partial(app.show_view, view.VIEW))
            )
        current = app.current
        for action, description in current.ACTIONS.items():
            if current.check_action(action, ()):
                run = partial(app.run_action, action, current)
                entries.append((f"{current.title}: {description}", app.keys[action], run))
        return entries

    async def discover(self) -> Hits:
        for title, help_text, run in self._entries():
            yield DiscoveryHit(title, run, help=help_text)  # type: ignore[arg-type]

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)  # type: ignore[arg-type]
