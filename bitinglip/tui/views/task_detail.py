"""One task: what it asked for, where it is, its events and its output, followed live.

A screen over the console (the header and its breadcrumb `#<id>` stay visible above it). Every
`FOLLOW_S` it asks the backend for what is new since its last look (`plane.follow_step`):
new events and output chunks are appended; when the task runs again its output starts over.
The task actions (cancel, retry, priority) work here as in the Tasks view; Escape goes back.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from bitinglip.control import TERMINAL, ControlPlane, FollowMark, FollowStep, Task
from bitinglip.errors import NotFoundError
from bitinglip.readable import age
from bitinglip.tui.context import Context
from bitinglip.tui.messages import CrumbsChanged
from bitinglip.tui.views.base import MUTATING
from bitinglip.tui.views.task_actions import TaskActions
from bitinglip.tui.views.tasks import STATE_STYLES

FOLLOW_S = 0.25
ACTIONS = {"cancel": "cancel", "retry": "retry", "priority": "priority"}
TEXT_FIELDS = ("prompt", "input")
SHORT = 240


class TaskScreen(ModalScreen[None]):
    """`TaskScreen(context, task_id)`; its `crumb` extends the header's breadcrumbs."""

    DEFAULT_CSS = """
    TaskScreen { background: transparent; }
    TaskScreen #task-detail { margin-top: 1; height: 1fr; background: $background; }
    TaskScreen #task-head { padding: 0 1; height: auto; }
    TaskScreen #task-payload { padding: 0 1; height: auto; color: $text-muted; }
    TaskScreen .task-label { padding: 0 1; background: $boost; text-style: bold; height: 1; }
    TaskScreen #task-events-box { height: auto; max-height: 8; padding: 0 1; }
    TaskScreen #task-output-box { height: 1fr; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[Any]] = []

    def __init__(self, context: Context, task_id: int) -> None:
        super().__init__()
        self.context = context
        self.task_id = task_id
        self.crumb = f"#{task_id}"
        self.mark = FollowMark()
        self.shown: Task | None = None
        self.output = ""
        self.event_lines: list[str] = []
        self._head_shown: tuple[Task, int] | None = None
        self._looks = 0
        self.actions = TaskActions(self, context, self.follow)

    def compose(self) -> ComposeResult:
        with Vertical(id="task-detail"):
            yield Static(f"task {self.task_id}", id="task-head")
            yield Static("", id="task-payload")
            yield Static("events", classes="task-label")
            with VerticalScroll(id="task-events-box"):
                yield Static("", id="task-events")
            yield Static("output", classes="task-label")
            with VerticalScroll(id="task-output-box"):
                yield Static("", id="task-output")
        yield Footer()

    def on_mount(self) -> None:
        keys = self.context.keys
        for action, description in ACTIONS.items():
            self._bindings.bind(keys[action], action, description)
        self._bindings.bind(keys["back"], "app.go_back", "back")
        self.follow()
        self.set_interval(FOLLOW_S, self.follow)
        self.call_after_refresh(self._show_crumb)

    def _show_crumb(self) -> None:
        """The header (on the console's screen, visible above this one) gets `#<id>`."""
        self.post_message(CrumbsChanged())
        self.refresh()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in MUTATING and self.context.readonly)

    # -- following -------------------------------------------------------------------------

    def follow(self) -> None:
        """Look for news: every FOLLOW_S while the task may change, every second once ended
        (a retry can start it again)."""
        self._looks += 1
        if self.shown is not None and self.shown.state in TERMINAL and self._looks % 4:
            return
        self.run_worker(
            self._follow(),
            group="follow",
            exclusive=True,
            exit_on_error=False,
            description=f"follow task {self.task_id}",
        )

    async def _follow(self) -> None:
        try:
            step = await self.context.backend.call(_step, self.task_id, self.mark)
        except NotFoundError as exc:
            self.notify(str(exc), severity="error", markup=False)
            self.dismiss()
            return
        self.mark = step.mark
        self.show(step)

    def show(self, step: FollowStep) -> None:
        now = self.context.now()
        if (step.task, int(now)) != self._head_shown:  # the ages on it change by the second
            self._head_shown = (step.task, int(now))
            self.query_one("#task-head", Static).update(head(step.task, now))
            self.query_one("#task-payload", Static).update(payload_summary(step.task))
        self.shown = step.task
        if step.events:
            self.event_lines += [event_line(e, step.task.created_at) for e in step.events]
            self.query_one("#task-events", Static).update(Text("\n".join(self.event_lines)))
            self.query_one("#task-events-box", VerticalScroll).scroll_end(animate=False)
        if step.restarted:
            self.output = f"[run again: attempt {step.task.attempt}]\n"
        if step.output or step.restarted:
            self.output += step.output
            self._paint_output()
        elif not self.output and step.task.result is not None:
            self._paint_output(result_text(step.task.result))

    def _paint_output(self, text: str | None = None) -> None:
        box = self.query_one("#task-output-box", VerticalScroll)
        at_end = box.scroll_y >= box.max_scroll_y
        self.query_one("#task-output", Static).update(Text(self.output if text is None else text))
        if at_end:
            box.scroll_end(animate=False)

    # -- actions ---------------------------------------------------------------------------

    def _what(self) -> str:
        return f"{self.shown.kind}, {self.shown.state}" if self.shown else "?"

    def action_cancel(self) -> None:
        self.actions.cancel(self.task_id, self._what())

    def action_retry(self) -> None:
        self.actions.retry(self.task_id, self._what())

    def action_priority(self) -> None:
        self.actions.priority(self.task_id, self.shown.priority if self.shown else 0)


def _step(plane: ControlPlane, task_id: int, mark: FollowMark) -> FollowStep:
    return plane.follow_step(task_id, mark)


def head(task: Task, now: float) -> Text:
    """Who, what, where and when, and the error if there is one."""
    text = Text(f"task {task.id} · {task.kind}")
    if task.model:
        text.append(f" · {task.model}")
    text.append(" · ")
    text.append(task.state.value, style=STATE_STYLES.get(task.state.value, ""))
    where = task.ran_on or task.host
    if where:
        text.append(f" · on {where}" if task.ran_on else f" · pinned to {where}")
    elif task.labels:
        text.append(" · labels " + ",".join(f"{k}={v}" for k, v in task.labels.items()))
    text.append(f" · attempt {task.attempt}/{task.max_attempts} · priority {task.priority}")
    if task.job_id is not None:
        text.append(f" · job {task.job_id} line {task.line_no}")
    text.append("\n" + when(task, now))
    reason = getattr(task, "wait_reason", None)
    if reason and task.state.value == "queued":  # placement's word: why it is not running yet
        text.append(f"\n{reason}", style="yellow")
    if task.cancel_requested and task.state.value == "running":
        text.append("\ncancel requested", style="yellow")
    if task.error:
        text.append(f"\nerror ({task.error_kind or 'error'}): {task.error}", style="bold red")
    return text


def when(task: Task, now: float) -> str:
    parts = [f"queued {age(now - task.created_at)} ago"]
    if task.started_at is not None:
        parts.append(f"started {age(now - task.started_at)} ago")
    if task.finished_at is not None:
        parts.append(f"finished {age(now - task.finished_at)} ago")
    result = task.result if isinstance(task.result, dict) else {}
    usage = result.get("usage") or {}
    rate = (result.get("timings") or {}).get("tokens_per_s")
    if usage.get("completion_tokens") is not None:
        parts.append(f"{usage['completion_tokens']} tokens")
    if isinstance(rate, (int, float)):
        parts.append(f"{rate:.1f} tok/s")
    return " · ".join(parts)


def payload_summary(task: Task) -> Text:
    """The prompt (or the last message of a chat) and the sampling parameters, shortened."""
    payload = task.payload if isinstance(task.payload, dict) else {"payload": task.payload}
    lines: list[str] = []
    messages = payload.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        lines.append(
            f"chat of {len(messages)} message(s); last ({last.get('role')}): "
            + _short(str(last.get("content", "")))
        )
    for field in TEXT_FIELDS:
        if field in payload:
            lines.append(f"{field}: {_short(str(payload[field]))}")
    rest = {k: v for k, v in payload.items() if k not in (*TEXT_FIELDS, "messages")}
    if rest:
        lines.append(_short(" ".join(f"{k}={json.dumps(v)}" for k, v in rest.items())))
    return Text("\n".join(lines) or "(empty payload)")


def event_line(event: dict[str, Any], created_at: float) -> str:
    offset = event["at"] - created_at
    stamp = f"+{offset:.2f}s" if offset < 60 else f"+{age(offset)}"
    move = f"{event['from_state'] or '':>9} → {event['to_state']:<9}"
    return f"{stamp:>9}  {move} #{event['attempt']}  {event['detail'] or ''}"


def result_text(result: Any) -> str:
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        return str(result["text"])
    return "result: " + json.dumps(result, ensure_ascii=False)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"
