"""Helpers for Pilot and snapshot tests: open the app, wait until it has settled, read what it shows.

The engine runs in processes of its own: the tests see it only through what the app sends it
(`record_requests`) and what comes back (`Gate` holds back messages of a kind, as a slow disk
or a long scan would).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.style import Style
from textual.pilot import Pilot
from textual.widgets import Static

from weightscope.compare.options import ScanOptions
from weightscope.engine import protocol as msg
from weightscope.ui.app import WeightscopeApp
from weightscope.ui.messages import FromEngine
from weightscope.ui.widgets.diff_tree import DiffTree

SIZE = (120, 40)
SETTLE_TIMEOUT = 30.0  # seconds; generous for a loaded machine, a settled app takes well under 1 s


def open_app(path_a: str, path_b: str | None = None, use_cache: bool = True, **options) -> WeightscopeApp:
    """The app on A and B (or A alone), its engine started when it mounts."""
    return WeightscopeApp(msg.Job(str(path_a), str(path_b) if path_b is not None else None,
                                  options=ScanOptions(**options), use_cache=use_cache))


def waiting_for(app: WeightscopeApp) -> list[str]:
    """What the app still waits for (empty once settled)."""
    waits = [f"{kind} {args}" for kind, args in app.asked.values()]
    if app.names is None:
        waits.append("the headers")
    elif not app.scan_done:
        waits.append("the scan")
    return waits


def is_settled(app: WeightscopeApp) -> bool:
    """Trees mounted, the scan done, every question answered, and the line under the cursor
    (there is one from the start) taken up by the detail pane with its histograms."""
    if not app.query(DiffTree) or waiting_for(app):
        return False
    if app._detail_timer is not None:  # the cursor moved a moment ago: the figures have not been asked for
        return False
    tree = app.query_one(DiffTree)
    if tree.cursor_line >= 0 and tree.cursor_node is not None and app.shown != tree.cursor_node.data:
        return False  # a highlight is still on its way to the app (keys queued, say)
    pair = shown_pair(app)
    if pair is not None and pair not in app.details and "failed" not in static_text(app, "#detail-stats"):
        return False  # the figures are shown, the histograms are still on their way
    return not app.query_one("#detail-stats", Static).loading


async def settle(pilot: Pilot, until: Callable[[], bool] | None = None, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until the app is settled (see `is_settled`) and `until()` holds, or it has exited.

    Raises:
        AssertionError: the app did not settle within `timeout` seconds.
    """
    app = pilot.app
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause(0.01)
        if app.return_code is not None or (is_settled(app) and (until is None or until())):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the app did not settle within {timeout} s: waits for {waiting_for(app)}"
                                 f"\n{screen_text(app)}")


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until `condition()` holds (a screen pushed by an answer, say)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s\n{screen_text(pilot.app)}")
        await pilot.pause(0.01)


class Gate:
    """Holds back the engine's messages of some kinds until opened, then passes them on in the
    order they came (as a slow disk or a long scan would make the user wait); messages of other
    kinds go on as usual."""

    def __init__(self, app: WeightscopeApp, *kinds: type, is_open: bool = False):
        self.kinds, self.held, self.is_open = kinds, [], is_open
        self.lock = threading.Lock()
        self.post = app.post_message

        def post_message(message) -> bool:
            with self.lock:
                if not self.is_open and isinstance(message, FromEngine) and isinstance(message.message, self.kinds):
                    self.held.append(message)
                    return True
            return self.post(message)

        app.post_message = post_message

    def open(self) -> None:
        with self.lock:
            self.is_open = True
            for message in self.held:
                self.post(message)
            self.held.clear()

    def close(self) -> None:
        with self.lock:
            self.is_open = False


def record_requests(app: WeightscopeApp) -> list:
    """Every request the app sends the engine from now on (call once the app is mounted)."""
    sent: list = []
    send = app.engine.send

    def recording(request) -> None:
        sent.append(request)
        send(request)

    app.engine.send = recording  # (questions too: `Engine.ask` sends through it)
    return sent


def record_notifications(app: WeightscopeApp) -> list[str]:
    """Every message the app passes to `notify` from now on."""
    messages: list[str] = []
    notify = app.notify

    def recording(message, **kwargs):
        messages.append(str(message))
        return notify(message, **kwargs)

    app.notify = recording
    return messages


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
    """Every line of the tree, scrolled into view or not, as plain text (A column, badge, B
    column, figure); in a comparison the first is the verdict's (see `verdict_line`)."""
    tree = app.query_one(DiffTree)
    return [tree.render_label(tree.get_node_at_line(line), Style(), Style()).plain
            for line in range(tree.last_line + 1)]


def verdict_line(app: WeightscopeApp) -> str:
    """A comparison's first line: all tensors, the verdict's kind, its flags, how many differ."""
    tree = app.query_one(DiffTree)
    return tree.render_label(tree.verdict_line, Style(), Style()).plain


def path_at(app: WeightscopeApp, line: int) -> str:
    return app.names.path(app.query_one(DiffTree).get_node_at_line(line).data)


def line_of(app: WeightscopeApp, path: str) -> int:
    """The tree line showing the node at dotted `path` (which must be visible)."""
    tree = app.query_one(DiffTree)
    paths = [path_at(app, line) for line in range(tree.last_line + 1)]
    assert path in paths, f"{path} is not on a line of the tree: {paths}"
    return paths.index(path)


def cursor_path(app: WeightscopeApp) -> str:
    """The dotted path of the node under the tree's cursor ('' when no line has the cursor)."""
    node = app.query_one(DiffTree).cursor_node
    return app.names.path(node.data) if node is not None else ""


def name_nodes(app: WeightscopeApp) -> dict[str, int]:
    """The tensor nodes of the name tree the app shows now, by pair name, in tree order."""
    names = app.names
    return {app.catalog.names[pair]: int(names.node_of[pair]) for pair in names.order.tolist()}


def leaf_names(app: WeightscopeApp) -> list[str]:
    """The tensors of the name tree the app shows now (after any filter), in tree order."""
    return list(name_nodes(app))


def status_of(app: WeightscopeApp, name: str) -> str:
    """The status a tensor's line shows."""
    return app.rollup.own_status(name_nodes(app)[name])


def shown_pair(app: WeightscopeApp) -> int | None:
    """The pair in the detail pane (None for a group, or nothing)."""
    if app.shown is None or app.names is None:
        return None
    pair = int(app.names.pair[app.shown])
    return pair if pair >= 0 else None


def shown_name(app: WeightscopeApp) -> str | None:
    pair = shown_pair(app)
    return app.catalog.names[pair] if pair is not None else None


def shown_status(app: WeightscopeApp) -> str | None:
    return app.rollup.own_status(app.shown) if shown_pair(app) is not None else None


def histograms_of(app: WeightscopeApp, name: str) -> dict:
    """The histograms of a tensor's detail, once its answer has come."""
    pair = app.catalog.index(name)
    detail = app.details.get(pair)
    return detail.histograms.get(pair, {}) if detail is not None else {}
