"""The overview screen: sparklines on one scale, labels never cut mid-word, figures with their
unit, and a refill in place; on hand-made grids (the screen alone) and on the demo pair."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console
from textual.app import App
from textual.widgets import DataTable, Label, Static

import weightscope.ui.app
from weightscope.analysis.anatomy import OUTSIDE, Cell, Grid
from weightscope.ui.screens.overview import BARS, DepthSparkline, OverviewScreen
from weightscope.ui.widgets import badges

from .helpers import SIZE, open_app, screen_text, settle, wait_for


def changed(rel: float, name: str = "t") -> Cell:
    return Cell(1, [name], rel ** 2, 1.0, {"changed"})


def layered(series: dict[str, list[float | None]], outside: dict[str, Cell] | None = None) -> Grid:
    """A grid of one cell per layer and module type, changed by the rel L2 given (None: not read yet)."""
    rows = [str(i) for i in range(max(map(len, series.values())))]
    cells = {}
    for column, values in series.items():
        for row, rel in zip(rows, values):
            name = f"model.layers.{row}.{column}.weight"
            cells[(row, column)] = changed(rel, name) if rel is not None else Cell(1, [name], statuses={"pending"})
    cells.update({(OUTSIDE, module): cell for module, cell in (outside or {}).items()})
    return Grid(rows, list(series), cells, sorted(outside or {}))


class OverviewOnly(App[str | None]):
    """The overview alone, laid out by the app's stylesheet; exits with what it was dismissed with."""

    CSS_PATH = str(Path(weightscope.ui.app.__file__).with_name("app.tcss"))

    def __init__(self, grid: Grid):
        super().__init__()
        self.grid = grid

    def on_mount(self) -> None:
        self.push_screen(OverviewScreen(self.grid, "first"), self.exit)


def sparklines(app: App) -> dict[str, str]:
    """Each sparkline as drawn, by the label beside it."""
    lines = screen_text(app).splitlines()
    labels = [str(label.content) for label in app.screen.query(".spark-label")]
    drawn = [lines[s.region.y][s.region.x:s.region.right] for s in app.screen.query(DepthSparkline)]
    return dict(zip(labels[1:], drawn))  # the first row states the scale


def shown(app: App, selector: str) -> str:
    """What a Static of the overview shows, as plain text."""
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(app.screen.query_one(selector, Static).content)
    return console.export_text()


def heatmap(app: App) -> DataTable:
    return app.screen.query_one("#heatmap", DataTable)


def cell(table: DataTable, row: str, column: str) -> str:
    index = next(i for i, c in enumerate(table.columns.values()) if str(c.label) == column)
    return str(table.get_row(row)[index])


async def test_sparklines_share_one_scale():
    """q at about 0.14% in every layer, gate at 2.5%, o at 5.8%, up 2.5% then 20%: equal
    figures draw equal bars, whatever their row; the scale is stated once."""
    app = OverviewOnly(layered({"q": [0.00140, 0.00141, 0.00139, 0.00142], "o": [0.058] * 4,
                                "gate": [0.025] * 4, "up": [0.025, 0.025, 0.025, 0.2]}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        drawn = sparklines(app)
        assert set(drawn) == {"q", "o", "gate", "up"}
        assert {len(set(drawn[m])) for m in ("q", "o", "gate")} == {1}  # flat figures draw flat lines
        height = {m: BARS.index(bars[0]) for m, bars in drawn.items()}
        assert height["q"] < height["gate"] < height["o"] < BARS.index(drawn["up"][-1])
        assert height["up"] == height["gate"]  # 2.5% is 2.5% in either row
        assert drawn["q"][0] == "▁" and drawn["up"][-1] == "█"
        assert "▁0.14% … █20%" in shown(app, ".spark-scale")


async def test_labels_keep_whole_words():
    modules = ["q", "self_attn.rotary_emb.inv_freq", "block.post_feedforward_layernorm_scale"]
    outside = {"model.embed_tokens": Cell(1, ["model.embed_tokens.weight"], statuses={"identical"}),
               "lm_head": Cell(1, ["lm_head.weight"], statuses={"shape_mismatch"}),
               "model.norm": changed(0.0032, "model.norm.weight")}
    app = OverviewOnly(layered({module: [0.01, 0.02] for module in modules}, outside))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        labels = ["q", "…inv_freq", "…post_feedforward_layernorm_scale"]
        assert list(sparklines(app)) == labels
        screen = screen_text(app)
        assert "…post_feedforward_layernorm_scale ▁" in screen  # widened, not cut, a space before the bars
        table = heatmap(app)
        assert [str(c.label) for c in table.columns.values()][1:] == labels
        assert [str(c) for c in table.get_row(OUTSIDE)][1:] == ["lm_head ⇔", "embed_tokens =", "norm 0.32%"]


async def test_figures_show_their_unit_and_are_never_cut_at_the_edge(demo):
    """At 80×24 the heatmap is wider than its pane: it ends at the last column that fits whole,
    so no figure shows without its "%" ("5.8" of "5.8%"); the cursor scrolls to the rest."""
    app = open_app(*demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen))
        await pilot.pause()
        grid, table = app.screen.grid, heatmap(app)
        changes = [(key, c.rel_l2) for key, c in grid.cells.items() if key[0] != OUTSIDE and c.statuses == {"changed"}]
        assert len(changes) >= 20
        for (row, column), rel in changes:
            assert cell(table, row, column) == badges.percent(rel)  # "5.8%", "20%"
        widths = {str(c.label): c.content_width for c in table.columns.values()}
        assert widths["o"] == widths["gate"] == len("5.8%")  # no padding to push the next ones out of sight

        def figures_on_screen() -> list[str]:
            lines = screen_text(app).splitlines()[table.region.y + 1:table.region.y + 1 + len(grid.rows)]
            start = table.region.x + (len(" layer ") if table.scroll_x == 0 else 0)  # the layer numbers, in sight
            return [f for line in lines for f in re.findall(r"\d+(?:\.\d+)?%?", line[start:table.region.right])]

        assert "5.4%" in figures_on_screen() and all(f.endswith("%") for f in figures_on_screen()), figures_on_screen()
        await pilot.press("down", *["right"] * 7)  # onto layer 1's down, off the first view
        await pilot.pause()
        assert "2.5%" in figures_on_screen() and all(f.endswith("%") for f in figures_on_screen()), figures_on_screen()


async def test_update_refills_in_place_and_keeps_the_cursor_on_its_cell():
    app = OverviewOnly(layered({"q": [0.01, 0.01], "up": [0.02, None]}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen, table = app.screen, heatmap(app)
        table.move_cursor(row=1, column=2)  # layer 1's up, not read yet
        await pilot.pause()
        assert "n/a" in shown(app, "#overview-cell")
        # the scan goes on: layer 2 and the k column arrive, layer 1's up is read
        screen.update(layered({"q": [0.01, 0.01, 0.01], "k": [0.01] * 3, "up": [0.02, 0.2, 0.02]}), "second")
        await pilot.pause()
        assert app.screen is screen and heatmap(app) is table
        assert table.cursor_coordinate == (1, 3)  # still layer 1's up, one column further right
        assert cell(table, "1", "up") == "20%" and table.row_count == 3
        assert "rel L2 20%" in shown(app, "#overview-cell")
        assert shown(app, "#overview-title").strip() == "second"
        drawn = sparklines(app)
        assert list(drawn) == ["q", "k", "up"]
        up = [BARS.index(bar) for bar in drawn["up"]]
        assert up[0] == up[-1] < max(up) == len(BARS) - 1  # layers 0 and 2 at 2%, layer 1 at 20%
        # twice in a row, as results arrive: no widget left over from the first
        screen.update(layered({"q": [0.01] * 3, "up": [0.02] * 3}), "third")
        screen.update(layered({"q": [0.01] * 4, "up": [0.02] * 4}), "fourth")
        await pilot.pause()
        assert len(screen.query(DepthSparkline)) == 2 and len(screen.query(Label)) == 3
        assert table.cursor_coordinate == (1, 2)
        await pilot.press("enter")
    assert app.return_value == "model.layers.1.up.weight"
