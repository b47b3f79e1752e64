"""The terminal app: two checkpoints side by side, a detail pane, a scan that fills in as it goes.

The app draws and asks; the engine (`weightscope.engine`) does the rest in processes of its
own: it reads the headers, builds the name tree, scans, and answers what the app asks (a
tensor's figures and histograms, its spectrum or change map, a filtered tree, the overview,
anomalies, an export). One thread reads the engine's pipe and posts what comes as messages.
Results live here as arrays (a `ResultTable`, the name tree's `Rollup`), not as an object per
tensor, so the interpreter the keys need never has much to collect or to wait for.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

import numpy as np
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.cache import LRUCache
from textual.command import Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Input, ProgressBar, Static, Tree

from weightscope.analysis import hierarchy
from weightscope.analysis.hierarchy import NameTree, Rollup
from weightscope.compare import columns as c
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import Batch, ResultTable
from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine
from weightscope.report.diff import human
from weightscope.ui.messages import FromEngine
from weightscope.ui.screens.help import HelpScreen
from weightscope.ui.screens.notes import NotesScreen
from weightscope.ui.screens.overview import OverviewScreen
from weightscope.ui.screens.table import TableScreen
from weightscope.ui.widgets.detail import DetailPane, Group, load_plots
from weightscope.ui.widgets.diff_tree import DiffTree
from weightscope.ui.widgets.key_bar import KeyBar
from weightscope.ui.widgets.verdict_text import pane_text, root_texts

DETAIL_DELAY = 0.05  # while keys come faster than this, figures wait until the cursor rests this long
FILTER_DELAY = 0.15
AUTO_EXPAND = 300  # a filter with at most this many matches opens every match
GROUP_REDRAW = 0.5  # seconds between redraws of a group's figures while the scan runs
OVERVIEW_REDRAW = 1.0  # seconds at least between refreshes of an open overview while the scan runs
REDRAW = 0.1  # seconds between redraws of the badges and the progress bar while results come in
NARROW = 110  # columns under which the detail pane stacks its plots below the figures
VIEWS = ("histograms", "spectrum", "map", "heads")
ATTENTION = ("q", "k", "v", "o", "qkv", "query_key_value", "c_proj")  # roles a layer's heads grid shows


def shortened(text: str, room: int) -> str:
    """`text` in at most `room` characters, cut near the start: a path's end says which
    checkpoint it is; with room to spare, its start stays too."""
    if len(text) <= room:
        return text
    if room < 2:
        return "…"[:room]
    head = (room - 1) // 4 if room >= 24 else 0
    return text[:head] + "…" + text[len(text) - (room - 1 - head):]


def fitted_title(paths: tuple[str, str | None], extra: str, width: int) -> str:
    """`A path   B path   counts` in `width` columns: the counts stay whole, the paths give way,
    the longer one first."""
    a, b = paths
    tail = f"   {extra}" if extra else ""
    labels = "A " + ("   B " if b is not None else "")
    room = max(0, width - len(tail) - len(labels))
    if b is None:
        return f"A {shortened(a, room)}{tail}"
    if len(a) + len(b) > room:
        a_room = min(len(a), max(room // 2, room - len(b)))
        a, b = shortened(a, a_room), shortened(b, room - a_room)
    return f"A {a}   B {b}{tail}"


class Actions(Provider):
    """The command palette (Ctrl+P): every action of the app's keys, by name."""

    async def search(self, query: str) -> Hits:
        app = self.app
        matcher = self.matcher(query)
        for binding in app.BINDINGS:
            title = f"{binding.description} ({binding.key})"
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), lambda action=binding.action: app.run_action(action),
                          help=binding.tooltip)


class WeightscopeApp(App[None]):
    """Compare checkpoint A with B (or browse A alone)."""

    CSS_PATH = "app.tcss"
    TITLE = "weightscope"
    COMMANDS = App.COMMANDS | {Actions}
    BINDINGS = [
        Binding("n", "next_diff", "Next diff", tooltip="Next tensor that differs"),
        Binding("N", "previous_diff", "Prev diff", tooltip="Previous tensor that differs", show=False),
        Binding("slash", "filter", "Filter", tooltip="Filter names by substring or glob"),
        Binding("o", "overview", "Overview", tooltip="Heatmap of layers × modules"),
        Binding("t", "table", "Table", tooltip="Every pair in a sortable table"),
        Binding("a", "next_anomaly", "Anomaly", tooltip="Cycle through what deserves a look"),
        Binding("e", "export", "Export", tooltip="Write the comparison as Markdown and JSON", show=False),
        Binding("i", "notes", "Notes", tooltip="How the checkpoints were read: every note", show=False),
        Binding("v", "cycle_view", "View",
                tooltip="Histograms, spectrum, where in the matrix the change sits, or the change by head"),
        Binding("L", "toggle_log", "Log scale", tooltip="Histogram counts and singular values on a log scale",
                show=False),
        Binding("c", "copy_name", "Copy name", tooltip="Copy the tensor name (OSC 52)", show=False),
        Binding("question_mark", "help", "Help", tooltip="Keys and badges"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    log_counts: reactive[bool] = reactive(False)
    """Histograms show log10(1 + count), spectra a log axis."""
    detail_view: reactive[str] = reactive("histograms", init=False)  # (the pane starts on histograms)
    """What the detail pane draws for a tensor: "histograms", "spectrum", "map" or "heads" (on an
    attention group: its heads × q, k, v, o). Not watched at start: the plots' modules (plotext)
    would load then, before the first screen, instead of in a thread after it."""

    def __init__(self, job: msg.Job, engine: Engine | None = None, select: str | None = None):
        """
        Args:
            job: what to compare (`job.tree` is set here: the app draws the name tree first).
            engine: an engine already started for `job` (started here otherwise).
            select: a tensor to put the cursor on once the tree is there (`--select`).
        """
        super().__init__()
        self.job = replace(job, tree=True)
        self.engine = engine
        self.paths = (job.path_a, job.path_b)
        self.catalog: Catalog | None = None
        self.names: NameTree | None = None  # the tree shown (filtered or not)
        self.natural: np.ndarray | None = None  # every pair in natural name order
        self.rollup: Rollup | None = None
        self.table: ResultTable | None = None
        self.badge: np.ndarray | None = None  # each pair's status code (`hierarchy.SEVERITY`)
        self.presence: tuple[np.ndarray, np.ndarray] | None = None  # whether A has each pair, whether B has it
        self.side_notes: tuple[list[str], list[str] | None] | None = None
        self.details: LRUCache[int, Batch] = LRUCache(64)  # pair -> its figures (and histograms, once they came)
        self.figures: LRUCache[tuple, object] = LRUCache(64)  # (pair, view, size) -> spectrum or map
        self.asked: dict[int, tuple] = {}  # ticket -> (kind, args), until answered
        self.latest: dict[str, int] = {}  # kind -> the ticket whose answer is still wanted
        self.shown: int | None = None  # the node in the detail pane
        self.scan_done = False
        self.read_so_far = 0
        self.loops_loaded = False  # by some worker of the engine
        self.loading_said = False  # the status line says they are loading
        self._detail_timer: Timer | None = None  # the figures of the line under the cursor wait for it
        self._filter_timer: Timer | None = None
        self.last_move = 0.0  # time.monotonic() of the last move of the cursor
        self.group_drawn = 0.0
        self.error: str | None = None
        self.anomaly_index = -1
        self.anomalies: tuple[int, list] | None = None  # (results read when found, the anomalies)
        self.looking: int = 0  # n or N pressed with nothing found yet: the step to take once something is
        self.pending_reveal: str | None = select
        self.filter_submitted_early = False  # Enter in the filter box before the headers were read
        self.diff_tree: DiffTree | None = None  # mounted once the checkpoints are open
        self.progress = (0, 1)  # bytes scanned, of
        self.title_extra = ""  # the counts after the paths in the title bar
        self.verdict = None  # analysis.verdict.Verdict, once the scan is done and it is worked out
        self.verdict_failed: str | None = None
        self.overview_asked = 0.0  # time.monotonic() of the last refresh of an open overview
        self._redraw_timer: Timer | None = None

    @property
    def single(self) -> bool:
        return self.paths[1] is None

    @property
    def ready(self) -> bool:
        """The checkpoints are open and their tree is shown."""
        return self.diff_tree is not None and self.diff_tree.is_attached

    def compose(self) -> ComposeResult:
        with Horizontal(id="title-bar"):
            yield Static(fitted_title(self.paths, "", self.size.width), id="title")
            yield ProgressBar(id="progress", show_eta=False)
        with Vertical(id="tree-area"):
            # A tree of one line until the real one comes: Textual reads a tree's styles as the
            # first one is mounted, time the real tree would otherwise wait for.
            placeholder = Tree("reading headers…", id="placeholder")
            placeholder.root.allow_expand = False
            yield placeholder
        yield DetailPane(id="detail")
        yield Static(id="status-line")
        yield Input(placeholder="filter: substring, or glob with * ? [ ]  (Enter keeps, Esc clears)", id="filter")
        yield KeyBar()

    def show_title(self, extra: str | None = None) -> None:
        """The title bar, fitted to its width now (and again on every resize)."""
        if extra is not None:
            self.title_extra = extra
        title = self.query_one("#title", Static)
        title.update(fitted_title(self.paths, self.title_extra, title.size.width or self.size.width))

    def on_mount(self) -> None:
        for part in ("#progress", "#filter", "#status-line"):
            self.query_one(part).display = False
        if self.engine is None:
            self.engine = Engine(self.job)
        threading.Thread(target=self.read_engine, name="weightscope-engine-reader", daemon=True).start()
        self.call_after_refresh(threading.Thread(target=load_plots, name="weightscope-plots", daemon=True).start)

    def read_engine(self) -> None:
        """Pass on what the engine says, as messages, until it stops (in a thread of its own)."""
        engine = self.engine
        while True:
            message = engine.recv()
            self.post_message(FromEngine(message))
            if isinstance(message, msg.Failed) and message.fatal:
                return

    def on_unmount(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def on_resize(self, event) -> None:
        self.query_one(DetailPane).set_class(event.size.width < NARROW, "narrow")
        self.call_after_refresh(self.after_resize)

    def after_resize(self) -> None:
        """Laid out at the new size: the title fitted again, the selected line kept in view."""
        self.show_title()
        if self.ready and self.diff_tree.cursor_node is not None:
            self.diff_tree.scroll_to_node(self.diff_tree.cursor_node, animate=False)

    def ask(self, kind: str, *args, key: str | None = None) -> int:
        """Ask the engine; with `key`, the answer to an earlier question of that key is no longer wanted."""
        if key is not None and key in self.latest and self.asked.pop(self.latest[key], None) is not None:
            self.engine.send(msg.Cancel(self.latest[key]))  # its answer, if one still comes, is dropped
        ticket = self.engine.ask(kind, *args)
        self.asked[ticket] = (kind, args)
        if key is not None:
            self.latest[key] = ticket
        return ticket

    def wanted(self, ticket: int, key: str) -> bool:
        return self.latest.get(key) == ticket

    # What the engine says

    def on_from_engine(self, event: FromEngine) -> None:
        try:
            self.take_message(event.message)
        except NoMatches:  # a message that arrives as the app closes, its widgets gone
            pass

    def take_message(self, message) -> None:
        if isinstance(message, msg.Results):
            self.take_results(message)
        elif isinstance(message, msg.Reply):
            self.take_reply(message)
        elif isinstance(message, msg.Opened):
            self.opened(message)
        elif isinstance(message, msg.ScanDone):
            self.scan_finished(message)
        elif isinstance(message, msg.Failed):
            self.failed(message)
        elif isinstance(message, msg.LoopsLoaded):
            self.loops_loaded = True
            self.say_loading()

    def say_loading(self) -> None:
        """While no result has come and the compiled loops are still loading (a first run
        compiles them), the status line says so: a screen that does not move says why."""
        waiting = not (self.loops_loaded or self.scan_done or self.read_so_far)
        if waiting != self.loading_said:
            status = self.query_one("#status-line", Static)
            if waiting:
                status.update(msg.LOADING_LOOPS)
            status.display = self.loading_said = waiting

    def failed(self, failure: msg.Failed) -> None:
        """A failure always speaks: fatal ones end the app (exit 2), the others a notification
        and the status line, the rest of the app still usable."""
        kind = self.asked.pop(failure.ticket, (failure.job,))[0] if failure.ticket is not None else failure.job
        kind = {"tree": "filter"}.get(kind, kind)  # as the user knows it
        if failure.fatal:
            self.error = failure.message
            self.exit(return_code=2, message=f"weightscope: {failure.message}")
            return
        line = f"{kind} failed: {failure.message}"
        self.notify(line, severity="error", timeout=8)
        status = self.query_one("#status-line", Static)
        status.update(line)
        status.display = True
        self.loading_said = False  # (the line says the failure now)
        if kind == "detail" and self.shown is not None:
            self.query_one(DetailPane).show_failure(line)
        if kind == "histograms" and self.shown is not None:
            self.query_one(DetailPane).clear_histograms(line)
        if kind == "verdict":
            self.verdict_failed = failure.message
            self.show_verdict()

    def opened(self, message: msg.Opened) -> None:
        self.catalog = message.catalog
        self.table = ResultTable(len(self.catalog))
        self.badge = hierarchy.badges(self.catalog, self.table)
        self.presence = (self.catalog.a.present, self.catalog.b.present)
        self.names = message.tree
        self.natural = self.names.order
        self.rollup = self.rollup_of(self.names)
        tree = self.diff_tree = DiffTree(self.catalog, self.names, self.rollup, single=self.single, table=self.table,
                                         id="tree")
        self.query_one(DetailPane).single = self.single
        area = self.query_one("#tree-area")
        placeholder = area.query_one("#placeholder")
        area.mount(tree, before=placeholder)
        if self.filter_submitted_early or not self.query_one("#filter", Input).has_focus:
            # Focused before the placeholder goes (else the detail pane, next in line, takes the
            # focus, and the first keys scroll it while the tree is drawn): a key is never lost.
            self.screen.set_focus(tree)
        placeholder.remove()
        pattern = self.query_one("#filter", Input).value
        if pattern:  # typed while the headers were read (the filtered tree then reveals `--select`)
            self.build_filtered(pattern)
        elif self.pending_reveal is not None:
            self.call_after_refresh(self.reveal_selected)  # once the tree has put its cursor on its first line
        self.show_counts()
        self.engine.send(msg.Scan())
        self.set_timer(msg.LOOPS_WAIT, self.say_loading)

    def show_counts(self) -> None:
        catalog = self.catalog
        counts = f"{catalog.summary_a.tensors:,}" + ("" if self.single else f" | {catalog.summary_b.tensors:,}")
        notes = sum(len(section) for _, section in self.notes())
        told = f", {notes:,} note{'' if notes == 1 else 's'} (i)" if notes else ""
        self.show_title(f"{counts} tensors{told}")

    def notes(self) -> list[tuple[str, list[str]]]:
        """(heading, notes) of each side, and of how their names were paired."""
        a, b = self.side_notes or (self.catalog.summary_a.notes,
                                   self.catalog.summary_b.notes if self.catalog.summary_b else None)
        sections = [(f"A  {self.paths[0]}", list(a))]
        if not self.single:
            sections += [(f"B  {self.paths[1]}", list(b or [])), ("A and B paired", list(self.catalog.notes))]
        return sections

    def rollup_of(self, names: NameTree) -> Rollup:
        return Rollup(names, self.badge, self.table.values[:, c.FD + c.REL_L2], self.catalog.numel, self.presence)

    def take(self, batch: Batch) -> None:
        """Results of some pairs (the scan's, or a tensor's detail): into the table, the badges and the tree."""
        self.table.add(batch)
        index = batch.index
        self.badge[index] = hierarchy.badges(self.catalog, self.table, index)
        self.rollup.update(index, self.badge[index], self.table.values[index, c.FD + c.REL_L2])

    def take_results(self, message: msg.Results) -> None:
        if not self.ready:  # a message that arrives as the app closes
            return
        self.take(message.batch)
        self.engine.send(msg.Ack(message.number))  # taken: the next may come
        self.read_so_far = self.table.read
        self.say_loading()  # (results: nothing more to say of the loops)
        self.progress = (message.done, max(message.total, 1))
        if self.looking:
            self.step_diff(self.looking, quiet=True)
        if self._redraw_timer is None:  # what the results change is drawn a few times a second, not per message
            self._redraw_timer = self.set_timer(REDRAW, self.redraw_scan)

    def redraw_scan(self) -> None:
        """The progress bar, the tree's badges and roll-ups, and a group's figures, as the scan has them now."""
        self._redraw_timer = None
        if not self.ready:
            return
        progress = self.query_one("#progress", ProgressBar)
        progress.display = not self.scan_done
        progress.update(progress=self.progress[0], total=self.progress[1])
        self.diff_tree.refresh_lines()
        # A group in the pane: its counts and ranking moved on. Redrawn less often: each redraw
        # lays the pane out again, time the keys should have.
        now = time.monotonic()
        if self.shown is not None and self.names.pair[self.shown] < 0 and now - self.group_drawn > GROUP_REDRAW:
            self.show_group(self.shown)
        self.refresh_overview()
        if isinstance(self.screen, TableScreen):
            self.screen.refresh_rows()

    def scan_finished(self, message: msg.ScanDone) -> None:
        self.scan_done = True
        self.table.notes.update(message.notes)
        self.table.resized.update(message.resized)  # (a pair's detail works them out too, when it comes first)
        self.side_notes = message.sides
        self.query_one("#progress").display = False
        if message.plan_notes:
            self.catalog.notes.extend(message.plan_notes)
        self.show_counts()
        if self.ready:
            self.query_one(DiffTree).refresh_lines()
            if self.shown is not None and self.names.pair[self.shown] < 0:
                self.show_group(self.shown)
        if self.looking:
            self.step_diff(self.looking)
        if isinstance(self.screen, OverviewScreen):  # its final figures, whatever question is still out
            self.ask("overview", key="overview again")
        if isinstance(self.screen, TableScreen):
            self.screen.refresh_rows()
        if not self.single:
            self.ask("verdict", key="verdict")
            self.show_verdict()
        total = self.catalog.data_bytes.sum()
        if message.complete:
            self.notify(f"scan complete: {human(total, 'B')}", timeout=3)

    def take_reply(self, reply: msg.Reply) -> None:
        kind, args = self.asked.pop(reply.ticket, (None, ()))
        if kind is None or not self.ready:
            return
        if kind == "detail":
            self.detail_ready(args[0], reply.content, self.wanted(reply.ticket, "detail"))
        elif kind == "histograms":
            self.histograms_ready(args[0], reply.content, self.wanted(reply.ticket, "detail"))
        elif kind in ("spectrum", "map"):
            index = args[0]
            size = tuple(args[1:])
            self.figures[(index, kind, size)] = reply.content
            if self.wanted(reply.ticket, "view"):
                self.draw_view(index, kind, reply.content)
        elif kind == "heads":
            for index, found in reply.content.items():
                self.figures[(index, kind, ())] = found
            if self.wanted(reply.ticket, "view"):
                if len(args) == 1 and self.shown is not None and self.names.pair[self.shown] == args[0]:
                    self.draw_view(args[0], kind, reply.content.get(args[0]))
                else:
                    self.draw_group_heads()
        elif kind == "verdict":
            if self.wanted(reply.ticket, "verdict"):
                self.verdict = reply.content
                self.show_verdict()
        elif kind == "tree":
            if self.wanted(reply.ticket, "tree"):
                self.filtered(args[0], reply.content)
        elif kind == "inside":
            if isinstance(self.screen, OverviewScreen):
                self.screen.set_inside(reply.content)
        elif kind in ("overview", "anomalies", "export"):
            if self.wanted(reply.ticket, "whole"):
                self.whole_ready(kind, reply.content)
            elif self.wanted(reply.ticket, "overview again") and isinstance(self.screen, OverviewScreen):
                self.screen.update(reply.content, self.overview_title())

    # The detail pane

    @on(Tree.NodeHighlighted)
    def node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        node = event.node.data
        if node is None or self.names is None:
            return
        self.shown = node
        # A lone move starts a tensor's work at once; a held key only where the cursor comes to rest.
        now = time.monotonic()
        rested, self.last_move = now - self.last_move > DETAIL_DELAY, now
        detail = self.query_one(DetailPane)
        if self._detail_timer is not None:
            self._detail_timer.stop()
            self._detail_timer = None
        pair = int(self.names.pair[node])
        if pair < 0:
            self.show_group(node)
            return
        detail.show_pair(self.catalog.pair(pair), self.query_one(DiffTree).status_of(node))
        ready = self.details.get(pair)
        if ready is not None and pair in ready.histograms:
            detail.show_result(self.result(pair, ready), self.log_counts)
            self.load_view()
            return
        if ready is not None or self.table.status[pair] >= 0:  # the figures at once; the histograms follow
            detail.show_result(self.result(pair, ready), self.log_counts, histograms_pending=True)

        def start() -> None:
            self._detail_timer = None
            self.load_view()  # first: the engine takes what is asked in turn, and a view shows its figure alone
            if ready is not None:
                self.ask_histograms(pair, ready)
            else:  # a resized pair's common and added parts too, unless the scan has them
                self.ask("detail", pair, pair not in self.table.resized, key="detail")

        if rested:
            start()
        else:
            self._detail_timer = self.set_timer(DETAIL_DELAY, start)

    def ask_histograms(self, pair: int, figures: Batch) -> None:
        self.ask("histograms", pair, int(figures.status[0]), key="detail")

    def result(self, pair: int, detail: Batch | None = None):
        """Pair `pair`'s result as the pane shows it (with the histograms of its detail)."""
        result = self.table.result(pair, self.catalog.pair(pair))
        if detail is not None:
            result = replace(result, histograms=detail.histograms.get(pair, {}),
                             resized=detail.resized.get(pair) or result.resized)
        return result

    def detail_ready(self, pair: int, batch: Batch, wanted: bool) -> None:
        """A pair's figures: shown at once, its histograms asked for next (they take longer)."""
        self.details[pair] = batch
        if self.table.status[pair] < 0:  # read before the scan got there: shown in the tree now too
            self.take(Batch(batch.index, batch.status, batch.values, batch.errors, batch.notes))
            self.query_one(DiffTree).refresh_lines()
        if wanted and self.shown is not None and self.names.pair[self.shown] == pair:
            detail = self.query_one(DetailPane)
            detail.show_pair(self.catalog.pair(pair), self.query_one(DiffTree).status_of(self.shown))
            detail.show_result(self.result(pair, batch), self.log_counts, histograms_pending=True)
            self.ask_histograms(pair, batch)

    def histograms_ready(self, pair: int, histograms: dict, wanted: bool) -> None:
        figures = self.details.get(pair)
        if figures is None:
            return
        figures.histograms[pair] = histograms
        if wanted and self.shown is not None and self.names.pair[self.shown] == pair:
            self.query_one(DetailPane).draw_histograms(self.result(pair, figures), self.log_counts)

    def show_verdict(self) -> None:
        """The verdict as it stands, on the root line and, where the root is selected, in the pane."""
        if self.ready:
            self.diff_tree.show_verdict(*root_texts(self.verdict, self.scan_done, self.verdict_failed))
            if self.shown == 0:
                self.show_group(0)

    def show_group(self, node: int) -> None:
        names, rollup = self.names, self.rollup
        path = names.path(node)
        counts = rollup.counts(node)
        ranked = [(self.catalog.names[pair][len(path):].lstrip("."), rel) for pair, rel in rollup.most_changed(node)]
        group = Group(path, self.query_one(DiffTree).status_of(node),
                      {status: int(n) for status, n in zip(hierarchy.SEVERITY, counts) if n},
                      rollup.weights(node), rollup.parameters(node), rollup.max_rel(node), ranked,
                      rollup.differing(node))
        verdict = pane_text(self.verdict, self.scan_done, self.verdict_failed) if node == 0 and not self.single else None
        self.query_one(DetailPane).show_group(group, verdict)
        self.group_drawn = time.monotonic()
        self.draw_group_heads(ask=True)

    def watch_log_counts(self) -> None:
        if self.shown is not None and self.names is not None and self.names.pair[self.shown] >= 0:
            pair = int(self.names.pair[self.shown])
            ready = self.details.get(pair)
            if ready is not None and pair in ready.histograms:
                self.query_one(DetailPane).draw_histograms(self.result(pair, ready), self.log_counts)
            self.load_view()

    # Spectrum and change map

    def watch_detail_view(self, view: str) -> None:
        self.query_one(DetailPane).show_view(view)
        self.load_view()

    def action_cycle_view(self) -> None:
        self.detail_view = VIEWS[(VIEWS.index(self.detail_view) + 1) % len(VIEWS)]

    def load_view(self) -> None:
        """Show the spectrum, change map or heads of the tensor under the cursor (asking for
        them if needed); on an attention group, its grid of heads."""
        view = self.detail_view
        if view == "heads" and self.shown is not None and self.names is not None and self.names.pair[self.shown] < 0:
            self.draw_group_heads(ask=True)
            return
        if view == "histograms" or self.shown is None or self.names is None or self.names.pair[self.shown] < 0:
            return
        pair = int(self.names.pair[self.shown])
        size = self.query_one(DetailPane).map_size() if view == "map" else ()
        figure = self.figures.get((pair, view, size), self)
        if figure is self:
            self.ask(view, pair, *size, key="view")
        else:
            self.draw_view(pair, view, figure)

    def draw_view(self, pair: int, view: str, figure) -> None:
        if self.shown is None or self.names.pair[self.shown] != pair or view != self.detail_view:
            return
        detail = self.query_one(DetailPane)
        if view == "spectrum":
            detail.show_spectrum(figure, self.log_counts)
        elif view == "map":
            detail.show_map(figure, self.catalog.names[pair])
        elif view == "heads":
            detail.show_heads(figure, self.catalog.names[pair])

    def attention_members(self, node: int) -> dict[str, int]:
        """The attention projections directly in a group (`self_attn`), by role: its heads grid."""
        from weightscope.analysis.heads import role_of

        names = self.names
        if names.tensors(node) > 16:  # a layer's attention holds a handful of tensors
            return {}
        path = names.path(node)
        members = {}
        for pair in names.order[names.lo[node]:names.hi[node]].tolist():
            name = self.catalog.names[pair]
            role = role_of(name)
            if role in ATTENTION and name.endswith(".weight") and name[len(path):].count(".") == 2:
                members.setdefault("qkv" if role == "query_key_value" else "o" if role == "c_proj" else role, pair)
        return members

    def draw_group_heads(self, ask: bool = False) -> None:
        """The heads grid of the attention group under the cursor (asked for when `ask`)."""
        if self.shown is None or self.names.pair[self.shown] >= 0 or self.detail_view != "heads":
            return
        members = self.attention_members(self.shown)
        if not members:
            return
        found = {role: self.figures.get((pair, "heads", ()), self) for role, pair in members.items()}
        if any(f is self for f in found.values()):
            asked = self.asked.get(self.latest.get("view"))
            if ask and asked != ("heads", tuple(members.values())):  # once: the group is redrawn as the scan goes
                self.ask("heads", *members.values(), key="view")
            return
        self.query_one(DetailPane).show_heads_grid(self.names.path(self.shown), found)

    # Actions

    def action_toggle_log(self) -> None:
        self.log_counts = not self.log_counts
        what = "singular values" if self.detail_view == "spectrum" else "histogram counts"
        self.notify(f"{what}: {'log' if self.log_counts else 'linear'} scale", timeout=2)

    def action_copy_name(self) -> None:
        if self.shown is not None and self.names is not None:
            pair = int(self.names.pair[self.shown])
            name = self.catalog.names[pair] if pair >= 0 else self.names.path(self.shown)
            self.copy_to_clipboard(name)
            self.notify(f"copied {name}", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_notes(self) -> None:
        if self.catalog is not None:
            self.push_screen(NotesScreen(self.notes()))

    def so_far(self) -> str:
        """How much of the scan is read, while it runs ('' once it is done)."""
        if self.scan_done:
            return ""
        return f" yet ({self.table.read:,} of {len(self.catalog):,} tensors read)"

    def step_diff(self, step: int, quiet: bool = False) -> None:
        """Go to the next (step 1) or previous (-1) tensor that differs. During the scan, when
        nothing differs yet, say so, and go to the first difference once one is found."""
        if not self.ready:
            return
        names = self.names
        node = self.shown if self.shown is not None else 0
        pair = int(names.pair[node])
        if pair >= 0:
            after = int(names.position[pair])
        else:
            after = int(names.lo[node]) - 1 if step > 0 else int(names.hi[node])
        found = self.rollup.next_differing(after, step)
        if found is not None:
            self.looking = 0
            self.query_one(DiffTree).reveal(int(names.node_of[names.order[found]]))
            return
        self.looking = 0 if self.scan_done else step
        if not quiet:
            what = "no tensor holds NaN or Inf" if self.single else "no tensor differs"
            self.notify(what + self.so_far(), timeout=3)

    def action_next_diff(self) -> None:
        self.step_diff(1)

    def action_previous_diff(self) -> None:
        self.step_diff(-1)

    # Whole-model views: worked out by the engine, from the results so far

    def action_overview(self) -> None:
        if self.ready:
            self.ask("overview", key="whole")

    def overview_title(self) -> str:
        read = "" if self.scan_done else f" ({self.table.read:,} of {len(self.catalog):,} tensors scanned so far)"
        return f"where did B change from A? rel L2 by layer and module{read}"

    def refresh_overview(self) -> None:
        """An overview open while results come in is worked out again, to follow the scan (the
        last time once it is done); one question at a time."""
        now = time.monotonic()
        if (isinstance(self.screen, OverviewScreen) and "overview again" not in self.latest_open()
                and now - self.overview_asked > OVERVIEW_REDRAW):
            self.overview_asked = now
            self.ask("overview", key="overview again")

    def latest_open(self) -> set[str]:
        """The keys whose latest question is still unanswered."""
        return {key for key, ticket in self.latest.items() if ticket in self.asked}

    def action_table(self) -> None:
        if self.ready:
            self.push_screen(TableScreen(self.catalog, self.table, self.badge, self.natural), self.show_in_tree)

    def action_next_anomaly(self) -> None:
        if not self.ready:
            return
        if self.anomalies is not None and self.anomalies[0] == self.table.read:
            self.step_anomaly(self.anomalies[1])  # nothing new since they were found
        else:
            self.ask("anomalies", key="whole")

    def action_export(self) -> None:
        if self.ready:
            self.ask("export", os.getcwd(), key="whole")

    def whole_ready(self, view: str, content) -> None:
        read = f"{self.table.read:,} of {len(self.catalog):,} tensors scanned"
        if view == "overview":
            self.push_screen(OverviewScreen(content, self.overview_title()), self.show_in_tree)
            self.ask("inside", key="inside")  # its heads and experts layers, read in the background
        elif view == "anomalies":
            self.anomalies = (self.table.read, content)
            self.step_anomaly(content)
        else:
            md, js = content
            partial = "" if self.scan_done else f" (partial: {read} so far; the files say so)"
            self.notify(f"wrote {os.path.basename(md)} and .json{partial}", timeout=6)  # in the working directory

    def step_anomaly(self, found: list) -> None:
        if not found:
            self.notify("no anomalies" + (" found" + self.so_far() if not self.scan_done else ""), timeout=3)
            return
        self.anomaly_index = (self.anomaly_index + 1) % len(found)
        anomaly = found[self.anomaly_index]
        self.show_in_tree(anomaly.name)
        self.notify(f"{self.anomaly_index + 1}/{len(found)}: {anomaly.name}: {anomaly.reason}", timeout=4)

    def reveal_selected(self) -> None:
        """The cursor on the tensor `--select` names."""
        name, self.pending_reveal = self.pending_reveal, None
        if name is not None and self.catalog.index(name) is None:
            self.notify(f"no tensor named {name}", severity="warning", timeout=6)
        self.show_in_tree(name)

    def show_in_tree(self, name: str | None) -> None:
        """Put the tree's cursor on a tensor (clearing a filter that hides it)."""
        if name is None:
            return
        pair = self.catalog.index(name)
        if pair is None:
            return
        if self.names.node_of[pair] < 0:  # hidden by a filter: show everything again first
            self.pending_reveal = name
            self.action_clear_filter()
            return
        self.query_one(DiffTree).reveal(int(self.names.node_of[pair]))
        self.query_one(DiffTree).focus()

    # Filtering

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            with box.prevent(Input.Changed):  # the tree is rebuilt once, here, not again by the live filter
                box.value = ""
            box.display = False
            if self.ready:
                self.build_filtered("")
                self.query_one(DiffTree).focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(FILTER_DELAY, lambda: self.build_filtered(event.value))

    @on(Input.Submitted, "#filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        if self.ready:
            self.build_filtered(event.value)
            self.query_one(DiffTree).focus()
        else:  # `opened` applies it, and then moves to the tree
            self.filter_submitted_early = True

    def build_filtered(self, pattern: str) -> None:
        """Ask for the name tree of the matching pairs."""
        if self.ready:
            self.ask("tree", pattern, key="tree")

    def filtered(self, pattern: str, names: NameTree) -> None:
        self.names = names
        self.shown = None  # a node of the tree before: the new tree's cursor names one again
        self.rollup = self.rollup_of(names)
        matches = len(names.order)
        tree = self.query_one(DiffTree)
        tree.set_model(names, self.rollup, expand_all=bool(pattern) and matches <= AUTO_EXPAND,
                       filtered=bool(pattern))
        if not matches:
            self.query_one(DetailPane).show_nothing(f"no tensor matches {pattern!r}")
        if self.pending_reveal is not None:
            self.show_in_tree(self.pending_reveal)
        self.pending_reveal = None
        if pattern:
            self.notify(f"{matches:,} tensors match", timeout=2)
