"""The console's small forms: a yes/no question, a number, a path, and the task submit form.

Each is a modal screen that returns what was entered (`dismiss(value)`), or None when the user backs
out (Escape); the caller does the work. A view pushes its own forms (`self.app.push_screen(form,
callback)`): the answer comes back to it. A form checks what it can itself (a number is a number, a
label is `key=value`) and says what is wrong on its own error line; the control plane checks the
rest (a known host, a known model) when the caller submits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from bitinglip.control import TaskSpec
from bitinglip.errors import InputError

FORM_CSS = """
    align: center middle;
    .form {
        width: 84;
        height: auto;
        max-height: 100%;
        border: round $primary;
        background: $surface;
        padding: 0 1;
    }
    .form-title { text-style: bold; margin-bottom: 1; }
    .form-row { height: auto; margin-bottom: 1; }
    .form-row Label { width: 16; }
    .form-row Input, .form-row Select { width: 1fr; }
    .form-error { color: $error; height: auto; margin-bottom: 1; }
    .form-buttons { height: auto; align: right middle; }
    .form-buttons Button { margin-left: 2; }
"""
KINDS = (("prompt (generate)", "generate"), ("chat (one user message)", "chat"))


class ConfirmScreen(ModalScreen[bool]):
    """Asks a yes/no question; `y`/Enter on Yes confirms, `n`/Escape refuses."""

    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="question")
            with Horizontal(id="answers"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


def confirm(node: DOMNode, question: str, then: Callable[[], Any]) -> None:
    """Ask `question` over `node`'s app; call `then` (on the UI thread) only on yes."""

    def answered(yes: bool | None) -> None:
        if yes:
            then()

    node.app.push_screen(ConfirmScreen(question), answered)


class ValueForm(ModalScreen[str | None]):
    """One line of input, prefilled: a path, a number. Enter accepts, Escape backs out."""

    DEFAULT_CSS = f"ValueForm {{ {FORM_CSS} }}"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]

    def __init__(self, title: str, value: str = "", *, integer: bool = False) -> None:
        super().__init__()
        self.title_text, self.value, self.integer = title, value, integer

    def compose(self) -> ComposeResult:
        with Vertical(classes="form"):
            yield Static(self.title_text, classes="form-title", markup=False)
            yield Input(self.value, id="value", type="integer" if self.integer else "text")
            yield Static("", id="form-error", classes="form-error")

    def on_mount(self) -> None:
        self.query_one("#value", Input).focus()

    @on(Input.Submitted, "#value")
    def _accept(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value or (self.integer and not _is_int(value)):
            self.query_one("#form-error", Static).update(
                "enter a whole number" if self.integer else "enter a value"
            )
            return
        self.dismiss(value)


class SubmitForm(ModalScreen[TaskSpec | None]):
    """A prompt or a chat message for a model: where it may run, its priority, its sampling."""

    DEFAULT_CSS = f"SubmitForm {{ {FORM_CSS} }}"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("escape", "dismiss(None)", "back"),
    ]

    def __init__(self, models: Sequence[str], hosts: Sequence[str]) -> None:
        super().__init__()
        self.models, self.hosts = list(models), list(hosts)

    def compose(self) -> ComposeResult:
        with Vertical(classes="form"):
            yield Static("Submit a task", classes="form-title")
            yield from _row(
                "kind", Select(KINDS, value="generate", allow_blank=False, id="kind", compact=True)
            )
            yield from _row(
                "prompt", Input(placeholder="the prompt or the message", id="prompt", compact=True)
            )
            models = [(m, m) for m in self.models]
            yield from _row(
                "model", Select(models, prompt="no models: add one", id="model", compact=True)
            )
            yield from _row("priority", Input("0", type="integer", id="priority", compact=True))
            hosts = [("any host", ""), *((h, h) for h in self.hosts)]
            yield from _row(
                "host", Select(hosts, value="", allow_blank=False, id="host", compact=True)
            )
            yield from _row(
                "or label", Input(placeholder="key=value,key=value", id="labels", compact=True)
            )
            yield from _row(
                "max_tokens", Input("256", type="integer", id="max_tokens", compact=True)
            )
            yield from _row(
                "temperature", Input("0.8", type="number", id="temperature", compact=True)
            )
            yield Static("", id="form-error", classes="form-error")
            with Horizontal(classes="form-buttons"):
                yield Button("Submit", id="submit", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        if len(self.models) == 1:
            self.query_one("#model", Select).value = self.models[0]
        self.query_one("#prompt", Input).focus()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#submit")
    @on(Input.Submitted)
    def _submit(self) -> None:
        try:
            spec = self.spec()
        except InputError as exc:
            self.query_one("#form-error", Static).update(Text(str(exc)))
            return
        self.dismiss(spec)

    def spec(self) -> TaskSpec:
        """The task the form describes; an InputError says what to fix."""
        kind = str(self.query_one("#kind", Select).value)
        prompt = self._text("prompt")
        if not prompt:
            raise InputError("write a prompt")
        model = self.query_one("#model", Select).value
        if not isinstance(model, str):
            raise InputError("choose a model")
        host = str(self.query_one("#host", Select).value) or None
        labels = parse_labels(self._text("labels"))
        if host and labels:
            raise InputError("choose a host or labels, not both")
        payload: dict[str, Any] = {
            "max_tokens": _number(self._text("max_tokens"), "max_tokens", int, 1),
            "temperature": _number(self._text("temperature"), "temperature", float, 0.0),
        }
        if kind == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        priority = _number(self._text("priority") or "0", "priority", int, None)
        spec = TaskSpec(kind, payload, model, host, labels or None, int(priority))
        spec.validate()
        return spec

    def _text(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()


def _row(label: str, widget: Input | Select[str]) -> ComposeResult:
    with Horizontal(classes="form-row"):
        yield Label(label)
        yield widget


def parse_labels(text: str) -> dict[str, str]:
    """`zone=a,gpu=a100` (commas or spaces between) as a dict."""
    labels: dict[str, str] = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"label {item!r}: write labels as key=value")
        labels[key] = value
    return labels


def _number(text: str, name: str, kind: type[int] | type[float], least: float | None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{name} must be a number, not {text!r}") from None
    if least is not None and value < least:
        raise InputError(f"{name} must be at least {least:g}")
    return value


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
