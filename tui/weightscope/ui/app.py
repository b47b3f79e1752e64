"""The terminal app: two checkpoints side by side, a detail pane, a background scan.

Headers are read in a worker right after the first paint; the trees appear as soon as
names are aligned. Statistics never run on the UI thread: the scan and the detail pane
each have one exclusive thread worker that polls its cancellation between chunks. Nor does
any other work that grows with the model (the whole-model views, the result cache): on
100,000 tensors it takes seconds, and the keys must not wait for it.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from itertools import islice
from contextlib import contextmanager

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.cache import LRUCache
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Footer, Input, ProgressBar, Static, Tree
from textual.worker import get_current_worker

from weightscope.analysis import anatomy, hierarchy
from weightscope.compare import cache, stats
from weightscope.compare.align import Alignment, Pair, align
from weightscope.sources.checkpoint import Checkpoint, TensorUnreadable
from weightscope.sources.errors import CheckpointError
from weightscope.analysis.hierarchy import DIFFERS, NameNode, Names, matcher
from weightscope.report.diff import human
from weightscope.compare.scan import Comparer, PairResult, ScanOptions, histograms_for, pair_bytes, scan_iter
from weightscope.compare.stats import Cancelled
from weightscope.ui.messages import DetailReady, Filtered, Opened, OpenFailed, ScanResults, ViewReady, WholeReady
from weightscope.ui.screens.help import HelpScreen
from weightscope.ui.screens.overview import OverviewScreen
from weightscope.ui.screens.table import TableScreen, row_of
from weightscope.ui.widgets.detail import DetailPane
from weightscope.ui.widgets.diff_tree import DiffTree

DETAIL_DELAY = 0.05  # while keys come faster than this, figures wait until the cursor rests this long
FILTER_DELAY = 0.15
BATCH_SECONDS = 0.1  # how often the scan reports to the UI
CACHED_SLICE = 500  # cached results sent to the UI at a time (about 5 ms of its work)
GROUP_REDRAW = 0.5  # seconds between redraws of a group's figures while the scan runs
AUTO_EXPAND = 300  # a filter with at most this many matches opens every match
SWITCH_INTERVAL = 0.001  # seconds
NARROW = 110  # columns under which the detail pane stacks its plots below the figures
WARM_UP_NOTICE = 2.0  # seconds of loading the statistics loops after which the user is told why
VIEWS = ("histograms", "spectrum", "map")


_pausing = 0  # workers in `collector_paused`
_pausing_lock = threading.Lock()


@contextmanager
def collector_paused():
    """The cyclic GC paused while a worker builds many objects: a full collection halfway through
    is wasted, and holds the interpreter, keys included, for up to a second on 100,000 tensors.
    It resumes when the last such worker is done: they overlap (a replaced exclusive worker's
    thread runs to its end)."""
    global _pausing
    with _pausing_lock:
        _pausing += 1
        gc.disable()
    try:
        yield
    finally:
        with _pausing_lock:
            _pausing -= 1
            if not _pausing:
                gc.enable()


@contextmanager
def long_lived():
    """Build objects that live as long as the app (headers, the name tree, cached results) with
    the GC paused, then freeze them: later full collections do not walk them again (each such
    walk would stall input)."""
    with collector_paused():
        yield
        gc.freeze()


def single_alignment(checkpoint: Checkpoint) -> Alignment:
    """One checkpoint browsed alone, as pairs of each tensor with itself: the scan reads each
    once (identical bytes are never decoded as a pair) and NaN/Inf show as in a comparison."""
    return Alignment([Pair(name, info, info) for name, info in checkpoint.tensors.items()], [])


class WeightscopeApp(App[None]):
    """Compare checkpoint A with B (or browse A alone)."""

    CSS_PATH = "app.tcss"
    TITLE = "weightscope"
    BINDINGS = [
        Binding("n", "next_diff", "Next diff", tooltip="Next tensor that differs"),
        Binding("N", "previous_diff", "Prev diff", tooltip="Previous tensor that differs", show=False),
        Binding("slash", "filter", "Filter", tooltip="Filter names by substring or glob"),
        Binding("o", "overview", "Overview", tooltip="Heatmap of layers × modules"),
        Binding("t", "table", "Table", tooltip="Every pair in a sortable table"),
        Binding("a", "next_anomaly", "Anomaly", tooltip="Cycle through what deserves a look"),
        Binding("e", "export", "Export", tooltip="Write the comparison as Markdown and JSON", show=False),
        Binding("v", "cycle_view", "View", tooltip="Histograms, spectrum, or where in the matrix the change sits"),
        Binding("L", "toggle_log", "Log scale", tooltip="Histogram counts and singular values on a log scale",
                show=False),
        Binding("c", "copy_name", "Copy name", tooltip="Copy the tensor name (OSC 52)", show=False),
        Binding("question_mark", "help", "Help", tooltip="Keys and badges"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    log_counts: reactive[bool] = reactive(False)
    """Histograms show log10(1 + count), spectra a log axis."""
    detail_view: reactive[str] = reactive("histograms")
    """What the detail pane draws for a tensor: "histograms", "spectrum" or "map"."""

    def __init__(self, path_a: str, path_b: str | None = None, device: str = "auto", use_cache: bool = True):
        """
        Args:
            device: "auto", "cpu" or "cuda"; resolved off the UI thread ("auto" may import torch).
        """
        super().__init__()
        self.paths = (path_a, path_b)
        self.device = device
        self.use_cache = use_cache
        self.a: Checkpoint | None = None
        self.b: Checkpoint | None = None
        self.alignment: Alignment | None = None
        self.names: Names | None = None
        self.results: dict[str, PairResult] = {}
        self.details: LRUCache[str, PairResult] = LRUCache(64)
        self.figures: LRUCache[tuple, object] = LRUCache(64)  # (name, view, size) -> spectrum or map
        self.shown: NameNode | None = None
        self._detail_timer: Timer | None = None
        self.last_move = 0.0  # time.monotonic() of the last move of the cursor
        self.group_drawn = 0.0  # time.monotonic() when a group's figures were last drawn
        self._filter_timer: Timer | None = None
        self.error: str | None = None
        self.anomaly_index = -1
        self.anomalies: WholeReady | None = None  # the last anomalies found, and from how many results
        self.pending_reveal: str | None = None
        self.filter_submitted_early = False  # Enter in the filter box before the headers were read
        self.warmed = False  # the compiled statistics loops are loaded

    @property
    def single(self) -> bool:
        return self.paths[1] is None

    def compose(self) -> ComposeResult:
        with Horizontal(id="title-bar"):
            yield Static(self.title_text(), id="title")
            yield ProgressBar(id="progress", show_eta=False)
        with Vertical(id="tree-area"):
            yield Static("reading headers…", id="placeholder")
        yield DetailPane(id="detail")
        yield Input(placeholder="filter: substring, or glob with * ? [ ]  (Enter keeps, Esc clears)", id="filter")
        yield Footer(show_command_palette=False)  # Ctrl+P still opens it (in the help); the keys need the room

    def title_text(self, extra: str = "") -> str:
        a, b = self.paths
        sides = f"A {a}" if b is None else f"A {a}   B {b}"
        return f"{sides}{'   ' + extra if extra else ''}"

    def on_mount(self) -> None:
        # Workers hold the GIL in bursts; a shorter switch interval (5 ms by default) hands it
        # back to the UI thread sooner, so a keypress never waits behind a long run of them.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.query_one("#progress").display = False
        self.query_one("#filter").display = False
        self.open_checkpoints()

    def on_unmount(self) -> None:
        stats.heartbeat_stopped()

    def on_resize(self, event) -> None:
        self.query_one(DetailPane).set_class(event.size.width < NARROW, "narrow")

    def notice_compiling(self) -> None:
        if not self.warmed:
            self.notify("compiling the statistics kernels (first run only; cached afterwards)", timeout=10)

    # Opening

    @work(thread=True, group="open", exit_on_error=False)
    def open_checkpoints(self) -> None:
        """Headers, alignment and the name tree, all off the UI thread."""
        from weightscope.sources.discover import open_checkpoint
        from weightscope.sources.pair import open_pair

        try:
            with long_lived():
                a, b = open_pair(*self.paths) if self.paths[1] is not None else (open_checkpoint(self.paths[0]), None)
                alignment = align(a, b) if b is not None else single_alignment(a)
                tree = hierarchy.build(alignment.pairs)
                tree.order  # noqa: B018  (worked out here, not on the first `n`: half a second on 100,000 tensors)
        except CheckpointError as exc:
            self.post_message(OpenFailed(str(exc)))
            return
        self.post_message(Opened(a, b, alignment, tree))

    def options(self) -> ScanOptions:
        """How pairs are compared here; the first call resolves the device (in a worker)."""
        from weightscope.compare.device import resolve

        return ScanOptions(device=resolve(self.device))

    def on_open_failed(self, message: OpenFailed) -> None:
        self.error = message.error
        self.exit(return_code=2, message=f"weightscope: {message.error}")

    def on_opened(self, message: Opened) -> None:
        self.a, self.b, self.alignment, self.names = message.a, message.b, message.alignment, message.tree
        tree = DiffTree(self.names.root, single=self.single, id="tree")
        self.query_one(DetailPane).single = self.single
        area = self.query_one("#tree-area")
        area.query_one("#placeholder").remove()
        area.mount(tree)
        if self.filter_submitted_early or not self.query_one("#filter", Input).has_focus:
            tree.focus()  # unless a filter is being typed: its keys stay in the box
        self.set_timer(WARM_UP_NOTICE, self.notice_compiling)
        pattern = self.query_one("#filter", Input).value
        if pattern:  # typed while the headers were read
            self.build_filtered(pattern)
        counts = f"{len(self.a.tensors):,}" + ("" if self.single else f" | {len(self.b.tensors):,}")
        notes = len(self.a.notes) + len(self.alignment.notes) + (len(self.b.notes) if self.b else 0)
        self.query_one("#title", Static).update(self.title_text(f"{counts} tensors" + (f", {notes} notes" if notes else "")))
        # The scan and the keys share the GIL: while the scan runs, a heartbeat tells it when
        # the event loop is busy, and it steps aside.
        self.heartbeat = self.set_interval(stats.BEAT, stats.heartbeat)
        self.run_scan()

    # The background scan

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def run_scan(self) -> None:
        """Cached results, else the scan. First the compiled statistics loops load (and torch,
        where a GPU wants it): after the trees, and before the scan's own first steps (reading
        the result cache, or a pass over every pair for the total and a sort into file order:
        seconds and a quarter second on 100,000 tensors), which then miss the tree's first paint."""
        options = self.options()
        from weightscope.compare import kernels  # noqa: F401  (the import loads them)

        self.warmed = True
        worker = get_current_worker()
        a, b = self.a, self.b or self.a
        key = cache.key(a, b, options) if self.use_cache else None
        with long_lived():
            cached = cache.load(key, self.alignment) if key else None
        total = sum(pair_bytes(p) for p in self.alignment.pairs)
        if cached is not None:
            self.send_cached(cached, total)
            return
        everything, batch, done, last = [], [], 0, time.monotonic()
        for result in scan_iter(self.alignment, a, b, options, lambda: worker.is_cancelled):
            everything.append(result)
            batch.append(result)
            done += pair_bytes(result.pair)
            if time.monotonic() - last > BATCH_SECONDS:
                self.post_message(ScanResults(batch, done, total))
                batch, last = [], time.monotonic()
        finished = len(everything) == len(self.alignment.pairs)
        if finished:  # what the whole scan says about a LoRA adapter (notes on its tensors)
            from weightscope.analysis.lora_notes import annotate

            noted = annotate(a, b, everything)
            unsent = len(everything) - len(batch)  # the batch is the tail of everything
            # What the notes changed, and the batch: re-sending all 100,000 would stall the UI.
            batch = [new for i, (old, new) in enumerate(zip(everything, noted)) if new is not old or i >= unsent]
            everything = noted
        self.post_message(ScanResults(batch, done, total, finished=finished))
        if finished and key:
            cache.save(key, everything)

    def send_cached(self, results: list[PairResult], total: int) -> None:
        """Cached results a slice at a time, each sent once the app has taken the one before:
        100,000 in one message held the UI for most of a second."""
        worker = get_current_worker()
        done = 0
        for start in range(0, len(results), CACHED_SLICE):
            part = results[start:start + CACHED_SLICE]
            done += sum(pair_bytes(result.pair) for result in part)
            taken = len(self.results) + len(part)
            self.post_message(ScanResults(part, done, total, finished=start + CACHED_SLICE >= len(results)))
            while len(self.results) < taken and not worker.is_cancelled:
                time.sleep(0.002)

    def on_scan_results(self, message: ScanResults) -> None:
        if not self.ready:  # a worker's message that arrives as the app closes
            return
        for result in message.results:
            self.results[result.pair.name] = result
        self.query_one(DiffTree).refresh_nodes(self.names.apply(message.results))
        # Results live as long as the app, too: young garbage is collected, the rest frozen.
        gc.collect(1)
        gc.freeze()
        progress = self.query_one("#progress", ProgressBar)
        progress.display = not message.finished
        progress.update(total=max(message.total, 1), progress=message.done)
        if message.finished:
            self.heartbeat.stop()
            stats.heartbeat_stopped()
            self.notify(f"scan complete: {human(message.total, 'B')}", timeout=3)
        # A group in the pane: its counts and ranking moved on. Redrawn a few times a second, not
        # with every batch: each redraw lays the pane out again, time the keys should have.
        now = time.monotonic()
        if self.shown is not None and self.shown.pair is None and (
                message.finished or now - self.group_drawn > GROUP_REDRAW):
            self.query_one(DetailPane).show_group(self.shown)
            self.group_drawn = now

    # The detail pane

    @on(Tree.NodeHighlighted)
    def node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        node: NameNode | None = event.node.data
        if node is None:  # a line of a tree replaced since (by a filter)
            return
        self.shown = node
        # A lone move starts a tensor's work at once; a held key only where the cursor comes to rest.
        now = time.monotonic()
        rested, self.last_move = now - self.last_move > DETAIL_DELAY, now
        detail = self.query_one(DetailPane)
        if self._detail_timer is not None:
            self._detail_timer.stop()
        if node.pair is None:
            detail.show_group(node)
            self.group_drawn = now
            return
        detail.show_pair(node.pair, self.query_one(DiffTree).status_of(node))
        ready = self.details.get(node.pair.name)
        if ready is not None:
            detail.show_result(ready, self.log_counts)
            self.load_view()
            return
        scanned = self.results.get(node.pair.name)
        if scanned is not None:  # the scan's figures at once; the histograms follow
            detail.show_result(scanned, self.log_counts, histograms_pending=True)
        def start() -> None:
            self.load_detail(node.pair)
            self.load_view()

        if rested:
            start()
        else:
            self._detail_timer = self.set_timer(DETAIL_DELAY, start)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def load_detail(self, pair: Pair) -> None:
        worker = get_current_worker()

        def cancelled() -> bool:
            return worker.is_cancelled

        b = self.b or self.a
        try:
            with stats.foreground():  # the scan waits while a person does
                result = self.results.get(pair.name)
                if result is None:
                    result = Comparer(self.a, b, self.options()).compare(pair, cancelled)
                    self.post_message(DetailReady(result, complete=False))  # figures first, histograms next
                if not result.histograms:
                    result = histograms_for(result, self.a, b, cancelled)
        except Cancelled:
            return
        if not cancelled():
            self.post_message(DetailReady(result))

    def on_detail_ready(self, message: DetailReady) -> None:
        if not self.ready:  # a worker's message that arrives as the app closes
            return
        result = message.result
        if message.complete:
            self.details[result.pair.name] = result
        if result.pair.name not in self.results:
            self.results[result.pair.name] = result
            self.query_one(DiffTree).refresh_nodes(self.names.apply([result]))
        if self.shown is not None and self.shown.pair is result.pair:
            detail = self.query_one(DetailPane)
            detail.show_pair(result.pair, self.query_one(DiffTree).status_of(self.shown))
            detail.show_result(result, self.log_counts, histograms_pending=not message.complete)

    def watch_log_counts(self) -> None:
        if self.shown is not None and self.shown.pair is not None:
            ready = self.details.get(self.shown.pair.name)
            if ready is not None:
                self.query_one(DetailPane).draw_histograms(ready, self.log_counts)
            self.load_view()

    # Spectrum and change map

    def watch_detail_view(self, view: str) -> None:
        self.query_one(DetailPane).show_view(view)
        self.load_view()

    def action_cycle_view(self) -> None:
        self.detail_view = VIEWS[(VIEWS.index(self.detail_view) + 1) % len(VIEWS)]

    def load_view(self) -> None:
        """Show the spectrum or change map of the tensor under the cursor (computing it if needed)."""
        node = self.shown
        view = self.detail_view
        if view == "histograms" or node is None or node.pair is None or self.a is None:
            return
        size = self.query_one(DetailPane).map_size() if view == "map" else ()
        figure = self.figures.get((node.pair.name, view, size), self)
        if figure is self:
            self.make_figure(node.pair, view, size)
        else:
            self.draw_view(node.pair.name, view, figure)

    @work(thread=True, exclusive=True, group="view", exit_on_error=False)
    def make_figure(self, pair: Pair, view: str, size: tuple[int, int]) -> None:
        from weightscope.analysis.change_map import change_map
        from weightscope.analysis.spectrum import pair_spectrum

        worker = get_current_worker()

        def cancelled() -> bool:
            return worker.is_cancelled

        b = self.b or self.a
        try:
            with stats.foreground():
                if view == "spectrum":
                    figure = pair_spectrum(self.a, b, pair, should_cancel=cancelled)
                else:
                    same = pair.a is not None and pair.b is not None and pair.a.shape == pair.b.shape
                    figure = change_map(self.a, b, pair, *size, should_cancel=cancelled) if same else None
        except Cancelled:
            return
        except TensorUnreadable as exc:
            figure = None
            self.notify(f"{pair.name}: {exc}", severity="error")
        if not cancelled():
            self.post_message(ViewReady(pair.name, view, size, figure))

    def on_view_ready(self, message: ViewReady) -> None:
        if not self.ready:  # a worker's message that arrives as the app closes
            return
        self.figures[(message.name, message.view, message.size)] = message.figure
        if self.shown is not None and self.shown.pair is not None and self.shown.pair.name == message.name:
            self.draw_view(message.name, message.view, message.figure)

    def draw_view(self, name: str, view: str, figure) -> None:
        detail = self.query_one(DetailPane)
        if view == "spectrum":
            detail.show_spectrum(figure, self.log_counts)
        elif view == "map":
            detail.show_map(figure, name)

    # Actions

    def action_toggle_log(self) -> None:
        self.log_counts = not self.log_counts
        self.notify(f"histogram counts: {'log' if self.log_counts else 'linear'}", timeout=2)

    def action_copy_name(self) -> None:
        if self.shown is not None:
            name = self.shown.pair.name if self.shown.pair is not None else self.shown.path
            self.copy_to_clipboard(name)
            self.notify(f"copied {name}", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def step_diff(self, step: int) -> None:
        if self.names is None or not self.names.order:
            return
        if self.names.root.differing:  # else nothing differs: known from the counts, without a walk
            order = self.names.order
            position = order.index(self.shown) if self.shown in order else -1 if step > 0 else 0
            for offset in range(1, len(order) + 1):
                node = order[(position + step * offset) % len(order)]
                if node.own_status in DIFFERS:
                    self.query_one(DiffTree).reveal(node)
                    return
        self.notify("no tensor differs" if not self.single else "no tensor holds NaN or Inf", timeout=2)

    def action_next_diff(self) -> None:
        self.step_diff(1)

    def action_previous_diff(self) -> None:
        self.step_diff(-1)

    # Whole-model views: their content is worked out in a worker (seconds on 100,000 tensors)

    def scanned(self) -> list[PairResult]:
        """Results so far, in alignment order."""
        return [self.results[p.name] for p in self.alignment.pairs if p.name in self.results] if self.alignment else []

    def action_overview(self) -> None:
        self.prepare_whole("overview")

    def action_table(self) -> None:
        self.prepare_whole("table")

    def action_next_anomaly(self) -> None:
        if self.anomalies is not None and self.anomalies.scanned == len(self.results):
            self.step_anomaly(self.anomalies.content)  # nothing new since they were found
        else:
            self.prepare_whole("anomalies")

    def action_export(self) -> None:
        self.prepare_whole("export")

    @work(thread=True, exclusive=True, group="whole", exit_on_error=False)
    def prepare_whole(self, view: str) -> None:
        if self.alignment is None:
            return
        results = self.scanned()
        with collector_paused():
            content = self.whole_content(view, results)
        if not get_current_worker().is_cancelled:
            self.post_message(WholeReady(view, content, len(results)))

    def whole_content(self, view: str, results: list[PairResult]) -> object:
        if view == "overview":
            return anatomy.grid(results, hierarchy.badge_status)
        if view == "table":
            scanned = {r.pair.name: r for r in results}
            return [row_of(p, hierarchy.badge_status(scanned[p.name]) if p.name in scanned
                           else hierarchy.known_status(p), scanned.get(p.name)) for p in self.alignment.pairs]
        if view == "anomalies":
            return anatomy.anomalies(results, hierarchy.badge_status)
        from weightscope.report.export import export

        try:
            return export(self.a, self.b or self.a, self.alignment, results)
        except OSError as exc:
            return exc

    def on_whole_ready(self, message: WholeReady) -> None:
        scanned = f"{message.scanned:,} of {len(self.alignment.pairs):,} tensors scanned"
        if message.view == "overview":
            title = f"where did B change from A? rel L2 by layer and module ({scanned})"
            self.push_screen(OverviewScreen(message.content, title), self.show_in_tree)
        elif message.view == "table":
            self.push_screen(TableScreen(message.content), self.show_in_tree)
        elif message.view == "anomalies":
            self.anomalies = message
            self.step_anomaly(message.content)
        elif isinstance(message.content, OSError):
            self.notify(f"export failed: {message.content}", severity="error")
        else:
            md, js = message.content
            so_far = "" if message.scanned == len(self.alignment.pairs) else f" ({scanned} so far)"
            self.notify(f"wrote {md} and {js}{so_far}", timeout=6)

    def step_anomaly(self, found: list) -> None:
        if not found:
            self.notify("no anomalies" + ("" if len(self.results) == len(self.alignment.pairs) else " so far"), timeout=2)
            return
        self.anomaly_index = (self.anomaly_index + 1) % len(found)
        anomaly = found[self.anomaly_index]
        self.show_in_tree(anomaly.name)
        self.notify(f"{self.anomaly_index + 1}/{len(found)}: {anomaly.name}: {anomaly.reason}", timeout=4)

    def show_in_tree(self, name: str | None) -> None:
        """Put the tree's cursor on a tensor (clearing a filter that hides it)."""
        if name is None:
            return
        if name not in self.names.nodes:  # hidden by a filter: show everything again first
            self.pending_reveal = name
            self.action_clear_filter()
            return
        self.query_one(DiffTree).reveal(self.names.nodes[name])
        self.query_one(DiffTree).focus()

    # Filtering

    @property
    def ready(self) -> bool:
        """The checkpoints are open and their tree is shown."""
        return self.names is not None and bool(self.query(DiffTree))

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
        else:  # on_opened applies it, and then moves to the tree
            self.filter_submitted_early = True

    @work(thread=True, exclusive=True, group="filter", exit_on_error=False)
    def build_filtered(self, pattern: str) -> None:
        """The name tree of the matching pairs, with every result so far, off the UI thread."""
        if self.alignment is None:
            return
        keep = matcher(pattern) if pattern else None
        pairs = [p for p in self.alignment.pairs if keep is None or keep(p.name)]
        results = list(self.results.values())
        with long_lived():  # frozen, yet freed when replaced: the tree holds no cycles
            names = hierarchy.build(pairs, results)
            names.order  # noqa: B018  (as in open_checkpoints)
        if not get_current_worker().is_cancelled:  # a newer pattern replaced this one
            self.post_message(Filtered(pattern, names, len(results)))

    def on_filtered(self, message: Filtered) -> None:
        if not self.ready:  # a worker's message that arrives as the app closes
            return
        names = message.tree
        names.apply(islice(self.results.values(), message.scanned, None))  # results that came meanwhile
        threading.Thread(target=self.names.take_apart, name="weightscope-free").start()
        self.names = names
        matches = len(names.nodes)
        self.query_one(DiffTree).set_model(names.root, expand_all=bool(message.pattern) and matches <= AUTO_EXPAND)
        if not matches:
            self.shown = None
            self.query_one(DetailPane).show_nothing(f"no tensor matches {message.pattern!r}")
        if self.pending_reveal in names.nodes:
            self.show_in_tree(self.pending_reveal)
        self.pending_reveal = None
        if message.pattern:
            self.notify(f"{matches:,} tensors match", timeout=2)
