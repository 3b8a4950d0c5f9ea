"""The console app: a header with breadcrumbs, one view at a time, a `:` command line, a `/`
filter line and a footer of keys. It gets its backend by injection (`ConsoleApp(backend)`), so
tests and the benchmark drive the same app against a real control plane.

Attributes down, messages up: the app builds every view with its `Context` (the backend, the
keys, the read-only flag, the clock) and tells views to refresh; views read through the backend
in workers and post `View.Refreshed`. What a view needs of the app it posts
(`bitinglip.tui.messages`, handled in `ConsoleApp`): a task or a host to open, the pull form, a
view to show, the header to repaint, and how an action went (`Reported`), which the app tells the
user and posts as `Acted` for whoever listens (the tests do). No view imports this module.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, Footer, Input, Static
from textual.worker import Worker, WorkerState

from bitinglip.control import (
    TERMINAL,
    ControllerInfo,
    ControlPlane,
    TaskState,
    ensure_private_dir,
    open_private,
)
from bitinglip.errors import StoreError
from bitinglip.readable import error_line
from bitinglip.tui.backend import Backend
from bitinglip.tui.commands import ViewCommands
from bitinglip.tui.context import Context
from bitinglip.tui.forms import confirm
from bitinglip.tui.messages import CrumbsChanged, OpenHost, OpenPull, OpenTask, Reported, ShowView
from bitinglip.tui.views.base import MUTATING, View
from bitinglip.tui.views.gpus import GpusView
from bitinglip.tui.views.host_screen import HostScreen
from bitinglip.tui.views.hosts import HostsView
from bitinglip.tui.views.jobs import JobsView
from bitinglip.tui.views.loaded import LoadedView
from bitinglip.tui.views.logs import LogsView
from bitinglip.tui.views.models import ModelsView
from bitinglip.tui.views.pulls import PullsView
from bitinglip.tui.views.task_detail import TaskScreen
from bitinglip.tui.views.tasks import TasksView

VIEW_TYPES: tuple[type[View], ...] = (
    HostsView,
    GpusView,
    TasksView,
    JobsView,
    ModelsView,
    PullsView,
    LogsView,
    LoadedView,
)
ALIASES = {
    "host": "hosts",
    "fleet": "hosts",
    "gpu": "gpus",
    "task": "tasks",
    "job": "jobs",
    "model": "models",
    "pull": "pulls",
    "log": "logs",
    "loaded": "ps",
}
GLOBAL_ACTIONS = {  # [keys] action -> (the app's action, footer text)
    "command": ("command", "command"),
    "filter": ("filter", "filter"),
    "help": ("help", "help"),
    "quit": ("quit", "quit"),
    "back": ("go_back", "back"),
}
IN_FLIGHT = tuple(state for state in TaskState if state not in TERMINAL)


class HelpScreen(ModalScreen[None]):
    """The keys of the console and of the current view, and the `:` commands."""

    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape,q,question_mark", "dismiss", "close"),
    ]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(self.text, id="help-text", markup=False)


class ConsoleApp(App[int]):
    """`bitinglip` with no command."""

    CSS_PATH = "console.tcss"
    TITLE = "BitingLip"
    AUTO_FOCUS = None  # the view decides (`View.focus_main`); the prompts stay closed
    COMMANDS = App.COMMANDS | {ViewCommands}

    class Acted(Message):
        """An action finished: what, whether it worked, and the line shown to the user."""

        def __init__(self, action: str, ok: bool, detail: str) -> None:
            super().__init__()
            self.action, self.ok, self.detail = action, ok, detail

    def __init__(
        self,
        backend: Backend,
        *,
        start: str = "hosts",
        tick_s: float = 1.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.now = now  # the clock views use for ages ("3s ago"); snapshot tests fix it
        self.backend = backend
        self.keys = {action: key_name(key) for action, key in backend.profile.keys.items()}
        self.readonly = backend.readonly
        self.start_view = start
        self.tick_s = tick_s
        self.context = Context(backend, self.keys, now, tick_s)  # what every view is given
        self.views = {cls.VIEW: cls(self.context) for cls in VIEW_TYPES}
        self.crash_log: Path | None = None
        self.holder: str | None = None  # who runs the control loop, when this console does not
        self._header = Static("", id="header", markup=False)
        self._switcher = ContentSwitcher(initial=f"view-{start}", id="views")

    def compose(self) -> ComposeResult:
        yield self._header
        with self._switcher:
            yield from self.views.values()
        yield Input(placeholder=self._command_hint(), id="command", classes="prompt")
        yield Input(
            placeholder="filter: text, state:running, host:gpu-a, -state:dead",
            id="filter",
            classes="prompt",
        )
        yield Footer()

    def on_mount(self) -> None:
        for key_action, (action, description) in GLOBAL_ACTIONS.items():
            self.bind(self.keys[key_action], action, description=description)
        for cls in VIEW_TYPES:
            self.bind(self.keys[cls.VIEW], f"show('{cls.VIEW}')", show=False)
        self.set_interval(self.tick_s, self._tick)
        self.show_view(self.start_view)
        self._refresh_holder()

    # -- views -----------------------------------------------------------------------------

    @property
    def current(self) -> View:
        current = self._switcher.current or f"view-{self.start_view}"
        return self.views[current.removeprefix("view-")]

    def show_view(self, name: str) -> View:
        view = self.views[name]
        self._switcher.current = view.id
        view.focus_main()
        view.reload()
        self.paint_header()
        self.refresh_bindings()
        return view

    def action_show(self, name: str) -> None:
        self.show_view(name)

    def _tick(self) -> None:
        if not self.screen_stack:  # a tick that fires while the app shuts down
            return
        self.paint_header()
        if self.backend.role != "controller":
            self._refresh_holder()
        if self.screen is self.screen_stack[0]:  # not while a detail or a question is open
            self.current.reload()

    def _refresh_holder(self) -> None:
        self.run_worker(
            self._read_holder,  # type: ignore[arg-type]  # mypy infers Never from WorkType
            group="holder",
            exclusive=True,
            exit_on_error=False,
            description="who is the controller",
        )

    async def _read_holder(self) -> None:
        holder = await self.backend.call(_holder)
        self.holder = None if holder is None else f"{holder.hostname} pid {holder.pid}"
        self.paint_header()

    def paint_header(self) -> None:
        role = self.backend.role
        if role != "controller":
            held = f"controller: {self.holder}" if self.holder else "no controller running"
            role = f"{role} · {held}"
        if self.backend.loop_error is not None:
            role = f"control loop stopped: {self.backend.loop_error}"
        crumbs = " ▸ ".join(["BitingLip", self.backend.profile.name, *self.crumbs()])
        self._header.update(f"{crumbs}   [{role}]")

    def crumbs(self) -> list[str]:
        crumbs = list(self.current.crumbs)
        for screen in self.screen_stack[1:]:
            crumb = getattr(screen, "crumb", None)
            if crumb:
                crumbs.append(str(crumb))
        return crumbs

    # -- the command and filter lines ------------------------------------------------------

    def action_command(self) -> None:
        self._open_prompt("command", "")

    def action_filter(self) -> None:
        self._open_prompt("filter", self.current.filter_text)

    def _open_prompt(self, which: str, value: str) -> None:
        prompt = self.query_one(f"#{which}", Input)
        prompt.value = value
        prompt.display = True
        self.screen.set_focus(prompt)  # at once: the keys typed next go to the prompt

    def action_go_back(self) -> None:
        for which in ("command", "filter"):
            prompt = self.query_one(f"#{which}", Input)
            if prompt.display:
                prompt.display = False
                self.current.focus_main()
                return
        if len(self.screen_stack) > 1:
            self.pop_screen()
            self.paint_header()
        elif self.current.filter_text:
            self.current.set_filter("")
            self.paint_header()

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.current.focus_main()
        self.run_command(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.current.set_filter(event.value)
        self.current.focus_main()
        self.paint_header()

    def run_command(self, text: str) -> None:
        """`:hosts`, `:tasks state:running` (a view and its filter), `:help`, `:q`."""
        words = text.strip().removeprefix(":").split(maxsplit=1)
        if not words:
            return
        word, rest = words[0].lower(), (words[1] if len(words) > 1 else "")
        name = ALIASES.get(word, word)
        if name in self.views:
            self.show_filtered(name, rest)
        elif word in ("q", "quit", "exit"):
            self.call_next(self.action_quit)
        elif word in ("help", "h", "?"):
            self.action_help()
        else:
            known = ", ".join(f":{v}" for v in self.views)
            self.notify(f"unknown command {word!r}; try {known}, :help, :q", severity="error")

    def show_filtered(self, name: str, filter_text: str) -> None:
        view = self.show_view(name)
        if filter_text:
            view.set_filter(filter_text)
            self.paint_header()

    def _command_hint(self) -> str:
        return "command: " + " ".join(f":{v.VIEW}" for v in VIEW_TYPES) + " :help :q"

    # -- help, quitting, asking ------------------------------------------------------------

    def action_help(self) -> None:
        view = self.current
        lines = ["Keys", ""]
        for action in GLOBAL_ACTIONS:
            lines.append(f"  {self.key_display(action):<10} {action}")
        for cls in VIEW_TYPES:
            lines.append(f"  {self.key_display(cls.VIEW):<10} {cls.title}  (:{cls.VIEW})")
        lines += ["", f"{view.title}", ""]
        for action, description in view.ACTIONS.items():
            if action in MUTATING and self.readonly:
                continue
            lines.append(f"  {self.key_display(action):<10} {description}")
        lines += [
            "",
            "ctrl+p opens the command palette; keys are remapped in the profile's [keys].",
        ]
        self.push_screen(HelpScreen("\n".join(lines)))

    def key_display(self, action: str) -> str:
        """How the key of `action` is written for people (":" rather than "colon")."""
        return self.get_key_display(Binding(self.keys[action], action))

    async def action_quit(self) -> None:
        if self.backend.role == "controller":
            counts = await self.backend.call(_counts)
            busy = sum(counts.get(state, 0) for state in IN_FLIGHT)
            if busy:
                question = (
                    f"This console is the controller and {busy} task(s) are in flight. "
                    "Quit? Running tasks get the grace period, then go back to the queue."
                )
                confirm(self, question, lambda: self.exit(0))
                return
        self.exit(0)

    def acted(self, action: str, ok: bool, detail: str) -> None:
        """Tell the user how an action went (one line) and post `Acted`."""
        self.notify(detail, severity="information" if ok else "error", markup=False)
        self.post_message(self.Acted(action, ok, detail))

    # -- what views ask of the app ---------------------------------------------------------

    @on(Reported)
    def _reported(self, event: Reported) -> None:
        self.acted(event.action, event.ok, event.detail)

    @on(OpenTask)
    def _open_task(self, event: OpenTask) -> None:
        self.push_screen(TaskScreen(self.context, event.task_id))

    @on(OpenHost)
    def _open_host(self, event: OpenHost) -> None:
        """A full screen: its own header line, the console's with the host's name at the end."""
        crumbs = ["BitingLip", self.backend.profile.name, *self.crumbs(), event.host.name]
        heading = f"{' ▸ '.join(crumbs)}   [{self.backend.role}]"
        self.push_screen(HostScreen(self.context, event.host, heading))

    @on(OpenPull)
    def _open_pull(self, event: OpenPull) -> None:
        models = self.views["models"]
        assert isinstance(models, ModelsView)
        models.open_pull(event.ref, event.host)

    @on(ShowView)
    def _show_view(self, event: ShowView) -> None:
        self.show_filtered(event.view, event.filter_text)

    @on(CrumbsChanged)
    def _crumbs_changed(self) -> None:
        self.paint_header()
        if len(self.screen_stack) > 1:  # a screen over the views: the header shows through it
            self.screen.refresh()

    # -- failures --------------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            what = event.worker.description or event.worker.name
            self.notify(f"{what}: {error_line(error)}", severity="error", timeout=8, markup=False)

    def _handle_exception(self, error: Exception) -> None:
        """An unhandled error ends the app (Textual restores the terminal); first, write the
        traceback to a crash log beside the state database so the user can report it."""
        folder = self.backend.profile.data_dir
        try:
            ensure_private_dir(folder)
            path = folder / f"console-crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
            fd = open_private(path, os.O_WRONLY | os.O_TRUNC)  # 0600: it may quote prompts
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("".join(traceback.format_exception(error)))
            self.crash_log = path
        except (OSError, StoreError):
            self.crash_log = None
        super()._handle_exception(error)


def key_name(key: str) -> str:
    """A profile key (":" or "colon", "ctrl+r") as Textual names it ("colon", "ctrl+r")."""
    return next(iter(Binding.make_bindings([(key, "noop")]))).key


def _holder(plane: ControlPlane) -> ControllerInfo | None:
    holder = plane.controller()
    return holder if holder is not None and holder.alive else None


def _counts(plane: ControlPlane) -> dict[str, int]:
    return plane.task_counts()
