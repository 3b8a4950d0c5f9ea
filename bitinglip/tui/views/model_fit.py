"""The fit table of a hub repo: which quant fits which GPU, from the GGUF headers alone.

As `bitinglip models fit` does: list the repo's GGUF files at one commit, read each header with
range requests (no weights; in a thread), and judge every quant against each host's GPUs (or
RAM) as the stored telemetry last saw them (`plan_fit`, read on the backend thread). Without
telemetry the table says what each quant needs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from bitinglip.control import (
    GIB,
    ControlPlane,
    Device,
    Need,
    Verdict,
    list_gguf,
    needs_for_files,
    plan_fit,
    read_range,
    split_ref,
)
from bitinglip.errors import BitinglipError, NotFoundError
from bitinglip.readable import error_line
from bitinglip.tui.context import Context
from bitinglip.tui.messages import OpenPull, Reported
from bitinglip.tui.views.model_search import dialog_css

CTX = 4096  # tokens of KV cache, as `models fit` sizes by default
MARGIN = GIB  # kept free on each device, as `models fit --margin-gib 1`
VERDICT_COLUMNS = ("quant", "host", "gpu", "device", "verdict", "layers", "need", "free", "why")
NEED_COLUMNS = ("quant", "file", "size", "weights", "kv", "need", "layers")


@dataclass(frozen=True)
class FitTable:
    repo: str
    commit: str
    needs: list[Need]
    verdicts: list[Verdict]
    notes: list[str]
    telemetry: bool  # whether any host's telemetry was stored

    @property
    def rows(self) -> list[tuple[str, str | None]]:
        """(file, host or None) of each table row, in order: what the pull key pulls."""
        if self.verdicts:
            files = {n.quant: n.file for n in reversed(self.needs)}
            return [(files.get(v.quant, v.quant), v.host) for v in self.verdicts]
        return [(n.file, None) for n in self.needs]


def read_needs(repo: str) -> tuple[str, list[Need]]:
    """The commit main is now and each quant's needs, smallest file first (network; a thread).
    `repo` may be a whole ref (owner/repo:QUANT): its repo is read."""
    repo = split_ref(repo)[0]
    commit, files = list_gguf(repo, "main")
    if not files:
        raise NotFoundError(f"{repo}@{commit[:12]} has no .gguf files")
    needs = needs_for_files(files, read_range, CTX)
    return commit, sorted(needs, key=lambda n: (n.file_size, n.file))


def read_devices(plane: ControlPlane) -> tuple[list[Device], list[str], bool]:
    """The profile's devices from the stored telemetry, notes on hosts without any, and whether
    any host's telemetry is stored (backend thread)."""
    devices, notes = plane.models.devices()
    return devices, notes, bool(plane.fleet.latest())


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def verdict_cells(v: Verdict) -> tuple[str, ...]:
    layers = "-" if v.gpu is None else f"{v.layers_on_gpu}/{v.layers_total}"
    gpu = "cpu" if v.gpu is None else str(v.gpu)
    cells = (v.quant, v.host, gpu, v.device, str(v.verdict), layers, gib(v.need), gib(v.free))
    return (*cells, v.why)


def need_cells(n: Need) -> tuple[str, ...]:
    sizes = (n.file_size, n.weights_bytes, n.kv_bytes, n.total(MARGIN))
    return (n.quant, n.file, *(gib(s) for s in sizes), str(n.layers))


class FitScreen(ModalScreen[None]):
    """A repo line (Enter reads it) and its fit table; the pull key pulls the highlighted quant."""

    DEFAULT_CSS = dialog_css("FitScreen")
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]
    crumb = "fit"

    def __init__(self, context: Context, repo: str = "") -> None:
        super().__init__()
        self.context = context
        self.repo = repo
        self.table: FitTable | None = None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "pull" and self.context.readonly)  # hidden when read-only

    def compose(self) -> ComposeResult:
        with Vertical(classes="model-dialog"):
            yield Static(
                f"Which quant fits where ({CTX}-token context, 1 GiB kept free per device)",
                classes="dialog-title",
            )
            yield Input(self.repo, placeholder="owner/repo on the hub", id="fit-repo")
            yield Static(
                "Enter reads the repo's GGUF headers.", id="fit-status", classes="dialog-status"
            )
            yield DataTable(id="fit-table", cursor_type="row")
            yield Static("", id="fit-notes")

    def on_mount(self) -> None:
        self._bindings.bind(self.context.keys["pull"], "pull", "pull this quant")
        if self.repo:
            self.load(self.repo)
        else:
            self.query_one("#fit-repo", Input).focus()

    @on(Input.Submitted, "#fit-repo")
    def _submitted(self, event: Input.Submitted) -> None:
        self.load(event.value.strip())

    def load(self, repo: str) -> None:
        self.repo = repo
        self.query_one("#fit-status", Static).update(f"reading the GGUF headers of {repo}...")
        self.run_worker(
            self._load(repo), group="fit", exclusive=True, exit_on_error=False, description="fit"
        )

    async def _load(self, repo: str) -> None:
        try:
            commit, needs = await asyncio.to_thread(read_needs, repo)
        except BitinglipError as exc:
            self.query_one("#fit-status", Static).update(f"[b]hub error:[/b] {error_line(exc)}")
            self.post_message(Reported("fit", False, error_line(exc)))
            return
        devices, notes, telemetry = await self.context.backend.call(read_devices)
        verdicts = [v for need in needs for v in plan_fit(need, devices, MARGIN)]
        notes += [f"{n.file}: {line}" for n in needs for line in n.notes]
        repo = split_ref(repo)[0]
        self.table = FitTable(repo, commit, needs, verdicts, notes, telemetry)
        self.paint(self.table)
        self.post_message(Reported("fit", True, f"{repo}: {len(needs)} quant(s) judged"))

    def paint(self, result: FitTable) -> None:
        table = self.query_one("#fit-table", DataTable)
        table.clear(columns=True)
        if result.verdicts:
            table.add_columns(*VERDICT_COLUMNS)
            for v in result.verdicts:
                table.add_row(*verdict_cells(v))
        else:
            table.add_columns(*NEED_COLUMNS)
            for n in result.needs:
                table.add_row(*need_cells(n))
        read = sum(n.bytes_read for n in result.needs)
        status = (
            f"{result.repo}@{result.commit[:7]}: {len(result.needs)} quant(s), "
            f"{read:,} header bytes read"
        )
        if not result.telemetry:
            status += "; no telemetry stored yet, so what each quant needs"
        self.query_one("#fit-status", Static).update(status)
        self.query_one("#fit-notes", Static).update("\n".join(result.notes))
        table.focus()

    def action_pull(self) -> None:
        table = self.query_one("#fit-table", DataTable)
        rows = self.table.rows if self.table is not None else []
        file, host = rows[table.cursor_row] if 0 <= table.cursor_row < len(rows) else ("", None)
        repo = self.table.repo if self.table is not None else self.repo
        ref = f"{repo}:{file}" if file else repo
        self.post_message(OpenPull(ref, host))
