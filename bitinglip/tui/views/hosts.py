"""Hosts view (being written)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Static

from bitinglip.control.plane import ControlPlane
from bitinglip.tui.views.base import View


class HostsView(View):
    VIEW = "hosts"
    title = "Hosts"

    def compose(self) -> ComposeResult:
        yield Static("")

    def fetch(self, plane: ControlPlane) -> Any:
        return None

    def show(self, data: Any) -> None:
        pass
