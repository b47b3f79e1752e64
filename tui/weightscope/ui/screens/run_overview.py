"""A run's overview on `o`: drift from the reference of one module type, layers (rows) ×
steps (columns), coloured on the pair overview's decades. `m` / `M` turn to the next or
previous module type; Enter shows the cell's most drifted tensor in the tree."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Static

from weightscope.analysis.anatomy import place
from weightscope.analysis.runs import LayerSteps, layer_steps
from weightscope.report.diff import percent
from weightscope.ui.screens.overview import LOWEST_DECADE, RAMP, colour
from weightscope.ui.widgets.key_bar import KeyBar
from weightscope.ui.widgets.run_tree import step_labels


def module_of(name: str) -> str | None:
    where = place(name)
    return where.module if where.layer is not None else None


def heat_cell(value: float, pending: bool) -> Text:
    """A cell: drift on its decade's colour; `·` not read yet; blank where undefined; `=` for 0."""
    if pending and not math.isfinite(value):
        return Text("·", "dim", justify="center")
    if not math.isfinite(value):
        return Text("")
    if value == 0:
        return Text("=", "green dim", justify="center")
    return Text(percent(value), f"black on {colour(value)}", justify="right")


class RunOverviewScreen(Screen[str | None]):
    """Layers × steps of one module type; dismissed with a tensor to show, or None."""

    BINDINGS = [Binding("escape,o,q", "dismiss(None)", "Back"),
                Binding("m", "module(1)", "Next module"),
                Binding("M", "module(-1)", "Prev module", show=False)]

    def __init__(self, catalog, table, module: str | None, scan_done: bool):
        super().__init__()
        self.catalog, self.table, self.scan_done = catalog, table, scan_done
        self.grid: LayerSteps = layer_steps(catalog, table, module)

    def compose(self) -> ComposeResult:
        yield Static(id="overview-title")
        yield DataTable(id="heatmap", cursor_type="cell", zebra_stripes=False)
        yield Static(id="overview-cell")
        yield Static(self.legend(), id="overview-legend")
        yield KeyBar()

    def legend(self) -> Text:
        text = Text("drift: ")
        for i, shade in enumerate(RAMP):
            label = f"<1e{LOWEST_DECADE}" if i == 0 else f"1e{LOWEST_DECADE + i - 1}" + ("+" if i == len(RAMP) - 1 else "")
            text.append(f" {label} ", style=f"black on {shade}")
        text.append("   = 0  · not read  blank: undefined   Enter: show in tree", "dim")
        return text

    def on_mount(self) -> None:
        self.fill()
        self.query_one("#heatmap", DataTable).focus()

    def heading(self) -> Text:
        grid = self.grid
        read = "" if self.scan_done else " (scan under way)"
        if not grid.rows:
            return Text("no layers found in this model's names", "bold")
        place_of = f"{grid.modules.index(grid.module) + 1}/{len(grid.modules)}"
        return Text.assemble(("drift from the reference by layer and step: ", "bold"), (grid.module, "bold reverse"),
                             f" ({place_of}, m: next){read}")

    def fill(self) -> None:
        table = self.query_one("#heatmap", DataTable)
        coordinate = table.cursor_coordinate
        table.clear(columns=True)
        table.add_column("layer", key="layer")
        for k, label in enumerate(step_labels(self.catalog.points)):
            table.add_column(label, key=f"s{k}")
        for r, row in enumerate(self.grid.rows):
            cells = [heat_cell(float(v), bool(p)) for v, p in zip(self.grid.drift[r], self.grid.pending[r])]
            table.add_row(Text(row, "bold"), *cells, key=row)
        self.query_one("#overview-title", Static).update(self.heading())
        if self.grid.rows:
            table.move_cursor(row=min(coordinate.row, len(self.grid.rows) - 1),
                              column=max(1, min(coordinate.column, self.table.steps)))
            self.show_cell(table.cursor_coordinate)

    def action_module(self, delta: int) -> None:
        modules = self.grid.modules
        if not modules:
            return
        module = modules[(modules.index(self.grid.module) + delta) % len(modules)]
        self.grid = layer_steps(self.catalog, self.table, module)
        self.fill()

    def cell(self, coordinate: Coordinate) -> tuple[int, int] | None:
        r, t = coordinate.row, coordinate.column - 1
        if not (0 <= r < len(self.grid.rows)) or not (0 <= t < self.table.steps):
            return None
        return r, t

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self.show_cell(event.coordinate)

    def show_cell(self, coordinate: Coordinate) -> None:
        info = self.query_one("#overview-cell", Static)
        where = self.cell(coordinate)
        if where is None:
            info.update("")
            return
        r, t = where
        value, pending = float(self.grid.drift[r, t]), bool(self.grid.pending[r, t])
        shown = percent(value) if math.isfinite(value) else "not read yet" if pending else "n/a (undefined)"
        members = self.grid.members[r]
        names = ", ".join(self.catalog.names[i] for i in members[:3]) + (" …" if len(members) > 3 else "")
        info.update(Text.assemble((f"layer {self.grid.rows[r]}, {self.grid.module}, step "
                                   f"{step_labels(self.catalog.points)[t]}: drift {shown}", "bold"),
                                  f" · {len(members)} tensor{'s' if len(members) != 1 else ''} · ", (names, "dim")))

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        where = self.cell(event.coordinate)
        if where is None:
            return
        r, t = where
        members = self.grid.members[r]
        drift = np.nan_to_num(self.table.drift()[members, t], nan=-1.0)
        self.dismiss(self.catalog.names[members[int(np.argmax(drift))]])
