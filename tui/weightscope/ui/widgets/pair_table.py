"""The rows of the table screen, drawn a screenful at a time.

A `DataTable` builds and measures every cell when rows are added: 17 s for a
100,000-tensor model, with the UI frozen. Here a row is formatted only when its line is on
screen (Textual's line API), so showing, sorting or filtering 100,000 rows costs what
sorting or filtering the list costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from weightscope.ui.widgets import badges

# (title, width, right-aligned); the name column takes the width that is left.
COLUMNS = [("name", 0, False), ("status", 16, False), ("dtype", 9, False), ("shape", 12, False),
           ("rel L2", 9, True), ("max |Δ|", 9, True), ("cosine", 9, True), ("NaN/Inf", 10, False)]
NAME_MIN = 24
GAP = 1
DROPPED_FIRST = (2, 3, 6, 5)  # columns a narrow terminal goes without, in this order: dtype, shape, cosine, max |Δ|


def number(value: float | None, compared: bool, spec: str = ".3g") -> str:
    """A figure; "n/a" where the pair was compared but the figure is undefined (the detail pane says why)."""
    if value is None:
        return "n/a" if compared else ""
    return format(value, spec)


def fit(text: str, width: int, right: bool = False) -> str:
    """`text` in exactly `width` cells; cut at the start (the end of a dotted name says most:
    `…rs.99.mlp.experts.999.down_proj.weight` keeps both numbers)."""
    if len(text) > width:
        text = "…" + text[len(text) - width + 1:] if width > 1 else text[:width]
    return text.rjust(width) if right else text.ljust(width)


def shown_columns(width: int) -> list[int]:
    """The columns that fit in `width`, the name at least `NAME_MIN` wide."""
    shown = list(range(len(COLUMNS)))
    for column in DROPPED_FIRST:
        if NAME_MIN + sum(COLUMNS[k][1] + GAP for k in shown[1:]) <= width:
            break
        shown.remove(column)
    return shown


class PairTable(ScrollView, can_focus=True):
    """Rows of `screens.table.Row`, a header line on top, a cursor row; Enter selects."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move_to(0)", "First", show=False),
        Binding("end", "move_to(-1)", "Last", show=False),
        Binding("enter", "select", "Show in tree"),
    ]
    COMPONENT_CLASSES = {"pair-table--header", "pair-table--cursor", "pair-table--stripe"}
    DEFAULT_CSS = """
    PairTable { height: 1fr; overflow-x: hidden; }
    PairTable > .pair-table--header { text-style: bold; background: $panel; }
    PairTable > .pair-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
    PairTable > .pair-table--stripe { background: $surface-lighten-1; }
    """

    cursor = reactive(0, always_update=True)
    sorted_by: tuple[int, bool] = (0, False)
    """(column, descending): the header marks it."""

    @dataclass
    class Selected(Message):
        index: int

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows: list = []

    def show(self, rows: list) -> None:
        """Show these rows from the top, the cursor on the first."""
        self.rows = rows
        self.virtual_size = Size(1, len(rows) + 1)  # a line per row, and the header
        self.scroll_to(y=0, animate=False)
        self.cursor = 0
        self.refresh()

    @property
    def page(self) -> int:
        """Rows on screen below the header."""
        return max(1, self.scrollable_content_region.height - 1)

    def watch_cursor(self, cursor: int) -> None:
        top = round(self.scroll_offset.y)
        if cursor < top:
            self.scroll_to(y=cursor, animate=False)
        elif cursor >= top + self.page:
            self.scroll_to(y=cursor - self.page + 1, animate=False)
        self.refresh()

    def action_move(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, step: int) -> None:
        self.move_to(self.cursor + step * self.page)

    def action_move_to(self, index: int) -> None:
        self.move_to(index if index >= 0 else len(self.rows) - 1)

    def move_to(self, index: int) -> None:
        self.cursor = max(0, min(index, len(self.rows) - 1))

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self.cursor))

    def on_click(self, event) -> None:
        if event.y >= 1:
            self.move_to(round(self.scroll_offset.y) + event.y - 1)
            if event.chain == 2:  # a double click picks the row
                self.action_select()

    def widths(self) -> list[tuple[int, int]]:
        """(column, width) of each column shown."""
        total = self.scrollable_content_region.width
        shown = shown_columns(total)
        fixed = sum(COLUMNS[k][1] + GAP for k in shown[1:])
        return [(0, max(NAME_MIN, total - fixed))] + [(k, COLUMNS[k][1]) for k in shown[1:]]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        widths = self.widths()
        if y == 0:
            style = self.get_component_rich_style("pair-table--header")
            column, descending = self.sorted_by

            def title(k: int) -> str:  # the digit that sorts by it; an arrow after it on the one sorted by
                return f"{k + 1}{('▼' if descending else '▲') if k == column else ' '}{COLUMNS[k][0]}"
            text = (" " * GAP).join(fit(title(k), w, COLUMNS[k][2]) for k, w in widths)
            return Strip([Segment(text, style)]).adjust_cell_length(width, style)
        index = round(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        if index == self.cursor:
            base = self.get_component_rich_style("pair-table--cursor")
        elif index % 2:
            base = self.get_component_rich_style("pair-table--stripe")
        else:
            base = self.rich_style
        return Strip(self.cells(self.rows[index], widths, base)).adjust_cell_length(width, base)

    def cells(self, row, widths: list[tuple[int, int]], base: Style) -> list[Segment]:
        status = badges.style(row.status)
        rel = badges.percent(row.rel_l2) if row.rel_l2 is not None else number(None, row.compared)
        texts = [(row.name, None), (f"{badges.symbol(row.status)} {row.status}", status), (row.dtype, None),
                 (row.shape, None), (rel, None), (number(row.max_abs, row.compared), None),
                 (number(row.cosine, row.compared, ".6f"), None), (row.nonfinite_text, Style(color="red"))]
        segments: list[Segment] = []
        for k, w in widths:
            text, style = texts[k]
            if segments:
                segments.append(Segment(" " * GAP, base))
            segments.append(Segment(fit(text, w, COLUMNS[k][2]), base + style if style else base))
        return segments
