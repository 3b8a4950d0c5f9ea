"""Hub search: a query line and the matching repos; from a result, its fit table or a pull.

The search is `search_hub` (one request to $HF_ENDPOINT) in a thread worker; a hub that cannot
be reached, refuses, or is gated becomes one line on the screen and in a notification.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from bitinglip.control import RepoSummary, hub_endpoint, search_hub
from bitinglip.errors import BitinglipError
from bitinglip.readable import error_line
from bitinglip.tui.context import Context
from bitinglip.tui.messages import OpenPull, Reported

LIMIT = 50
_DIALOG_CSS = """
.model-dialog {
    width: 96%;
    height: 90%;
    border: round $primary;
    background: $surface;
    padding: 0 1;
}
#pull-form {
    width: 72;
    height: auto;
}
.dialog-title {
    text-style: bold;
    margin-bottom: 1;
}
.dialog-status {
    height: auto;
    margin: 1 0;
}
.dialog-buttons {
    height: auto;
    margin-top: 1;
}
.dialog-buttons Button {
    margin-right: 2;
}
"""


def dialog_css(screen: str) -> str:
    """The CSS of a model dialog screen (centred; `.model-dialog` boxes, titles, buttons)."""
    return f"{screen} {{ align: center middle; }}" + _DIALOG_CSS


class SearchScreen(ModalScreen[None]):
    """Enter searches; on a result, Enter or the fit key shows its fit table, the pull key pulls."""

    DEFAULT_CSS = dialog_css("SearchScreen")
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]
    crumb = "search"

    def __init__(self, context: Context, query: str = "") -> None:
        super().__init__()
        self.context = context
        self.query_text = query
        self.results: list[RepoSummary] = []

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "pull" and self.context.readonly)  # hidden when read-only

    def compose(self) -> ComposeResult:
        with Vertical(classes="model-dialog"):
            yield Static(
                f"Search the hub ({hub_endpoint()}) for GGUF repos", classes="dialog-title"
            )
            yield Input(self.query_text, placeholder="text in the repo id, e.g. qwen2.5", id="q")
            yield Static("Enter searches.", id="search-status", classes="dialog-status")
            table: DataTable[str] = DataTable(id="search-results", cursor_type="row")
            table.add_columns("repo", "downloads", "likes", "updated", "gated")
            yield table

    def on_mount(self) -> None:
        keys = self.context.keys
        self._bindings.bind(keys["fit"], "fit", "fit table")
        self._bindings.bind(keys["pull"], "pull", "pull")
        self.query_one("#q", Input).focus()
        if self.query_text:
            self.search(self.query_text)

    @on(Input.Submitted, "#q")
    def _submitted(self, event: Input.Submitted) -> None:
        self.search(event.value.strip())

    def search(self, query: str) -> None:
        self.query_one("#search-status", Static).update(f"searching for {query!r}...")
        self.run_worker(
            self._search(query),
            group="hub-search",
            exclusive=True,
            exit_on_error=False,
            description="hub search",
        )

    async def _search(self, query: str) -> None:
        status = self.query_one("#search-status", Static)
        try:
            found = await asyncio.to_thread(search_hub, query, limit=LIMIT)
        except BitinglipError as exc:
            status.update(f"[b]hub error:[/b] {error_line(exc)}")
            self.post_message(Reported("search", False, error_line(exc)))
            return
        self.results = found
        table = self.query_one("#search-results", DataTable)
        table.clear()
        for r in found:
            updated = (r.updated or "-")[:10]
            table.add_row(r.id, str(r.downloads), str(r.likes), updated, "gated" if r.gated else "")
        line = f"{len(found)} repo(s) match {query!r}" + ("" if found else " with GGUF files")
        status.update(line + ("; Enter shows a repo's fit table" if found else ""))
        if found:
            table.focus()
        self.post_message(Reported("search", True, line))

    def _highlighted(self) -> str | None:
        table = self.query_one("#search-results", DataTable)
        if not self.results or not 0 <= table.cursor_row < len(self.results):
            return None
        return self.results[table.cursor_row].id

    @on(DataTable.RowSelected, "#search-results")
    def _selected(self) -> None:
        self.action_fit()

    def action_fit(self) -> None:
        from bitinglip.tui.views.model_fit import FitScreen

        self.app.push_screen(FitScreen(self.context, self._highlighted() or ""))

    def action_pull(self) -> None:
        self.post_message(OpenPull(self._highlighted() or ""))
