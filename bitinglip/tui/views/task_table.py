"""The Tasks view's list: pre-laid-out lines drawn with the Line API, a row cursor, a header.

Why not a DataTable: it re-renders every visible cell whenever any cell changes (its caches
hang on one update counter), at about a millisecond a row here; a task list changes every
second (ages, states), so with 10,000 tasks a refresh would cost ~50 ms of rendering alone.
Here a row is one line laid out once when its task changes (`lay_out`: plain string work), and
drawn as a cached Strip keyed by (task, version, cursor, stripe): a change costs what changed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.style import Style
from rich.text import Span, Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

GAP = 2
# column -> (header label, width, right-aligned)
COLUMNS: dict[str, tuple[str, int, bool]] = {
    "id": ("id", 7, False),
    "kind": ("kind", 8, False),
    "model": ("model", 22, False),
    "host": ("host", 12, False),
    "state": ("state", 9, False),
    "priority": ("prio", 5, True),
    "attempt": ("attempt", 7, True),
    "age": ("age", 5, True),
    "tokens_s": ("tok/s", 6, True),
}
WIDTH = sum(width + GAP for _, width, _ in COLUMNS.values())
CACHED_STRIPS = 2_000


def lay_out(cells: tuple[Any, ...]) -> Text:
    """One line of cells (str, int or a styled Text, in `COLUMNS` order), each in its column's
    width; plain string work and one span per styled cell (this runs for every changed row)."""
    parts: list[str] = []
    spans: list[Span] = []
    at = 0
    for (_, width, right), cell in zip(COLUMNS.values(), cells, strict=True):
        text = cell.plain if isinstance(cell, Text) else str(cell)
        if len(text) > width:
            text = text[: width - 1] + "…"
        if isinstance(cell, Text) and cell.style:
            spans.append(Span(at, at + width, cell.style))
        parts.append((text.rjust(width) if right else text.ljust(width)) + " " * GAP)
        at += width + GAP
    return Text("".join(parts), spans=spans, no_wrap=True, end="")


def column_at(x: int) -> str | None:
    """The column under `x` (a cell offset in a line), if any."""
    start = 0
    for key, (_, width, _) in COLUMNS.items():
        if start <= x < start + width + GAP:
            return key
        start += width + GAP
    return None


class TaskHeader(Static):
    """The column labels, the sort column marked; a click asks to sort by the column."""

    DEFAULT_CSS = "TaskHeader { height: 1; padding: 0 1; text-style: bold; }"

    class ColumnClicked(Message):
        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    def show_sort(self, sort: str, descending: bool) -> None:
        arrow = "↓" if descending else "↑"
        labels = tuple(
            label + (arrow if key == sort else "") for key, (label, _, _) in COLUMNS.items()
        )
        self.update(lay_out(labels))

    def on_click(self, event: events.Click) -> None:
        column = column_at(event.x - 1)  # the left padding
        if column is not None:
            self.post_message(self.ColumnClicked(column))


class TaskList(ScrollView, can_focus=True):
    """Rows of laid-out lines keyed by task id, in the order given, with a row cursor that
    stays on its task when the rows change. Enter (or a click on the cursor row) posts
    `Selected`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"task-list--cursor", "task-list--stripe"}
    DEFAULT_CSS = """
    TaskList { height: 1fr; padding: 0 1; }
    TaskList > .task-list--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    TaskList:blur > .task-list--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: none;
    }
    TaskList > .task-list--stripe { background: $surface-lighten-1 15%; }
    """
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1_000_000)", "first", show=False),
        Binding("end", "move(1_000_000)", "last", show=False),
        Binding("enter", "select", "open", show=False),
    ]

    class Selected(Message):
        def __init__(self, task_id: int) -> None:
            super().__init__()
            self.task_id = task_id

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id)
        self.ids: list[int] = []  # in display order
        self.cursor_row = 0
        self._lines: dict[int, Text] = {}
        self._versions: dict[int, int] = {}
        self._drawn = 0
        self._strips: dict[tuple[Any, ...], Strip] = {}
        self._base = Style()

    @property
    def row_count(self) -> int:
        return len(self.ids)

    @property
    def selected_id(self) -> int | None:
        return self.ids[self.cursor_row] if self.ids else None

    # -- rows ------------------------------------------------------------------------------

    def set_rows(self, ids: list[int], changed: dict[int, Text]) -> None:
        """Show `ids` in this order; `changed` holds the lines of new and changed rows (the
        others keep theirs). The cursor stays on its task if it is still there."""
        selected = self.selected_id
        for task_id, line in changed.items():
            self._drawn += 1  # versions are never reused, so a cached strip is never stale
            self._lines[task_id], self._versions[task_id] = line, self._drawn
        keep = set(ids)
        for task_id in [i for i in self._lines if i not in keep]:
            del self._lines[task_id], self._versions[task_id]
        if len(self._strips) > CACHED_STRIPS:
            self._strips.clear()
        self.ids = list(ids)
        self.virtual_size = Size(WIDTH, len(self.ids))
        if selected in keep:
            self.cursor_row = self.ids.index(selected)
        self.cursor_row = max(0, min(self.cursor_row, len(self.ids) - 1))
        self.refresh()

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self.ids) - 1))
        top = int(self.scroll_offset.y)
        height = max(self.scrollable_content_region.height, 1)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + height:
            self.scroll_to(y=self.cursor_row - height + 1, animate=False)
        self.refresh()

    def action_move(self, rows: int) -> None:
        self.move_cursor(self.cursor_row + rows)

    def action_page(self, pages: int) -> None:
        self.move_cursor(self.cursor_row + pages * max(self.scrollable_content_region.height, 1))

    def action_select(self) -> None:
        if self.selected_id is not None:
            self.post_message(self.Selected(self.selected_id))

    def on_click(self, event: events.Click) -> None:
        row = event.y + int(self.scroll_offset.y)
        if not 0 <= row < len(self.ids):
            return
        if row == self.cursor_row:
            self.action_select()
        else:
            self.move_cursor(row)

    # -- drawing ---------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        self._base = self.rich_style  # once per pass: computing it costs more than a line
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.scrollable_content_region.width
        if row >= len(self.ids):
            return Strip.blank(width, self._base)
        task_id = self.ids[row]
        key = (task_id, self._versions[task_id], row == self.cursor_row, row % 2, self.has_focus)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._strips[key] = self._draw(self._lines[task_id], key[2], bool(key[3]))
        return strip.crop_extend(scroll_x, scroll_x + width, self._base)

    def _draw(self, line: Text, cursor: bool, stripe: bool) -> Strip:
        style: Style = self._base
        if cursor:
            style += self.get_component_rich_style("task-list--cursor")
        elif stripe:
            style += self.get_component_rich_style("task-list--stripe")
        segments = list(line.render(self.app.console))
        return Strip(segments).extend_cell_length(WIDTH).apply_style(style)
