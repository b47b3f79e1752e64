"""Every kind of work that fails says so: a notification and the status line, and the rest of
the app goes on; a failure to open ends the app with exit status 2 and one line.

Failures are injected in the engine's processes with `WEIGHTSCOPE_FAULT`, one kind at a time.
"""

from __future__ import annotations

import pytest
from textual.widgets import Static

from weightscope.ui.screens.table import TableScreen

from .helpers import SIZE, open_app, record_notifications, screen_text, static_text, wait_for


@pytest.mark.parametrize("kind, keys", [
    ("scan", []),
    ("detail", ["n"]),
    ("histograms", ["n"]),
    ("spectrum", ["n", "v"]),
    ("map", ["n", "v", "v"]),
    ("heads", ["n", "v", "v", "v"]),
    ("filter", ["slash", *"norm", "enter"]),
    ("overview", ["o"]),
    ("anomalies", ["a"]),
    ("export", ["e"]),
])
async def test_a_failed_job_speaks_and_the_rest_goes_on(demo_root, monkeypatch, tmp_path, kind, keys):
    monkeypatch.setenv("WEIGHTSCOPE_FAULT", kind)
    monkeypatch.chdir(tmp_path)  # where an export would go
    app = open_app(demo_root / "base", demo_root / "finetune", use_cache=False)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        await pilot.press(*keys)
        said = f"{kind} failed: RuntimeError: injected fault in {kind} ("  # a bug: its kind and where
        await wait_for(pilot, lambda: any(n.startswith(said) for n in notes))
        status = app.query_one("#status-line", Static)
        assert status.display and static_text(app, "#status-line").startswith(said)
        await wait_for(pilot, lambda: said in screen_text(app))  # drawn at the next refresh
        if kind == "detail":
            assert said in static_text(app, "#detail-stats")  # in place of a spinner that never ends
        if kind == "histograms":  # the figures came; the histograms say why they will not
            assert " max " in static_text(app, "#detail-stats") and "computing histograms" not in screen_text(app)
        await pilot.press("escape")  # out of the filter box, if it is open
        await pilot.press("t")  # the rest works: the table of every pair
        await wait_for(pilot, lambda: isinstance(app.screen, TableScreen))
        await pilot.press("escape", "q")
    assert app.return_code == 0 and app.error is None


async def test_a_failure_to_open_exits_with_2_and_one_line(demo, monkeypatch):
    monkeypatch.setenv("WEIGHTSCOPE_FAULT", "open")
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.return_code is not None)
    assert app.return_code == 2
    assert app.error.startswith("RuntimeError: injected fault in open (") and "\n" not in app.error


async def test_an_engine_that_dies_is_said(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        app.engine.process.kill()
        await wait_for(pilot, lambda: app.return_code is not None)
    assert app.return_code == 2 and "the engine process stopped unexpectedly (signal 9)" in app.error
