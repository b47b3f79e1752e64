"""The table on `t`: every pair in one sortable, filterable table; Enter shows it in the tree."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input

from weightscope.compare.align import Pair
from weightscope.compare.checks import nonfinite_text
from weightscope.analysis.hierarchy import matcher
from weightscope.compare.scan import PairResult
from weightscope.ui.widgets.pair_table import COLUMNS, PairTable


@dataclass(frozen=True)
class Row:
    """One pair as the table shows and sorts it."""

    name: str
    status: str
    dtype: str
    shape: str
    rel_l2: float | None
    max_abs: float | None
    cosine: float | None
    nonfinite: int
    nonfinite_text: str


def row_of(pair: Pair, status: str, result: PairResult | None) -> Row:
    a, b = pair.a, pair.b
    dtype = " → ".join(dict.fromkeys(i.stored_dtype or "?" for i in (a, b) if i is not None))
    shape = " → ".join(dict.fromkeys("×".join(map(str, i.shape)) if i.shape is not None else "?"
                                     for i in (a, b) if i is not None))
    diff = result.diff if result else None
    sides = [s for s in ((result.a, result.b) if result else ()) if s is not None]
    text = " | ".join(t for t in (nonfinite_text(s) for s in sides) if t)
    return Row(pair.name, status, dtype, shape, diff.rel_l2 if diff else None, diff.max_abs if diff else None,
               diff.cosine if diff else None, sum(s.nonfinite for s in sides), text)


# The sort key of each of the table's columns (pair_table.COLUMNS); a key of None (a figure
# not known) sorts last either way.
SORT_KEYS = [lambda r: r.name, lambda r: r.status, lambda r: r.dtype, lambda r: r.shape,
             lambda r: r.rel_l2, lambda r: r.max_abs, lambda r: r.cosine, lambda r: r.nonfinite]


def sorted_rows(rows: list[Row], column: int, reverse: bool) -> list[Row]:
    key = SORT_KEYS[column]
    known = [r for r in rows if key(r) is not None]
    return sorted(known, key=key, reverse=reverse) + [r for r in rows if key(r) is None]


class TableScreen(Screen[str | None]):
    """All pairs; dismissed with the name to show in the tree, or None."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "focus_filter", "Filter"),
        *[Binding(str(i + 1), f"sort({i})", f"Sort {title}", show=i in (0, 1, 4)) for i, (title, _, _) in
          enumerate(COLUMNS)],
    ]

    def __init__(self, rows: list[Row]):
        super().__init__()
        self.all_rows = rows
        self.shown: list[Row] = rows
        self.sort_column: int | None = None
        self.reverse = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: substring or glob; digits 1–8 sort by a column (again: reverse)",
                    id="table-filter")
        yield PairTable(id="pairs")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.fill()
        self.query_one(PairTable).focus()

    def fill(self) -> None:
        self.query_one(PairTable).show(self.shown)

    def action_sort(self, column: int) -> None:
        self.reverse = not self.reverse if self.sort_column == column else column >= 4
        self.sort_column = column
        self.shown = sorted_rows(self.shown, column, self.reverse)
        self.fill()

    def action_focus_filter(self) -> None:
        self.query_one("#table-filter", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        keep = matcher(event.value) if event.value else None
        rows = [r for r in self.all_rows if keep is None or keep(r.name)]
        self.shown = rows if self.sort_column is None else sorted_rows(rows, self.sort_column, self.reverse)
        self.fill()

    def on_input_submitted(self) -> None:
        self.query_one(PairTable).focus()

    def on_pair_table_selected(self, event: PairTable.Selected) -> None:
        self.dismiss(self.shown[event.index].name)

    def action_back(self) -> None:
        self.dismiss(None)
