"""SVG snapshots of the app on the demo pair, one class per feature.

Every screenshot is taken once the app has settled (headers read, scan finished, detail
worker done) and with the toasts cleared, so nothing in it depends on timing. The demo pair
is opened by relative paths, so the title bar reads the same everywhere.

    pytest tests/ui/test_snapshots.py --snapshot-update    # after a deliberate change of looks
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Input

from weightscope.ui.screens.help import HelpScreen
from weightscope.ui.widgets.detail import DetailPane

from .helpers import SIZE, cursor_path, open_app, settle, shown_status

SMALL = (80, 24)


async def quiet(pilot: Pilot) -> None:
    """Settle, then drop the toasts (their timeouts would race the screenshot)."""
    await settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


async def onto_changed_tensor(pilot: Pilot) -> None:
    """`n` until the cursor rests on a tensor whose values changed (the fourth difference)."""
    await settle(pilot)
    for _ in range(10):
        await pilot.press("n")
        if shown_status(pilot.app) == "changed":
            break
    assert shown_status(pilot.app) == "changed"
    await quiet(pilot)


class TestInitialView:
    def test_demo_pair_after_the_scan(self, snap_compare, demo):
        """Both trees collapsed to `lm_head` (shape changed) and `model` (NaN in B), the cursor on
        the first line, `lm_head`'s counts by status in the detail pane, no progress bar, a
        footer that ends with `? Help` and `q Quit`."""
        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=quiet)


class TestDetail:
    def test_changed_tensor_with_histograms(self, snap_compare, demo):
        """A changed tensor: A | B | Δ statistics, the verdict, the A/B and Δ histograms."""

        async def run_before(pilot: Pilot) -> None:
            await onto_changed_tensor(pilot)
            assert cursor_path(pilot.app) == "model.layers.1.mlp.down_proj.weight"

        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=run_before)

    def test_group_of_one_layer(self, snap_compare, demo):
        """Layer 3 (the one fine-tuned hardest): counts by status, parameters, most-changed members."""

        async def run_before(pilot: Pilot) -> None:
            await settle(pilot)
            # from lm_head down to model, open it, layers, open it, then down to layer 3
            await pilot.press("down", "right", "down", "down", "right", "down", "down", "down", "down")
            assert cursor_path(pilot.app) == "model.layers.3"
            await quiet(pilot)

        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=run_before)


class TestHelp:
    def test_help_screen(self, snap_compare, demo):
        """The help screen over the app: keys, then every badge with its meaning."""

        async def run_before(pilot: Pilot) -> None:
            # Toasts cleared under the help are left drawn on the screen below it: clear them first.
            await quiet(pilot)
            await pilot.press("question_mark")
            assert isinstance(pilot.app.screen, HelpScreen)
            await quiet(pilot)

        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=run_before)


class TestFilter:
    def test_live_substring_filter(self, snap_compare, demo):
        """`/up_proj` typed, no Enter yet: the box above the footer, the four up_proj tensors opened,
        the detail pane on `model`, the first line left."""

        async def run_before(pilot: Pilot) -> None:
            await settle(pilot)  # the cursor on lm_head, which the filter drops: the pane follows to model
            await pilot.press("slash", *"up_proj")
            pilot.app.query_one("#filter", Input).cursor_blink = False  # a steady cursor in the picture
            await settle(pilot, until=lambda: len(pilot.app.names.children(0)) == 1)
            await quiet(pilot)

        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=run_before)


class TestSmallTerminal:
    def test_changed_tensor_at_80x24(self, snap_compare, demo):
        """The same changed tensor as in TestDetail, in an 80×24 terminal: under 110 columns the
        statistics take the pane's width and the histograms stack below them (out of view here;
        the pane scrolls, its scrollbar shows)."""
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=onto_changed_tensor)

    def test_changed_tensor_at_80x24_scrolled_to_the_histograms(self, snap_compare, demo):
        """The same, with the detail pane scrolled down to its plots: the A/B values histogram
        across the pane's width, the Δ histogram's title and top below it."""

        async def run_before(pilot: Pilot) -> None:
            await onto_changed_tensor(pilot)
            pane = pilot.app.query_one(DetailPane)
            pane.scroll_to_widget(pane.query_one("#detail-plots"), animate=False, top=True)
            await quiet(pilot)
            assert pane.scroll_y > 0

        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=run_before)


async def in_view(pilot: Pilot, presses: int) -> None:
    """The changed tensor, then `v` pressed `presses` times (1: spectrum, 2: change map), its figure drawn."""
    await onto_changed_tensor(pilot)
    await pilot.press(*["v"] * presses)
    await quiet(pilot)
    assert pilot.app.detail_view == ("spectrum", "map")[presses - 1]


async def in_screen(pilot: Pilot, key: str) -> None:
    """The demo after its scan, then `key` (`t` table, `o` overview), its screen settled."""
    from weightscope.ui.screens.overview import OverviewScreen
    from weightscope.ui.screens.table import TableScreen

    await quiet(pilot)
    await pilot.press(key)
    await settle(pilot, until=lambda: isinstance(pilot.app.screen, (TableScreen, OverviewScreen)))
    await quiet(pilot)
    await pilot.pause(0.2)  # laid out and drawn, on a loaded machine too


class TestViews:
    """Each detail view, the table and the overview, at 120×40 and at 80×24: at the small size
    the spectrum and the map take the statistics' place, the table leaves out columns to fit and
    the overview keeps whole labels."""

    def test_spectrum(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=lambda p: in_view(p, 1))

    def test_spectrum_at_80x24(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=lambda p: in_view(p, 1))

    def test_change_map(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=lambda p: in_view(p, 2))

    def test_change_map_at_80x24(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=lambda p: in_view(p, 2))

    def test_table(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SIZE, run_before=lambda p: in_screen(p, "t"))

    def test_table_at_80x24(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=lambda p: in_screen(p, "t"))

    def test_overview_at_80x24(self, snap_compare, demo):
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=lambda p: in_screen(p, "o"))

    def test_tree_at_80x24(self, snap_compare, demo):
        """The demo after its scan in an 80×24 terminal: the title keeps its counts."""
        assert snap_compare(open_app(*demo), terminal_size=SMALL, run_before=quiet)
