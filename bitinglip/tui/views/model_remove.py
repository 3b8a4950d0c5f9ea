"""Removing a model's copies, as `bitinglip models rm` does: each copy through
`ModelDesk.remove_copy` (refused while it is being pulled or loaded, with why), and the
model leaves the registry when every copy went. Which host, when there are several, is asked
first (`HostChoiceScreen`); the console then asks to confirm.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from bitinglip.control import ControlPlane
from bitinglip.errors import BitinglipError, NotFoundError, StateError
from bitinglip.tui.views.model_search import dialog_css

EVERY = "*"  # the choice "every host (and forget the model)"


class HostChoiceScreen(ModalScreen[str | None]):
    """Which copy to remove: one host's, or every one (EVERY). None when abandoned."""

    DEFAULT_CSS = dialog_css("HostChoiceScreen") + "#remove-choice { width: 64; height: auto; }"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]
    crumb = "remove"

    def __init__(self, label: str, hosts: list[str]) -> None:
        super().__init__()
        self.label, self.hosts = label, hosts

    def compose(self) -> ComposeResult:
        options = [Option(f"the copy on {h}", id=h) for h in self.hosts]
        options.append(Option("every copy, and forget the model", id=EVERY))
        with Vertical(id="remove-choice", classes="model-dialog"):
            yield Static(f"Remove which copy of {self.label}?", classes="dialog-title")
            yield OptionList(*options, id="remove-hosts")

    def on_mount(self) -> None:
        self.query_one("#remove-hosts", OptionList).focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


def remove_copies(plane: ControlPlane, model_id: int, hosts: list[str], forget: bool) -> str:
    """Delete the model's copies on `hosts` (backend thread); with `forget`, and when all went,
    drop the model from the registry. The line that says what happened; StateError naming each
    copy that was kept and why."""
    model = plane.models.get(model_id)
    if model is None:
        raise NotFoundError(f"no model {model_id} in the registry")
    label = f"{model['repo']}:{model['file']}"
    removed, kept = [], []
    for host in hosts:
        try:
            plane.models.remove_copy(host, model_id)
        except BitinglipError as exc:
            kept.append(str(exc))
            continue
        removed.append(host)
    if kept:
        done = f"removed from {', '.join(removed)}; " if removed else ""
        raise StateError(f"{label}: {done}kept: {'; '.join(kept)}")
    line = f"removed {label} from {', '.join(removed)}" if removed else f"{label} had no copy"
    if forget:
        plane.models.unregister(model_id)
        line += "; no longer registered"
    return line
