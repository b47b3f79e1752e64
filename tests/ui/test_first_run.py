"""A first run compiles the scan's loops (up to a minute): the app and `diff` say so while
they wait, and stop saying it once the loops are loaded. The tests hold the loops back with
`WEIGHTSCOPE_FAULT=slow-loops`, as a first run's compiling does."""

from __future__ import annotations

import sys

from textual.widgets import Static

from weightscope.cli import main
from weightscope.engine import protocol as msg
from weightscope.engine.worker import SLOW_LOOPS

from .helpers import SIZE, open_app, screen_text, static_text, wait_for


async def test_the_app_says_why_no_result_comes_while_the_loops_load(demo_root, monkeypatch):
    monkeypatch.setenv("WEIGHTSCOPE_FAULT", "slow-loops")
    app = open_app(demo_root / "base", demo_root / "finetune", use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        status = app.query_one("#status-line", Static)
        await wait_for(pilot, lambda: status.display, timeout=msg.LOOPS_WAIT + 1)
        assert static_text(app, "#status-line").strip() == msg.LOADING_LOOPS and app.read_so_far == 0
        await wait_for(pilot, lambda: msg.LOADING_LOOPS in screen_text(app))
        await wait_for(pilot, lambda: app.loops_loaded, timeout=SLOW_LOOPS + 10)
        assert not status.display  # said no more
        await wait_for(pilot, lambda: app.scan_done)
        assert msg.LOADING_LOOPS not in screen_text(app)
        await pilot.press("q")


async def test_the_status_line_is_clear_once_the_loops_are_loaded(demo_root):
    app = open_app(demo_root / "base", demo_root / "finetune", use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.scan_done and app.loops_loaded)
        assert not app.query_one("#status-line", Static).display
        await pilot.press("q")


def test_diff_says_why_no_progress_comes_while_the_loops_load(demo_root, monkeypatch, capsys):
    monkeypatch.setenv("WEIGHTSCOPE_FAULT", "slow-loops")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the progress line is drawn on a terminal only
    code = main(["diff", "--no-cache", str(demo_root / "base"), str(demo_root / "finetune")])
    err = capsys.readouterr().err
    assert code == 1 and msg.LOADING_LOOPS in err
    assert err.index(msg.LOADING_LOOPS) < err.rindex("\r\033[K")  # cleared once the loops were loaded
