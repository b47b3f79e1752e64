"""The whole-model views (overview, table, anomalies, export) and the detail pane's spectrum
and change map, driven with Pilot on small pairs; snapshots of the overview and the map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable

from weightscope.analysis.hierarchy import badges
from weightscope.compare import columns as c
from weightscope.compare.catalog import Catalog, Side, SideSummary
from weightscope.compare.results import CHANGED, ResultTable
from weightscope.ui.app import WeightscopeApp
from weightscope.ui.screens.overview import OverviewScreen
from weightscope.ui.screens.table import TableScreen
from weightscope.ui.widgets.change_map_view import ChangeMapView
from weightscope.ui.widgets.spectrum_plot import SpectrumPlot

from weightscope.engine import protocol as msg

from .helpers import SIZE, Gate, cursor_path, open_app, screen_text, settle, static_text, wait_for


def figures(app: WeightscopeApp, view: str) -> list:
    """The spectra or change maps the app has computed."""
    return [app.figures.get(key) for key in app.figures.keys() if key[1] == view]


def cell(table: DataTable, row: str, column: str) -> str:
    """The text of the heatmap cell in `row` (a layer, or "outside layers") under `column`."""
    index = next(i for i, c in enumerate(table.columns.values()) if str(c.label) == column)
    return str(table.get_row(row)[index])


async def test_overview_shows_frozen_embeddings_nans_and_changes_where_they_are(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen))
        screen = app.screen
        table = screen.query_one("#heatmap", DataTable)
        assert [str(r) for r in screen.grid.rows] == ["0", "1", "2", "3"]
        assert cell(table, "0", "q") == "="  # layer 0 frozen
        assert cell(table, "2", "up") == "!"  # the planted NaNs
        assert cell(table, "3", "down").strip() == "20%"  # layer 3's MLP moved most
        assert cell(table, "1", "q").strip().endswith("%")
        outside = [str(c) for c in table.get_row("outside layers")]
        assert "embed_tokens =" in outside and "lm_head ⇔" in outside  # frozen, resized (names whole)
        # Enter jumps to the cell's tensor in the tree
        table.move_cursor(row=2, column=[str(c.label) for c in table.columns.values()].index("up"))
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, OverviewScreen)
        assert cursor_path(app) == "model.layers.2.mlp.up_proj.weight"


async def test_an_overview_opened_mid_scan_follows_the_scan(demo):
    """Opened before any result is in, the overview says how far the scan is; once the scan is
    done it shows the final figures, without being opened again."""
    app = open_app(*demo, use_cache=False)
    gate = Gate(app, msg.Results, msg.ScanDone)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen))
        screen = app.screen
        assert "0 of 40 tensors scanned so far" in screen.heading
        assert all(cell.rel_l2 is None for cell in screen.grid.cells.values())
        gate.open()
        await wait_for(pilot, lambda: app.scan_done and "so far" not in screen.heading)
        assert app.screen is screen  # the same screen, refilled
        assert any(cell.rel_l2 for cell in screen.grid.cells.values())
        assert "so far" not in screen_text(app)


async def test_a_table_opened_mid_scan_follows_the_scan(demo):
    """Opened before any result is in, every row reads "pending"; once the scan is done the
    same screen shows the statuses, without being opened again."""
    app = open_app(*demo, use_cache=False)
    gate = Gate(app, msg.Results, msg.ScanDone)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause()
        screen = app.screen
        assert "changed" not in screen_text(app)
        assert "pending" in screen_text(app)
        gate.open()
        await wait_for(pilot, lambda: app.scan_done and "≠ changed" in screen_text(app))
        assert app.screen is screen


async def test_table_sorts_filters_and_jumps(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        screen = app.screen

        def shown() -> list:
            return [screen.rows[k] for k in range(len(screen.rows))]

        assert len(shown()) == 40
        await pilot.press("5")  # rel L2, largest first; unknown figures last
        rel = [r.rel_l2 for r in shown()]
        known = [x for x in rel if x is not None]
        assert known == sorted(known, reverse=True) and rel[:len(known)] == known
        assert shown()[0].name.startswith("model.layers.3.mlp.")
        await pilot.press("5")  # again: smallest first
        assert shown()[0].rel_l2 == min(known)
        await pilot.press("slash", *"up_proj")
        await pilot.pause()
        assert {r.name for r in shown()} == {f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)}
        second = shown()[1].name
        await pilot.press("enter", "down", "enter")  # focus the table, pick the second row
        await settle(pilot)
        assert not isinstance(app.screen, TableScreen)
        assert cursor_path(app) == second


async def test_results_that_come_before_the_table_is_mounted_are_drawn_on_mount():
    """The app redraws an open table whenever results come in; a table pushed but not yet
    mounted has no rows to redraw, and its first fill reads the results instead."""
    catalog, table = expert_catalog(10)
    app = TableOnly(catalog, table)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause()
        early = TableScreen(catalog, table, badges(catalog, table), np.arange(len(catalog)))
        early.refresh_rows()  # as the app does when results come in right after the push
        await app.push_screen(early)
        await pilot.pause()
        assert app.screen is early and "≠ changed" in screen_text(app)


class TableOnly(App[str | None]):
    """The table screen alone over a catalog and its results; the app's return value is what
    it was dismissed with."""

    def __init__(self, catalog, table):
        super().__init__()
        self.catalog, self.table = catalog, table

    def on_mount(self) -> None:
        badge = badges(self.catalog, self.table)
        self.push_screen(TableScreen(self.catalog, self.table, badge, np.arange(len(self.catalog))), self.exit)


def expert_catalog(count: int):
    """A catalog of `count` bf16 expert matrices, every one changed by a rel L2 of (i + 1) / count."""
    names = [f"model.layers.{i // 1000}.mlp.experts.{i % 1000}.down_proj.weight" for i in range(count)]

    def side():
        return Side(tuple(names), ("bfloat16",) * count, ((512, 128),) * count, np.zeros(count, np.int32),
                    np.zeros(count, np.int64), np.zeros(count, np.int64), np.full(count, 512 * 128),
                    np.full(count, 2 * 512 * 128), np.ones(count, bool), np.ones(count, bool))

    summary = SideSummary("a", "safetensors", ["f"], count, 0, 0, [], [], {})
    catalog = Catalog(tuple(names), side(), side(), ["f"], np.zeros(count, np.int8), np.zeros(count, bool), summary,
                      summary, [], {})
    table = ResultTable(count)
    table.status[:] = CHANGED
    table.values[:, c.FD + c.REL_L2] = (np.arange(count) + 1) / count
    table.values[:, c.FD + c.MAX_ABS] = 0.5
    table.values[:, c.FD + c.COSINE] = 0.99
    return catalog, table


async def test_a_table_of_100000_rows_draws_what_is_on_screen_and_walks_to_the_end():
    catalog, table = expert_catalog(100_000)
    app = TableOnly(catalog, table)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause()
        lines = screen_text(app).splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("1▲name"))  # natural order, marked
        assert "5 rel L2" in lines[header] and "8 NaN/Inf" in lines[header]
        first = lines[header + 1]  # a name too long for its column keeps its end
        assert first.startswith("…") and "s.0.mlp.experts.0.down_proj.weight ≠ changed" in first
        assert "512×128" in first and "0.001%" in first  # rel L2 in percent, as in the tree
        await pilot.press("5")  # largest rel L2 first: the last row comes to the top
        await pilot.pause()
        lines = screen_text(app).splitlines()
        assert "5▼rel L2" in lines[header] and lines[header].startswith("1 name")
        assert ".99.mlp.experts.999.down_proj.weight" in lines[header + 1]
        await pilot.press("end")
        await pilot.pause()
        assert "experts.0.down_proj.weight" in screen_text(app).splitlines()[-2]  # above the footer
        await pilot.press("home", "pagedown", "enter")
    page = len(lines) - header - 2  # rows between the header and the footer
    assert app.return_value == catalog.names[-1 - page]


async def test_the_table_fits_80_columns_and_says_n_a(demo):
    """At 80×24 the table drops dtype, shape and cosine before a column goes off screen; a pair
    compared whose figure is undefined reads n/a (an all-zero A has no rel L2), one never
    compared stays blank; NaN/Inf is its own column beside the scan's status."""
    app = open_app(*demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause()
        lines = screen_text(app).splitlines()
        header = next(line for line in lines if line.startswith("1▲name"))
        assert "5 rel L2" in header and "6 max |Δ|" in header and "8 NaN/Inf" in header
        assert "3 shape" not in header and "7 cosine" not in header
        rows = {r.name: r for r in (app.screen.rows[k] for k in range(len(app.screen.rows)))}
        assert "nonfinite" not in {r.status for r in rows.values()}
        nan = rows["model.layers.2.mlp.up_proj.weight"]
        assert nan.nonfinite_text and nan.status == "changed"
        only_a = rows["model.layers.0.self_attn.rotary_emb.inv_freq"]
        assert only_a.rel_l2 is None and not only_a.compared


async def test_anomalies_cycle_from_the_most_serious(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        seen = []
        for _ in range(3):
            await pilot.press("a")
            await settle(pilot)
            seen.append(cursor_path(app))
        assert seen[0] == "model.layers.2.mlp.up_proj.weight"  # NaN first
        assert "lm_head.weight" in seen  # the resized head
        assert "model.layers.0.self_attn.rotary_emb.inv_freq" in seen  # only in A


async def test_export_writes_markdown_and_json(demo, tmp_path, monkeypatch):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        monkeypatch.chdir(tmp_path)
        await pilot.press("e")
        await wait_for(pilot, lambda: len(list(Path(tmp_path).glob("weightscope-*"))) == 2)
    written = sorted(Path(tmp_path).glob("weightscope-*"))
    assert [p.suffix for p in written] == [".json", ".md"]
    document = json.loads(written[0].read_text())
    assert len(document["tensors"]) == 40 and document["summary"]["shape_mismatch"] == 1
    assert "holds NaN or Inf" in written[1].read_text()


def embedding_pair(pair):
    """A 2000×64 embedding where only rows 900–999 changed."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 64, generator=generator)
    b = a.clone()
    b[900:1000] += 0.05 * torch.randn(100, 64, generator=generator)
    return pair({"embed.weight": a}, {"embed.weight": b})


async def change_map_of(pilot: Pilot) -> None:
    await settle(pilot)
    await pilot.press("right", "down", "v", "v")  # onto the tensor; histograms → spectrum → map
    await settle(pilot, until=lambda: "where" in static_text(pilot.app, "#map"))
    pilot.app.clear_notifications()
    await pilot.pause()


async def test_change_map_lights_the_changed_rows_only(pair):
    app = open_app(*embedding_pair(pair))
    async with app.run_test(size=SIZE) as pilot:
        await change_map_of(pilot)
        assert app.detail_view == "map"
        (figure,) = figures(app, "map")
        for i in range(figure.rms.shape[0]):  # a cell is lit exactly when its rows meet 900–999
            start, stop = figure.rows_of(i)
            assert (figure.rms[i].max() > 0) == (start < 1000 and stop > 900), (start, stop)
        assert app.screen.query_one(ChangeMapView).display


async def test_spectrum_of_a_low_rank_change(pair):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(256, 128, generator=generator)
    b = a + torch.randn(256, 4, generator=generator) @ torch.randn(4, 128, generator=generator) * 0.01
    app = open_app(*pair({"w": a}, {"w": b}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("v")  # the cursor starts on the one tensor `w`
        await settle(pilot, until=lambda: bool(figures(app, "spectrum")))
        (spectrum,) = figures(app, "spectrum")
        assert 3.5 < spectrum.effective_rank < 4.5
        assert app.screen.query_one(SpectrumPlot).display


class TestWholeModelSnapshots:
    def test_overview(self, snap_compare, demo):
        """Layers 0–3 × q…norm 2: layer 0 frozen (=), NaN in layer 2's up (!), layer 3's MLP at
        20%; embeddings frozen and lm_head resized in the row below; sparklines on the right."""

        async def run_before(pilot: Pilot) -> None:
            await settle(pilot)
            pilot.app.clear_notifications()
            await pilot.press("o")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, OverviewScreen))
            await wait_for(pilot, lambda: pilot.app.screen.query_one("#heatmap", DataTable).row_count > 0)
            await pilot.pause(0.2)  # laid out and drawn, on a loaded machine too

        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=run_before)

    def test_change_map_of_new_rows(self, snap_compare, pair, tmp_path, monkeypatch):
        """Only rows 900–999 of a 2000-row embedding changed: one lit band, the rest dark."""
        embedding_pair(pair)
        monkeypatch.chdir(tmp_path)  # relative paths: the title bar reads the same on every machine
        app = open_app("a.safetensors", "b.safetensors")
        assert snap_compare(app, terminal_size=SIZE, run_before=change_map_of)
