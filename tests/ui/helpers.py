"""Helpers for Pilot and snapshot tests: wait until the app has settled, read what it shows."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from rich.console import Console
from rich.style import Style
from textual.pilot import Pilot
from textual.widgets import Static
from textual.worker import WorkerCancelled, WorkerState

from weightscope.ui.app import WeightscopeApp
from weightscope.ui.widgets.diff_tree import DiffTree

SIZE = (120, 40)
SETTLE_TIMEOUT = 20.0  # seconds; generous for a cold first scan, a settled app takes well under 1 s


def busy_workers(app: WeightscopeApp) -> list[str]:
    return [f"{w.group}:{w.state.name}" for w in app.workers
            if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]


def is_settled(app: WeightscopeApp) -> bool:
    """Trees mounted, every pair scanned, no worker running, the line under the cursor (there
    is one from the start) taken up by the detail pane, which waits for no figures and, for a
    tensor, no histograms (they come in a second message, after the figures)."""
    if not app.query(DiffTree) or app.alignment is None or busy_workers(app):
        return False
    if len(app.results) < len(app.alignment.pairs):
        return False
    tree = app.query_one(DiffTree)
    if tree.cursor_line >= 0 and tree.cursor_node is not None and app.shown is None:
        return False  # the first highlight is still on its way to the app
    if app.shown is not None and app.shown.pair is not None and app.shown.pair.name not in app.details:
        return False  # the figures are shown, the histograms are still on their way
    return not app.query_one("#detail-stats", Static).loading


async def settle(pilot: Pilot, until: Callable[[], bool] | None = None, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until the app is settled (see `is_settled`) and `until()` holds, or it has exited.

    Waits on the app's workers and message queue, never a fixed time; the detail pane and the
    filter start their work from short timers, so this loops until their work is done.

    Raises:
        AssertionError: the app did not settle within `timeout` seconds.
    """
    app = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        if app.return_code is not None:
            return
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:  # an exclusive worker replaced by a newer one: expected
            pass
        await pilot.pause()
        if app.return_code is not None or (is_settled(app) and (until is None or until())):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the app did not settle within {timeout} s: workers {busy_workers(app)}, "
                                 f"{len(app.results)} results\n{screen_text(app)}")


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until `condition()` holds (a screen pushed by a worker's message, say)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s\n{screen_text(pilot.app)}")
        await pilot.pause(0.01)


# Reading what the app shows


def screen_text(app: WeightscopeApp) -> str:
    """The current screen as plain text, one line per terminal row (trailing blanks removed)."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())


def static_text(app: WeightscopeApp, selector: str, width: int = 200) -> str:
    """What a Static shows (its Rich renderable printed as plain text)."""
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(app.query_one(selector, Static).content)
    return console.export_text()


def tree_lines(app: WeightscopeApp) -> list[str]:
    """Every line of the tree, scrolled into view or not, as plain text (A column, badge, B column, figure)."""
    tree = app.query_one(DiffTree)
    return [tree.render_label(tree.get_node_at_line(line), Style(), Style()).plain
            for line in range(tree.last_line + 1)]


def line_of(app: WeightscopeApp, path: str) -> int:
    """The tree line showing the node at dotted `path` (which must be visible)."""
    tree = app.query_one(DiffTree)
    paths = [tree.get_node_at_line(line).data.path for line in range(tree.last_line + 1)]
    assert path in paths, f"{path} is not on a line of the tree: {paths}"
    return paths.index(path)


def cursor_path(app: WeightscopeApp) -> str:
    """The dotted path of the node under the tree's cursor ('' when no line has the cursor)."""
    node = app.query_one(DiffTree).cursor_node
    return node.data.path if node is not None else ""


def name_nodes(app: WeightscopeApp) -> dict:
    """The tensor nodes (`NameNode`) of the name tree the app shows now, by pair name."""
    return {leaf.pair.name: leaf for leaf in app.query_one(DiffTree).root.data.leaves()}


def leaf_names(app: WeightscopeApp) -> list[str]:
    """The tensors of the name tree the app shows now (after any filter), in tree order."""
    return list(name_nodes(app))
