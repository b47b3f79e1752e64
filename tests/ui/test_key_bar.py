"""The bottom line: the keys of what has the focus, whole keys only, redrawn only when they
change; a click on one presses it, the mouse over one shows its tooltip."""

from __future__ import annotations

from textual.screen import Screen

from weightscope.ui.screens.table import TableScreen
from weightscope.ui.widgets.key_bar import KeyBar

from .helpers import SIZE, open_app, settle, wait_for


def bar_text(app) -> str:
    return app.screen.query_one(KeyBar).render().plain


async def test_the_shown_keys_of_the_focused_widget_and_its_screen(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        line = bar_text(app)
        assert line.startswith(" n Next diff  / Filter  o Overview  t Table ")
        assert line.endswith(" ? Help  q Quit ")
        for hidden in ("Prev diff", "Export", "Copy name", "Down"):  # bindings with show=False
            assert hidden not in line
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause(0.1)
        assert "esc Back" in bar_text(app)  # the table's screen has a bar of its own
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, TableScreen))
        await pilot.pause(0.1)
        assert bar_text(app) == line


async def test_at_80_columns_only_whole_keys_are_shown(demo):
    app = open_app(*demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.pause(0.1)
        line = bar_text(app)
        assert len(line) <= 80
        keys = app.screen.query_one(KeyBar).keys
        shown = [key.description for key in keys if f" {key.description} " in line]
        assert 0 < len(shown) < len(keys)
        assert line.endswith(f" {shown[-1]} ")  # the last one shown is whole


async def test_bindings_that_do_not_change_do_not_redraw_it(demo, monkeypatch):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        bar = app.query_one(KeyBar)
        redrawn = []
        monkeypatch.setattr(bar, "refresh", lambda *a, **k: redrawn.append(1))
        bar.bindings_changed(app.screen)
        assert redrawn == []
        bar.bindings_changed(Screen())  # another screen's bindings: not ours
        assert redrawn == []


async def test_a_click_on_a_key_presses_it(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        line = bar_text(app)
        await pilot.click(KeyBar, offset=(line.index("t Table") + 2, 0))
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))


async def test_the_mouse_over_a_key_shows_what_it_does(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        bar = app.query_one(KeyBar)
        await pilot.hover(KeyBar, offset=(bar_text(app).index("o Overview") + 2, 0))
        assert bar.tooltip == "Heatmap of layers × modules"
        await pilot.hover(KeyBar, offset=(SIZE[0] - 2, 0))  # past the last key
        assert bar.tooltip is None
