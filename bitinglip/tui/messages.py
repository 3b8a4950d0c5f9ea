"""What views and screens ask of the console app (messages up): report how an action went, open
a task or a host, open the pull form, show a view, repaint the header. They bubble to
`ConsoleApp`, which does it; no view imports the app.
"""

from __future__ import annotations

from textual.message import Message

from bitinglip.config import HostConfig


class Reported(Message):
    """An action finished: what, whether it worked, and the one line for the user. The app shows
    the line and posts `ConsoleApp.Acted`."""

    def __init__(self, action: str, ok: bool, detail: str) -> None:
        super().__init__()
        self.action, self.ok, self.detail = action, ok, detail


class OpenTask(Message):
    """Open a task's screen (its events and output, followed live)."""

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id


class OpenHost(Message):
    """Drill into a host (`HostScreen`)."""

    def __init__(self, host: HostConfig) -> None:
        super().__init__()
        self.host = host


class OpenPull(Message):
    """Open the Models view's pull form started with `ref` (and `host`)."""

    def __init__(self, ref: str, host: str | None = None) -> None:
        super().__init__()
        self.ref, self.host = ref, host


class ShowView(Message):
    """Switch to a view, with a filter when given (as `:tasks job:3` does)."""

    def __init__(self, view: str, filter_text: str = "") -> None:
        super().__init__()
        self.view, self.filter_text = view, filter_text


class CrumbsChanged(Message):
    """The breadcrumbs changed (a view set its own filter, a screen opened): repaint the header."""
