"""The overview on `o`: where did training change the model?

A heatmap of layers (rows) × module types (columns), coloured by rel L2 on a log scale,
with the tensors outside the layers in a row of their own; the figures of the cell under
the cursor; and per module type a sparkline of rel L2 across depth. Enter jumps to the
cell's tensor in the tree.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid as GridContainer
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Sparkline, Static

from weightscope.analysis.anatomy import OUTSIDE, Cell, Grid
from weightscope.ui.widgets import badges

# One colour per decade of rel L2, from below 1e-6 to 1e-1 and above.
RAMP = ["#1d3557", "#1f6f8b", "#2a9d8f", "#8ab17d", "#e9c46a", "#f4a261", "#d62828"]
LOWEST_DECADE = -6
OUTSIDE_LABEL = 7  # characters of a name in the row of tensors outside the layers
STATUS_CELLS = ("nonfinite", "error", "shape_mismatch", "only_a", "only_b", "dtype")


def colour(rel: float) -> str:
    decade = math.floor(math.log10(max(rel, 1e-12)))
    return RAMP[min(len(RAMP) - 1, max(0, decade - LOWEST_DECADE + 1))]


def cell_text(cell: Cell | None, label: str = "") -> Text:
    """A cell: its rel L2 on its colour, or the badge of what is more notable than a number."""
    if cell is None:
        return Text(label)
    prefix = f"{label} " if label else ""
    notable = next((s for s in STATUS_CELLS if s in cell.statuses), None)
    if notable is not None:
        return Text(f"{prefix}{badges.symbol(notable)}", style=badges.style(notable))
    rel = cell.rel_l2
    if cell.statuses <= {"identical", "value_equal"}:
        return Text(f"{prefix}=", style="green dim")
    if rel is None:
        return Text(f"{prefix}{badges.symbol('pending')}", style="dim")
    return Text(f"{prefix}{badges.percent(rel):>7}", style=f"black on {colour(rel)}")


class OverviewScreen(Screen[str | None]):
    """Layers × modules; dismissed with the name of the tensor to show, or None."""

    BINDINGS = [Binding("escape,o,q", "dismiss(None)", "Back")]

    def __init__(self, grid: Grid, title: str):
        super().__init__()
        self.grid = grid
        self.heading = title

    def compose(self) -> ComposeResult:
        yield Static(Text(self.heading, "bold"), id="overview-title")
        with Horizontal(id="overview-body"):
            with Vertical(id="overview-left"):
                yield DataTable(id="heatmap", cursor_type="cell", zebra_stripes=False)
                yield Static(id="overview-cell")
            with GridContainer(id="sparklines"):
                for column in self.grid.columns:
                    yield Label(column, classes="spark-label")
                    yield Sparkline(self.grid.column_series(column), summary_function=max)
        yield Static(self.legend(), id="overview-legend")
        yield Footer(show_command_palette=False)

    def legend(self) -> Text:
        text = Text("rel L2: ")
        for i, shade in enumerate(RAMP):
            label = f"<1e{LOWEST_DECADE}" if i == 0 else f"1e{LOWEST_DECADE + i - 1}" + ("+" if i == len(RAMP) - 1 else "")
            text.append(f" {label} ", style=f"black on {shade}")
        text.append("   = identical  ! NaN/Inf  ⇔ shape  ◀ ▶ one side  ✗ unreadable   Enter: show in tree", "dim")
        return text

    def on_mount(self) -> None:
        table = self.query_one("#heatmap", DataTable)
        width = max(len(self.grid.outside), len(self.grid.columns))
        columns = self.grid.columns + [""] * (width - len(self.grid.columns))
        table.add_column("layer", key="layer")
        for i, column in enumerate(columns):
            table.add_column(column, key=f"c{i}")
        for row in self.grid.rows:
            table.add_row(Text(row, "bold"), *[cell_text(self.grid.cells.get((row, c))) for c in columns], key=row)
        if self.grid.outside:
            cells = [cell_text(self.grid.cells[(OUTSIDE, m)], m.split(".")[-1][:OUTSIDE_LABEL])
                     for m in self.grid.outside]
            table.add_row(Text("other", "bold"), *cells, *[""] * (width - len(cells)), key=OUTSIDE)
        table.focus()

    def cell_at(self, row_index: int, column_index: int) -> Cell | None:
        if column_index == 0 or row_index >= len(self.grid.rows) + bool(self.grid.outside):
            return None
        if row_index == len(self.grid.rows):
            modules = self.grid.outside
            return self.grid.cells.get((OUTSIDE, modules[column_index - 1])) if column_index - 1 < len(modules) else None
        columns = self.grid.columns
        if column_index - 1 >= len(columns):
            return None
        return self.grid.cells.get((self.grid.rows[row_index], columns[column_index - 1]))

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        cell = self.cell_at(event.coordinate.row, event.coordinate.column)
        info = self.query_one("#overview-cell", Static)
        if cell is None:
            info.update("")
            return
        rel = cell.rel_l2
        count = f"{cell.count:,} tensor{'s' if cell.count != 1 else ''}"
        names = ", ".join(cell.names) + (" …" if cell.count > len(cell.names) else "")
        text = Text.assemble((f"rel L2 {badges.percent(rel) if rel is not None else 'n/a'}", "bold"),
                             f" · {count} · ", (names, "dim"),
                             ("\n" + ", ".join(badges.words(s) for s in sorted(cell.statuses)), "dim"))
        info.update(text)

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        """Enter: show the cell's tensor (its most-changed one) in the tree."""
        cell = self.cell_at(event.coordinate.row, event.coordinate.column)
        if cell is not None:
            self.dismiss(cell.names[0])
