"""The table on `t`: every pair in one sortable, filterable table; Enter shows it in the tree.

Rows are the catalog's and the results' columns: a row is put together only when its line
is drawn, and sorting is an argsort of one column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input

from weightscope.analysis.hierarchy import SEVERITY, matcher
from weightscope.compare import columns as c
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import STATUSES, ResultTable
from weightscope.report.diff import nonfinite_text
from weightscope.ui.widgets.key_bar import KeyBar
from weightscope.ui.widgets.pair_table import COLUMNS, PairTable


@dataclass(frozen=True)
class Row:
    """One pair as the table shows it."""

    name: str
    status: str
    dtype: str
    shape: str
    rel_l2: float | None
    max_abs: float | None
    cosine: float | None
    nonfinite_text: str
    compared: bool  # both sides were read and compared: a missing figure is undefined ("n/a"), not absent


def joined(values) -> str:
    return " → ".join(dict.fromkeys(v for v in values if v is not None))


class Rows:
    """The rows of some pairs, in an order; a row is made when it is first drawn."""

    def __init__(self, catalog: Catalog, table: ResultTable, badge: np.ndarray, order: np.ndarray):
        self.catalog, self.table, self.badge, self.order = catalog, table, badge, order
        self.row = lru_cache(maxsize=512)(self._row)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> Row:
        return self.row(int(self.order[k]))

    def index(self, k: int) -> int:
        """The pair shown on row k."""
        return int(self.order[k])

    def _row(self, i: int) -> Row:
        catalog, values = self.catalog, self.table.values[i]
        sides = (catalog.a, catalog.b)
        dtype = joined(s.stored_dtype(i) or "?" if s.name[i] is not None else None for s in sides)
        shape = joined(("×".join(map(str, s.shape[i])) if s.shape[i] is not None else "?")
                       if s.name[i] is not None else None for s in sides)

        def figure(column: int) -> float | None:
            value = values[c.FD + column]
            return None if np.isnan(value) else float(value)

        texts = [nonfinite_text(*(int(np.nan_to_num(values[base + k])) for k in (c.FNAN, c.FPOSINF, c.FNEGINF)))
                 for base in (c.FA, c.FB)]
        status = SEVERITY[self.badge[i]]
        if status == "nonfinite":  # NaN/Inf is a flag of its own column, beside the status the scan gave
            status = STATUSES[self.table.status[i]]
        return Row(catalog.names[i], status, dtype, shape, figure(c.REL_L2), figure(c.MAX_ABS),
                   figure(c.COSINE), " | ".join(t for t in texts if t), not np.isnan(values[c.FD + c.FCHANGED]))


class TableScreen(Screen[str | None]):
    """All pairs; dismissed with the name to show in the tree, or None."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "focus_filter", "Filter"),
        *[Binding(str(i + 1), f"sort({i})", f"Sort {title}", show=i in (0, 1, 4)) for i, (title, _, _) in
          enumerate(COLUMNS)],
    ]

    def __init__(self, catalog: Catalog, table: ResultTable, badge: np.ndarray, natural: np.ndarray):
        """
        Args:
            badge: each pair's status code (`hierarchy.SEVERITY`).
            natural: every pair in natural name order (the tree's), the table's first order.
        """
        super().__init__()
        self.catalog, self.table, self.badge = catalog, table, badge
        self.natural = natural
        self.kept = natural  # the pairs the filter keeps, in their order
        self.sort_column: int | None = None
        self.reverse = False
        self.rows: Rows | None = None  # made on mount

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: substring or glob; digits 1–8 sort by a column (again: reverse)",
                    id="table-filter")
        yield PairTable(id="pairs")
        yield KeyBar()

    def on_mount(self) -> None:
        self.fill()
        self.query_one(PairTable).focus()

    def fill(self) -> None:
        order = self.kept if self.sort_column is None else self.kept[self.positions(self.kept)]
        self.rows = Rows(self.catalog, self.table, self.badge, order)
        table = self.query_one(PairTable)
        table.sorted_by = (self.sort_column or 0, self.reverse)
        table.show(self.rows)

    def refresh_rows(self) -> None:
        """Results came in: the rows on screen drawn again from them (the order stays as sorted)."""
        if self.rows is None:  # pushed but not mounted yet: its first fill reads the results then
            return
        self.rows.row.cache_clear()
        self.query_one(PairTable).refresh()

    def positions(self, pairs: np.ndarray) -> np.ndarray:
        """Positions of `pairs` sorted by the chosen column; unknown figures last either way."""
        column, values = self.sort_column, self.table.values[pairs]
        if column == 0:
            key = np.arange(len(pairs))  # the natural order they are in
        elif column == 1:
            key = self.badge[pairs]
        elif column in (2, 3):
            rows = Rows(self.catalog, self.table, self.badge, pairs)
            key = np.array([rows[k].dtype if column == 2 else rows[k].shape for k in range(len(pairs))], object)
        elif column in (4, 5, 6):
            key = values[:, c.FD + (c.REL_L2, c.MAX_ABS, c.COSINE)[column - 4]]
        else:
            key = np.nan_to_num(sum(values[:, base + k] for base in (c.FA, c.FB) for k in (c.FNAN, c.FPOSINF, c.FNEGINF)))
        unknown = np.array([v != v for v in key]) if key.dtype == object else np.isnan(key.astype(float))
        known = np.flatnonzero(~unknown)
        ordered = known[np.argsort(key[known], kind="stable")]
        if self.reverse:
            ordered = ordered[::-1]
        return np.concatenate([ordered, np.flatnonzero(unknown)])

    def action_sort(self, column: int) -> None:
        self.reverse = not self.reverse if self.sort_column == column else column >= 4
        self.sort_column = column
        self.fill()

    def action_focus_filter(self) -> None:
        self.query_one("#table-filter", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        keep = matcher(event.value) if event.value else None
        names = self.catalog.names
        self.kept = self.natural if keep is None else np.array([i for i in self.natural.tolist() if keep(names[i])],
                                                               np.int64)
        self.fill()

    def on_input_submitted(self) -> None:
        self.query_one(PairTable).focus()

    def on_pair_table_selected(self, event: PairTable.Selected) -> None:
        self.dismiss(self.catalog.names[self.rows.index(event.index)])

    def action_back(self) -> None:
        self.dismiss(None)
