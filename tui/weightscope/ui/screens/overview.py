"""The overview on `o`: where did training change the model?

A heatmap of layers (rows) × module types (columns), coloured by rel L2 on a log scale,
with the tensors outside the layers in a row of their own; the figures of the cell under
the cursor; and per module type a sparkline of rel L2 across depth, all on one scale. Enter
jumps to the cell's tensor in the tree. `update` refills it in place as the scan goes on.
`v` turns to the layers inside the layers once the engine has them (`set_inside`): layers ×
heads (a head's q and o slices and the k and v it reads, together) and, for MoE, layers ×
experts; there Enter jumps to the cell's most changed tensor.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid as GridContainer
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Label, Static

from weightscope.analysis.anatomy import OUTSIDE, Cell, Grid
from weightscope.ui.widgets import badges
from weightscope.ui.widgets.key_bar import KeyBar

# One colour per decade of rel L2, from below 1e-6 to 1e-1 and above.
RAMP = ["#1d3557", "#1f6f8b", "#2a9d8f", "#8ab17d", "#e9c46a", "#f4a261", "#d62828"]
LOWEST_DECADE = -6
LABEL_WIDTH = 14  # the sparkline labels' column, as app.tcss sets #sparklines' grid-columns
STATUS_CELLS = ("nonfinite", "error", "shape_mismatch", "only_a", "only_b", "dtype")
BARS = "▁▂▃▄▅▆▇█"
UNCHANGED_BAR = "·"


def colour(rel: float) -> str:
    decade = math.floor(math.log10(max(rel, 1e-12)))
    return RAMP[min(len(RAMP) - 1, max(0, decade - LOWEST_DECADE + 1))]


def short_label(name: str, width: int) -> str:
    """`name` if it fits in `width`, else "…" and as many of its last dotted parts as fit.

    A part is never cut: the last one is shown whole even where it alone is wider."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    label = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + len(label) + 2 > width:  # the dot and the "…"
            break
        label = f"{part}.{label}"
    return f"…{label}"


def cell_text(cell: Cell | None, label: str = "") -> Text:
    """A cell: its rel L2 (a percentage) on its colour, or the badge of what is more notable than a number."""
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
    # As narrow as the figure: a wide column pushes the next ones past the pane's edge, cut mid-figure.
    return Text.assemble(prefix, (badges.percent(rel), f"black on {colour(rel)}"), justify="right")


class SparkScale:
    """One log scale for every sparkline of a view, so equal figures draw equal bars: the
    smallest rel L2 above 0 draws ▁, the largest █, and no change (or none known) `·`."""

    def __init__(self, grid: Grid):
        changes = [rel for column in grid.columns for rel in grid.column_series(column) if rel > 0]
        self.low, self.high = (min(changes), max(changes)) if changes else (0.0, 0.0)

    def bar(self, rel: float) -> str:
        if rel <= 0:
            return UNCHANGED_BAR
        if self.high <= self.low:
            return BARS[-1]
        height = math.log10(rel / self.low) / math.log10(self.high / self.low)
        return BARS[round(min(1.0, max(0.0, height)) * (len(BARS) - 1))]

    def legend(self) -> Text:
        if self.high <= 0:
            return Text("no change yet", "dim")
        return Text(f"{BARS[0]}{badges.percent(self.low)} … {BARS[-1]}{badges.percent(self.high)}")


class DepthSparkline(Widget):
    """rel L2 of one module type down the layers, stretched (or pooled by max) to its width."""

    DEFAULT_CSS = "DepthSparkline { height: 1; }"

    def __init__(self, series: list[float], scale: SparkScale):
        super().__init__()
        self.series, self.scale = series, scale

    def render(self) -> Text:
        text = Text()
        width, count = self.size.width, len(self.series)
        if not count:
            return text
        for x in range(width):
            start = x * count // width
            rel = max(self.series[start:max(start + 1, (x + 1) * count // width)])
            text.append(self.scale.bar(rel), colour(rel) if rel > 0 else "dim")
        return text


class OverviewScreen(Screen[str | None]):
    """Layers × modules; dismissed with the name of the tensor to show, or None."""

    BINDINGS = [Binding("escape,o,q", "dismiss(None)", "Back"),
                Binding("v", "next_layer", "Heads/experts", tooltip="Layers × modules, heads or experts")]

    def __init__(self, grid: Grid, title: str):
        super().__init__()
        self.grids: dict[str, Grid] = {"modules": grid}
        self.shown_layer = "modules"
        self.headings = {"modules": title}
        self.inside_note = "the heads and experts are being worked out…"

    @property
    def grid(self) -> Grid:
        return self.grids[self.shown_layer]

    @property
    def heading(self) -> str:
        return self.headings[self.shown_layer]

    def set_inside(self, inside) -> None:
        """The layers × heads and layers × experts grids (`analysis.heads.Inside`), when they come."""
        self.inside_note = ""
        for layer, grid, heading in (
                ("heads", inside.heads, "rel L2 by layer and head: a head's q and o, and the k and v it reads"),
                ("experts", inside.experts, "rel L2 by layer and expert: each expert's tensors together")):
            if grid is not None:
                self.grids[layer], self.headings[layer] = grid, heading
        if inside.heads is None:
            self.inside_note = inside.why or "no attention heads found"

    def action_next_layer(self) -> None:
        layers = list(self.grids)
        if len(layers) == 1:
            self.notify(self.inside_note or "no heads or experts here", timeout=4)
            return
        self.shown_layer = layers[(layers.index(self.shown_layer) + 1) % len(layers)]
        self.query_one("#overview-title", Static).update(Text(self.heading, "bold"))
        self.fill()
        table = self.query_one("#heatmap", DataTable)
        table.move_cursor(row=0, column=1)
        self.show_cell(table.cursor_coordinate)

    def compose(self) -> ComposeResult:
        yield Static(Text(self.heading, "bold"), id="overview-title")
        with Horizontal(id="overview-body"):
            with Vertical(id="overview-left"):
                yield DataTable(id="heatmap", cursor_type="cell", zebra_stripes=False)
                yield Static(id="overview-cell")
            yield GridContainer(id="sparklines")
        yield Static(self.legend(), id="overview-legend")
        yield KeyBar()

    def legend(self) -> Text:
        text = Text("rel L2: ")
        for i, shade in enumerate(RAMP):
            label = f"<1e{LOWEST_DECADE}" if i == 0 else f"1e{LOWEST_DECADE + i - 1}" + ("+" if i == len(RAMP) - 1 else "")
            text.append(f" {label} ", style=f"black on {shade}")
        text.append("   = identical  ! NaN/Inf  ⇔ shape  ◀ ▶ one side  ✗ unreadable   Enter: show in tree"
                    "   v: modules / heads / experts", "dim")
        return text

    def on_mount(self) -> None:
        self.fill()
        self.query_one("#heatmap", DataTable).focus()

    def on_resize(self) -> None:
        self.call_after_refresh(self.end_heatmap_at_a_column)

    def end_heatmap_at_a_column(self) -> None:
        """Narrow the heatmap to the columns that fit whole: a figure cut at the pane's edge
        ("5.8" of "5.8%") reads as a figure without its unit. The cursor scrolls to the rest."""
        table = self.query_one("#heatmap", DataTable)
        scrollbar = table.scrollbar_size_vertical
        room = self.query_one("#overview-left").content_size.width - scrollbar
        edge = 0
        for column in table.columns.values():
            if edge + column.get_render_width(table) > room:
                table.styles.max_width = edge + scrollbar
                return
            edge += column.get_render_width(table)
        table.styles.max_width = None

    def update(self, grid: Grid, title: str) -> None:
        """Show a newer grid (more of the scan read) in place, the cursor on the same cell."""
        table = self.query_one("#heatmap", DataTable)
        coordinate = table.cursor_coordinate
        where = self.place_at(coordinate)
        self.grids["modules"], self.headings["modules"] = grid, title
        if self.shown_layer != "modules":  # the layer shown does not follow the scan
            return
        self.query_one("#overview-title", Static).update(Text(title, "bold"))
        self.fill()
        found = self.coordinate_of(*where) if where is not None else None
        row, column = found or (min(coordinate.row, table.row_count - 1), min(coordinate.column, len(table.columns) - 1))
        table.move_cursor(row=max(0, row), column=max(0, column))
        self.show_cell(table.cursor_coordinate)

    def fill(self) -> None:
        """The heatmap and the sparklines of `self.grid`."""
        table = self.query_one("#heatmap", DataTable)
        table.clear(columns=True)
        width = max(len(self.grid.outside), len(self.grid.columns))
        columns = self.grid.columns + [""] * (width - len(self.grid.columns))
        table.add_column("layer", key="layer")
        for i, column in enumerate(columns):
            table.add_column(short_label(column, LABEL_WIDTH - 1), key=f"c{i}")
        for row in self.grid.rows:
            table.add_row(Text(row, "bold"), *[cell_text(self.grid.cells.get((row, c))) for c in columns], key=row)
        if self.grid.outside:
            cells = [cell_text(self.grid.cells[(OUTSIDE, m)], m.split(".")[-1]) for m in self.grid.outside]
            table.add_row(Text("other", "bold"), *cells, *[""] * (width - len(cells)), key=OUTSIDE)
        scale = SparkScale(self.grid)
        labels = [short_label(column, LABEL_WIDTH - 1) for column in self.grid.columns]
        sparklines = self.query_one("#sparklines", GridContainer)
        sparklines.display = self.shown_layer == "modules"  # a sparkline per head or expert would be a wall of them
        rows = [Label("log scale", classes="spark-label"), Static(scale.legend(), classes="spark-scale")]
        for column, label in zip(self.grid.columns, labels):
            rows += [Label(label, classes="spark-label"), DepthSparkline(self.grid.column_series(column), scale)]
        sparklines.remove_children()
        sparklines.mount(*rows)
        widest = max(map(len, labels), default=0) + 1  # and a space before the bars
        # A last part too long for the column: widen the column rather than cut the part.
        sparklines.styles.grid_columns = f"{widest} 1fr" if widest > LABEL_WIDTH else None
        self.call_after_refresh(self.end_heatmap_at_a_column)

    def place_at(self, coordinate: Coordinate) -> tuple[str, str] | None:
        """The row and module of a heatmap coordinate; None off the cells."""
        rows, column = self.grid.rows, coordinate.column - 1
        if column < 0 or coordinate.row > len(rows):
            return None
        if coordinate.row == len(rows):
            return (OUTSIDE, self.grid.outside[column]) if column < len(self.grid.outside) else None
        return (rows[coordinate.row], self.grid.columns[column]) if column < len(self.grid.columns) else None

    def coordinate_of(self, row: str, module: str) -> tuple[int, int] | None:
        modules = self.grid.outside if row == OUTSIDE else self.grid.columns
        rows = self.grid.rows + ([OUTSIDE] if self.grid.outside else [])
        if row not in rows or module not in modules:
            return None
        return rows.index(row), modules.index(module) + 1

    def cell_at(self, row_index: int, column_index: int) -> Cell | None:
        where = self.place_at(Coordinate(row_index, column_index))
        return self.grid.cells.get(where) if where is not None else None

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        self.show_cell(event.coordinate)

    def show_cell(self, coordinate: Coordinate) -> None:
        """The figures of the cell at `coordinate` under the heatmap."""
        cell = self.cell_at(coordinate.row, coordinate.column)
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
