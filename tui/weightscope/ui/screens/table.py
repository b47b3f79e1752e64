"""The table on `t`: every pair in one sortable, filterable table; Enter shows it in the tree."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input

from weightscope.core.align import Pair
from weightscope.core.checks import nonfinite_text
from weightscope.core.hierarchy import matcher
from weightscope.core.scan import PairResult
from weightscope.ui.widgets import badges


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


# (column title, sort key); a key of None (a figure not known) sorts last either way.
COLUMNS = [
    ("name", lambda r: r.name),
    ("status", lambda r: r.status),
    ("dtype", lambda r: r.dtype),
    ("shape", lambda r: r.shape),
    ("rel L2", lambda r: r.rel_l2),
    ("max |Δ|", lambda r: r.max_abs),
    ("cosine", lambda r: r.cosine),
    ("NaN/Inf", lambda r: r.nonfinite),
]


def sorted_rows(rows: list[Row], column: int, reverse: bool) -> list[Row]:
    key = COLUMNS[column][1]
    known = [r for r in rows if key(r) is not None]
    return sorted(known, key=key, reverse=reverse) + [r for r in rows if key(r) is None]


def number(value: float | None, spec: str = ".3g") -> Text:
    return Text("" if value is None else format(value, spec), justify="right")


class TableScreen(Screen[str | None]):
    """All pairs; dismissed with the name to show in the tree, or None."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "focus_filter", "Filter"),
        *[Binding(str(i + 1), f"sort({i})", f"Sort {title}", show=i in (0, 1, 4)) for i, (title, _) in
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
        yield DataTable(id="pairs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#pairs", DataTable)
        for i, (title, _) in enumerate(COLUMNS):
            table.add_column(f"{i + 1} {title}", key=str(i))
        self.fill()
        table.focus()

    def fill(self) -> None:
        table = self.query_one("#pairs", DataTable)
        table.clear()
        table.add_rows(
            (Text(r.name), Text(f"{badges.symbol(r.status)} {r.status}", badges.style(r.status)), r.dtype, r.shape,
             number(r.rel_l2), number(r.max_abs), number(r.cosine, ".6f"), Text(r.nonfinite_text, "red"))
            for r in self.shown)

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
        self.query_one("#pairs", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(self.shown[event.cursor_row].name)

    def action_back(self) -> None:
        self.dismiss(None)
