"""Drawing for the fleet views: bars and sparklines as Rich segments, and `RowList`, a scrolling
list of rows (a row is one line or a few) drawn through Textual's Line API.

`RowList.set_rows` takes every row's data each refresh and redraws only the rows whose data
changed, and of those only the lines on screen: a fleet of 64 hosts × 8 GPUs costs what the
visible thirty lines cost. Row data must compare by value (frozen dataclasses of tuples).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

SPARKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"
TROUGH = "grey19"
DIM = Style(color="grey50")
BOLD = Style(bold=True)
OK_STYLE = Style(color="green")
WARN_STYLE = Style(color="yellow")
BAD_STYLE = Style(color="red")
SPARK_STYLE = Style(color="cyan")
CURSOR = Style(bgcolor="grey27")
_LEVELS = ((0.5, "green"), (0.8, "yellow"), (2.0, "red"))

Segments = list[Segment]


def level(fraction: float) -> str:
    """The colour of a bar at `fraction` of full: green, yellow from 50%, red from 80%."""
    return next(color for top, color in _LEVELS if fraction < top)


_EMPTY = Style(bgcolor=TROUGH)
_UNKNOWN = DIM + _EMPTY
_FILLED = {color: Style(color=color, bgcolor=TROUGH) for _, color in _LEVELS}


def bar(fraction: float | None, width: int) -> Segments:
    """A bar `width` cells wide filled to `fraction` (0..1) in eighths of a cell; unknown: dim
    dashes."""
    if width <= 0:
        return []
    if fraction is None:
        return [Segment("╌" * width, _UNKNOWN)]
    fraction = min(1.0, max(0.0, fraction))
    cells = fraction * width
    full = int(cells)
    filled = "█" * full + (EIGHTHS[int((cells - full) * 8)].strip() if full < width else "")
    return [
        Segment(filled, _FILLED[level(fraction)]),
        Segment(" " * (width - len(filled)), _EMPTY),
    ]


def sparkline(values: Sequence[float | None], width: int, top: float = 100.0) -> Segments:
    """The last `width` values as ▁..█ (0..`top`), right-aligned; unknown values are blank."""
    if width <= 0:
        return []
    shown = list(values[-width:])
    chars = [" " if v is None else SPARKS[min(7, max(0, int(v / top * 8)))] for v in shown]
    return [Segment(" " * (width - len(shown)) + "".join(chars), SPARK_STYLE)]


def text(value: str, style: Style | None = None, width: int | None = None) -> Segment:
    """`value` in `style`, cut or padded to `width` cells when given."""
    if width is not None:
        value = value[:width].ljust(width)
    return Segment(value, style)


def line(segments: Segments, width: int) -> Strip:
    """One line of exactly `width` cells."""
    return Strip(segments).adjust_cell_length(width)


Painter = Callable[[Any, int], list[Strip]]
GUTTER = 2  # a RowList always keeps room for its vertical scrollbar


class HeaderLine(Widget):
    """One line of column names above a `RowList`, painted by `paint(width)` for the width the
    list paints its rows at (its own less the list's scrollbar gutter)."""

    DEFAULT_CSS = "HeaderLine { height: 1; }"

    def __init__(self, paint: Callable[[int], Segments], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.paint = paint

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y or width <= GUTTER:
            return Strip.blank(width)
        return line(self.paint(width - GUTTER), width)


class RowList(ScrollView, can_focus=True):
    """Rows keyed by a string, each painted by `paint(data, width)` into its lines; a cursor
    moves over rows (up/down/page/home/end) and Enter posts `Selected` with the row's key."""

    DEFAULT_CSS = "RowList { scrollbar-gutter: stable; height: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "move(-1000000)", show=False),
        Binding("end", "move(1000000)", show=False),
        Binding("enter", "select", "open", show=True),
    ]

    class Selected(Message):
        """Enter (or a click) on a row."""

        def __init__(self, row_list: RowList, key: str) -> None:
            super().__init__()
            self.row_list, self.key = row_list, key

        @property
        def control(self) -> RowList:
            return self.row_list

    def __init__(self, paint: Painter, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.paint = paint
        self.cursor = 0
        self._keys: list[str] = []
        self._rows: dict[str, Any] = {}
        self._tops: list[int] = []  # the first line of each row
        self._heights: list[int] = []
        self._painted: dict[str, tuple[int, list[Strip]]] = {}  # key -> (width, lines)
        self.repainted = 0  # rows the last `set_rows` found changed

    # -- data ------------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def cursor_key(self) -> str | None:
        return self._keys[self.cursor] if self._keys else None

    def row(self, key: str) -> Any:
        return self._rows[key]

    def set_rows(self, rows: Sequence[tuple[str, Any, int]]) -> int:
        """(key, data, lines) of every row in order; returns how many rows changed."""
        self.repainted = self._set_rows(rows)
        return self.repainted

    def text_lines(self) -> list[str]:
        """The lines on screen as plain text (for tests and diagnostics)."""
        return ["".join(s.text for s in self.render_line(y)) for y in range(self.size.height)]

    def _set_rows(self, rows: Sequence[tuple[str, Any, int]]) -> int:
        keys = [key for key, _, _ in rows]
        heights = [height for _, _, height in rows]
        if keys == self._keys and heights == self._heights:
            return self._update_in_place(rows)
        chosen, before = self.cursor_key, self._rows
        self._keys, self._heights = keys, heights
        self._rows = {key: data for key, data, _ in rows}
        unchanged = {k for k, data in self._rows.items() if k in before and before[k] == data}
        self._tops = [0] * len(rows)
        for i in range(1, len(rows)):
            self._tops[i] = self._tops[i - 1] + heights[i - 1]
        self._painted = {k: v for k, v in self._painted.items() if k in unchanged}
        kept = keys.index(chosen) if chosen in self._rows else min(self.cursor, len(keys) - 1)
        self.cursor = max(kept, 0)
        self.virtual_size = Size(self._width(), sum(heights))
        self.refresh()
        return len(rows) - len(unchanged)

    def _update_in_place(self, rows: Sequence[tuple[str, Any, int]]) -> int:
        changed = 0
        for index, (key, data, _) in enumerate(rows):
            if self._rows[key] == data:
                continue
            self._rows[key] = data
            self._painted.pop(key, None)
            self._refresh_row(index)
            changed += 1
        return changed

    def _refresh_row(self, index: int) -> None:
        """Redraw a row's lines that are on screen (none when it is scrolled out of view)."""
        top, height = self._tops[index], self._heights[index]
        first = max(top, self.scroll_offset.y)
        last = min(top + height, self.scroll_offset.y + self.size.height)
        if first < last:
            self.refresh_lines(first, last - first)  # virtual lines: it subtracts the scroll

    def _width(self) -> int:
        return max(self.scrollable_content_region.width, 1)

    # -- drawing ---------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        number = self.scroll_offset.y + y
        width = self._width()
        index = bisect.bisect_right(self._tops, number) - 1
        if index < 0 or index >= len(self._keys) or number >= self.virtual_size.height:
            return Strip.blank(width)
        lines = self._lines(index, width)
        offset = number - self._tops[index]
        strip = lines[offset] if offset < len(lines) else Strip.blank(width)
        if index == self.cursor and self.has_focus:
            strip = strip.apply_style(CURSOR)
        return strip

    def _lines(self, index: int, width: int) -> list[Strip]:
        key = self._keys[index]
        painted = self._painted.get(key)
        if painted is None or painted[0] != width:
            painted = (width, self.paint(self._rows[key], width))
            self._painted[key] = painted
        return painted[1]

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self._width(), sum(self._heights))

    def on_focus(self) -> None:
        self._refresh_row_safe(self.cursor)

    def on_blur(self) -> None:
        self._refresh_row_safe(self.cursor)

    def _refresh_row_safe(self, index: int) -> None:
        if 0 <= index < len(self._keys):
            self._refresh_row(index)

    # -- the cursor ------------------------------------------------------------------------

    def action_move(self, by: int) -> None:
        if not self._keys:
            return
        before = self.cursor
        self.cursor = min(max(self.cursor + by, 0), len(self._keys) - 1)
        self._refresh_row_safe(before)
        self._refresh_row_safe(self.cursor)
        region = Region(0, self._tops[self.cursor], 1, self._heights[self.cursor])
        # After the next refresh: rows set just now may not have grown the scroll range yet.
        self.call_after_refresh(self.scroll_to_region, region, animate=False, immediate=True)

    def action_page(self, direction: int) -> None:
        if not self._keys:
            return
        target = self._tops[self.cursor] + direction * max(self.size.height - 1, 1)
        index = bisect.bisect_right(self._tops, max(target, 0)) - 1
        self.action_move(index - self.cursor)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        number = self.scroll_offset.y + event.y
        index = bisect.bisect_right(self._tops, number) - 1
        if 0 <= index < len(self._keys):
            self.action_move(index - self.cursor)
            if event.chain >= 2:
                self.action_select()
