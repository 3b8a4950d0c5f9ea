"""Models: the registry per host (ready / loaded / pulling % / quarantined / failed), and the
profile's aliases that are not pulled yet; hub search, fit tables, pulls and removal.

Rows come from `model_rows.read_models` on the backend thread. Keys (from `[keys]`): search the
hub (`SearchScreen`), the fit table of the highlighted model's repo (`FitScreen`), pull (the
form in `model_pull`; its progress shows on the row and in the Pulls view), remove a copy (asks
which host when there are several, then to confirm). `/` filters: free text, `host:NAME`,
`state:ready|loaded|pulling|quarantined|failed|not-pulled`, `quant:Q4_K_M`, `-word` excludes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from bitinglip.control import ControlPlane
from bitinglip.errors import BitinglipError
from bitinglip.readable import error_line, human_size
from bitinglip.tui.context import Context
from bitinglip.tui.forms import confirm
from bitinglip.tui.messages import Reported
from bitinglip.tui.views.base import View
from bitinglip.tui.views.model_fit import FitScreen
from bitinglip.tui.views.model_pull import PullRequest, PullScreen, run_pull
from bitinglip.tui.views.model_remove import EVERY, HostChoiceScreen, remove_copies
from bitinglip.tui.views.model_rows import (
    ModelRow,
    ModelsData,
    keep,
    problems,
    read_models,
    row_tags,
    row_text,
)
from bitinglip.tui.views.model_search import SearchScreen

COLUMNS = ("model", "repo@commit", "file", "quant", "size")
READY_STATES = ("ready", "loaded")


class ModelsView(View):
    VIEW = "models"
    title = "Models"
    ACTIONS: ClassVar[dict[str, str]] = {
        "search": "search hub",
        "fit": "fit table",
        "pull": "pull",
        "remove": "remove",
    }

    DEFAULT_CSS = """
    ModelsView #models-summary { height: 1; padding: 0 1; color: $text-muted; }
    ModelsView #models-table { height: 1fr; }
    ModelsView #models-detail { height: auto; max-height: 3; padding: 0 1; }
    ModelsView #models-problems { height: auto; max-height: 8; padding: 0 1; color: $error; }
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.shown: list[ModelRow] = []
        self._painted: tuple[Any, ...] | None = None
        self._want: str | None = None  # a row to highlight once it shows (a pulled model)

    def compose(self) -> ComposeResult:
        yield Static("", id="models-summary", classes="summary")
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="models-detail")
        yield Static("", id="models-problems")

    def fetch(self, plane: ControlPlane) -> ModelsData:
        return read_models(plane)

    def show(self, data: Any) -> None:
        assert isinstance(data, ModelsData)
        rows = [r for r in data.rows if keep(self.filter_text, row_text(r), row_tags(r))]
        self._paint_table(data.hosts, rows)
        self.query_one("#models-summary", Static).update(summary(data, len(rows)))
        self.query_one("#models-problems", Static).update("\n".join(problems(data)))
        self._show_detail()

    @on(DataTable.RowHighlighted, "#models-table")
    def _show_detail(self) -> None:
        row = self.selected
        line = row.detail(self.context.now()) if row is not None else ""
        self.query_one("#models-detail", Static).update(line)

    def _paint_table(self, hosts: list[str], rows: list[ModelRow]) -> None:
        painted = (tuple(hosts), tuple(rows))
        if painted == self._painted:
            return
        table: DataTable[str] = self.query_one("#models-table", DataTable)
        selected = self._want or (self.selected.key if self.selected is not None else None)
        table.clear(columns=self._painted is None or self._painted[0] != painted[0])
        if not table.columns:
            table.add_columns(*COLUMNS, *hosts)
        for row in rows:
            cells = (row.name, row.ref, row.file, row.quant, human_size(row.size))
            table.add_row(*cells, *(row.cell(h) for h in hosts), key=row.key)
        self.shown, self._painted = rows, painted
        keys = [r.key for r in rows]
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)
            self._want = None if selected == self._want else self._want

    @property
    def selected(self) -> ModelRow | None:
        """The highlighted row, or None."""
        table = self.query_one("#models-table", DataTable)
        if 0 <= table.cursor_row < len(self.shown):
            return self.shown[table.cursor_row]
        return None

    # -- actions ---------------------------------------------------------------------------

    def action_search(self) -> None:
        self.app.push_screen(SearchScreen(self.context))

    def action_fit(self) -> None:
        row = self.selected
        self.app.push_screen(FitScreen(self.context, row.repo or "" if row is not None else ""))

    def action_pull(self) -> None:
        row = self.selected
        self.open_pull(row.pull_ref if row is not None else "")

    def open_pull(self, ref: str, host: str | None = None) -> None:
        """The pull form, started with `ref` (and `host`); the pull runs when it is sent."""

        def sent(request: PullRequest | None) -> None:
            if request is not None:
                while len(self.app.screen_stack) > 1:  # back to the rows, to watch it come
                    self.app.pop_screen()
                self.run_worker(
                    self._pull(request), group="pull", exit_on_error=False, description="pull"
                )

        self.app.push_screen(PullScreen(self.context.profile, ref, host), sent)

    async def _pull(self, request: PullRequest) -> None:
        try:
            line, model_id = await run_pull(self.context.backend, request)
        except BitinglipError as exc:
            self.post_message(Reported("pull", False, f"pull {request.ref}: {error_line(exc)}"))
            return
        self._want = f"model:{model_id}" if model_id is not None else None
        self.post_message(Reported("pull", True, line))
        self.reload()

    def action_remove(self) -> None:
        row = self.selected
        if row is None or row.model_id is None:
            name = row.name if row is not None else "nothing"
            self.post_message(Reported("remove", False, f"{name} is not pulled; nothing to remove"))
            return
        hosts = sorted(row.copies)
        if len(hosts) <= 1:
            self._confirm_remove(row, hosts, forget=True)
            return

        def chosen(choice: str | None) -> None:
            if choice == EVERY:
                self._confirm_remove(row, hosts, forget=True)
            elif choice is not None:
                self._confirm_remove(row, [choice], forget=False)

        self.app.push_screen(HostChoiceScreen(row.label, hosts), chosen)

    def _confirm_remove(self, row: ModelRow, hosts: list[str], forget: bool) -> None:
        assert row.model_id is not None
        model_id = row.model_id
        where = f" from {', '.join(hosts)}" if hosts else ""
        question = f"Delete {row.label} ({human_size(row.size)}){where}?"
        if forget:
            question += " The model leaves the registry."

        def remove() -> None:
            self.run_worker(
                self._remove(model_id, hosts, forget),
                group="remove",
                exit_on_error=False,
                description="remove",
            )

        confirm(self, question, remove)

    async def _remove(self, model_id: int, hosts: list[str], forget: bool) -> None:
        try:
            line = await self.context.backend.call(remove_copies, model_id, hosts, forget)
        except BitinglipError as exc:
            self.post_message(Reported("remove", False, error_line(exc)))
            return
        self.post_message(Reported("remove", True, line))
        self.reload()


def summary(data: ModelsData, shown: int) -> str:
    """Every row counts, registered model or alias, the way `bitinglip models ls` lists them:
    ready (a copy ready or loaded somewhere: the demo model after its first use), not pulled
    (no copy anywhere); then the copies and the hosts."""
    ready = sum(1 for r in data.rows if any(c.state in READY_STATES for c in r.copies.values()))
    unpulled = sum(1 for r in data.rows if not r.copies)
    copies = sum(len(r.copies) for r in data.rows)
    hosts = ", ".join(data.hosts) or "no hosts"
    line = (
        f"{plural(len(data.rows), 'model')}: {ready} ready, {unpulled} not pulled; "
        f"{plural(copies, 'copy', 'copies')} on {hosts}"
    )
    if shown != len(data.rows):
        line += f"; {shown} shown"
    return line


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
