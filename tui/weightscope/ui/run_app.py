"""The terminal app on a training run: the tensor tree with a sparkline of drift across the
steps on every line, a detail pane with a tensor's or group's figures at the selected step,
its flags and its drift and update against step, and a layers × steps overview.

As in the pair app, the engine (`engine.runs.RunServer`) reads and scans in processes of its
own; the app takes its `RunResults` into a `RunTable` and draws. `[` and `]` choose the step
the figures are at; `{` and `}` an earlier checkpoint (the reference at first). `p` opens the
pair app on those two checkpoints at the selected tensor, in the same terminal (the run app
suspended until it quits): statistics, histograms, spectrum, change map and heads, as for
any pair, with nothing of them written twice.

The first screen needs Textual alone: the tree, the detail pane and the figures behind them
(numpy, the run's tables) are imported once the run is open, after that screen is drawn.

With `--watch`, the run directory is looked at every few seconds and a checkpoint that is
complete (whole by `sources.runs.incomplete`, its files unchanged since the look before) is
added: the run is opened again with it, every earlier step coming from the per-step cache.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import ProgressBar, Static, Tree

from weightscope.compare.run_columns import PENDING
from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine
from weightscope.ui.screens.notes import NotesScreen
from weightscope.ui.widgets.key_bar import KeyBar

if TYPE_CHECKING:
    from weightscope.analysis.hierarchy import NameTree
    from weightscope.ui.widgets.run_tree import RunTree

REDRAW = 0.1  # seconds between redraws of the tree while results come in
DETAIL_REDRAW = 0.5  # ... of the detail pane
WATCH_EVERY = 3.0  # seconds between looks at a watched run directory
NARROW = 110


@dataclass
class FromRunEngine(Message):
    """A message of an engine (`generation`: which one: a watched run starts a new one per checkpoint added)."""

    message: object
    generation: int


@dataclass
class NewCheckpoints(Message):
    """A watched run directory holds complete checkpoints the app does not show yet."""

    spec: object
    added: list[str]


class RunApp(App[None]):
    """A training run: every checkpoint against the reference."""

    CSS_PATH = "app.tcss"
    TITLE = "weightscope"
    BINDINGS = [
        Binding("left_square_bracket", "step(-1)", "Step ←", tooltip="The step before (the figures and the column of drift)"),
        Binding("right_square_bracket", "step(1)", "Step →", tooltip="The step after"),
        Binding("left_curly_bracket", "against(-1)", "From ←", show=False,
                tooltip="The pair's first checkpoint: an earlier one (the reference at first)"),
        Binding("right_curly_bracket", "against(1)", "From →", show=False,
                tooltip="The pair's first checkpoint: a later one, up to the step before the selected"),
        Binding("p", "pair", "Pair", tooltip="The pair app on the two checkpoints ({ } and [ ]) at this tensor"),
        Binding("o", "overview", "Overview", tooltip="Layers × steps heatmap of drift for a module type"),
        Binding("L", "toggle_log", "Log y", tooltip="Drift and update plots on a log scale"),
        Binding("i", "notes", "Notes", tooltip="Checkpoints skipped, tensors not read"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, job: msg.RunJob, engine: Engine | None = None, paths: list[str] | None = None,
                 watch: float | None = None):
        """
        Args:
            job: the run (`RunJob(plan_run(paths))`).
            engine: an engine already started for `job`.
            paths: the command line's paths (looked at again with `watch`).
            watch: seconds between looks at the run directory for new checkpoints; None: no watching.
        """
        super().__init__()
        self.job, self.engine = job, engine
        self.paths = list(paths or [])
        self.watch_every = watch
        self.generation = 0
        self.catalog = None
        self.table = None
        self.names: NameTree | None = None
        self.labels: list[str] = []  # each step's label (`run_tree.step_labels`), once the run is open
        self.axis: list[float] = []  # each step's x in the plots
        self.run_tree: RunTree | None = None
        self.flags: list = []
        self.scan_done = False
        self.selected = 0  # the step shown (a column of the run's tables)
        self.against = 0  # the pair's first checkpoint (a point: 0 the reference); the second is the selected step
        self.log_scale = False
        self.shown: int | None = None
        self.progress = (0, 1)
        self.detail_drawn = 0.0
        self._redraw: Timer | None = None
        self.seen: dict[str, tuple] = {}  # watched checkpoint -> its files' (name, size, mtime) at the last look
        self.looking = False
        self.reopening = False  # a watched run is being opened again with new checkpoints
        self.adding: list[str] = []  # ... these ones
        self.refused: dict[str, tuple] = {}  # checkpoint -> its files' signature when the run failed to open with it

    def compose(self) -> ComposeResult:
        from textual.containers import Horizontal

        with Horizontal(id="title-bar"):
            yield Static(self.title_text(), id="title")
            yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="run-legend")
        with Vertical(id="tree-area"):
            placeholder = Tree("reading headers…", id="placeholder")
            placeholder.root.allow_expand = False
            yield placeholder
        yield Static(id="detail-placeholder")  # the detail pane comes with the run's catalog
        yield Static(id="status-line")
        yield KeyBar()

    @property
    def ready(self) -> bool:
        return self.run_tree is not None and self.run_tree.is_attached

    def title_text(self) -> str:
        spec = self.job.spec
        if self.catalog is None:
            return f"run: {1 + len(spec.steps)} checkpoints, reference {spec.reference.path}"
        notes = len(self.catalog.notes)
        told = f", {notes} note{'s' if notes != 1 else ''} (i)" if notes else ""
        watching = ", watching" if self.watch_every else ""
        return (f"run: {len(self.catalog.points)} checkpoints, reference {self.catalog.points[0].path}, "
                f"steps {self.labels[0]}…{self.labels[-1]}{told}{watching}")

    def on_mount(self) -> None:
        for part in ("#progress", "#status-line"):
            self.query_one(part).display = False
        self.start_engine(self.engine)
        if self.watch_every:
            self.set_interval(self.watch_every, self.look_for_checkpoints)

    def start_engine(self, engine: Engine | None = None) -> None:
        self.generation += 1
        self.engine = engine or Engine(self.job)
        generation, engine = self.generation, self.engine

        def read() -> None:
            while True:
                message = engine.recv()
                self.post_message(FromRunEngine(message, generation))
                if isinstance(message, msg.Failed) and message.fatal:
                    return

        threading.Thread(target=read, name="weightscope-engine-reader", daemon=True).start()

    def on_unmount(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def on_resize(self, event) -> None:
        self.query("#detail").set_class(event.size.width < NARROW, "narrow")

    # What the engine says

    def on_from_run_engine(self, event: FromRunEngine) -> None:
        if event.generation != self.generation:
            return  # an engine the app has let go (a watched run opened again)
        try:
            self.take(event.message)
        except NoMatches:  # as the app closes
            pass

    def take(self, message) -> None:
        if isinstance(message, msg.RunResults):
            if self.table is None:
                return
            self.table.add(message.rows, message.sums, message.same, message.status)
            self.engine.send(msg.Ack(message.number))
            self.progress = (message.done, max(message.total, 1))
            if self._redraw is None:
                self._redraw = self.set_timer(REDRAW, self.redraw)
        elif isinstance(message, msg.RunOpened):
            self.opened(message.catalog)
        elif isinstance(message, msg.RunDone):
            self.finished(message)
        elif isinstance(message, msg.Failed):
            self.failed(message)

    def failed(self, failure: msg.Failed) -> None:
        if failure.fatal and self.reopening:  # a watched run: what is shown stays, those checkpoints wait for a change
            self.reopening = False
            self.refused.update((path, self.seen.get(path, ())) for path in self.adding)
            line = f"adding {', '.join(map(os.path.basename, self.adding))} failed: {failure.message}"
        elif failure.fatal:
            self.exit(return_code=2, message=f"weightscope: {failure.message}")
            return
        else:
            line = f"{failure.job} failed: {failure.message}"
        self.notify(line, severity="error", timeout=8)
        status = self.query_one("#status-line", Static)
        status.update(line)
        status.display = True

    def opened(self, catalog) -> None:
        import numpy as np

        from weightscope.analysis.hierarchy import of_names
        from weightscope.compare.run_results import RunTable
        from weightscope.ui.widgets.run_detail import RunDetail, load_plots
        from weightscope.ui.widgets.run_tree import RunTree, step_axis, step_labels

        previous = self.catalog
        self.reopening = False
        keep = self.names.path(self.shown) if self.ready and self.shown is not None else None
        self.catalog, self.table = catalog, RunTable(catalog)
        self.labels, self.axis = step_labels(catalog.points), step_axis(catalog.points)
        self.scan_done, self.flags = False, []
        at_last = previous is None or self.selected == len(previous.points) - 2
        self.selected = catalog.steps - 1 if at_last else min(self.selected, catalog.steps - 1)
        self.against = min(self.against, self.selected)
        if previous is None or previous.names != catalog.names:
            self.names = of_names(catalog.names)
        if self.run_tree is None:
            self.run_tree = RunTree(catalog, self.names, self.table, id="tree")
            self.run_tree.selected = self.selected
            area = self.query_one("#tree-area")
            area.query_one("#placeholder").remove()
            area.mount(self.run_tree)
            self.run_tree.focus()
            detail = RunDetail(id="detail", classes="narrow" if self.size.width < NARROW else "")
            self.mount(detail, after=self.query_one("#detail-placeholder"))
            self.query_one("#detail-placeholder").remove()
            # The plots' module after the tree's first frame (the pane's first plots wait for it then)
            self.call_after_refresh(threading.Thread(target=load_plots, name="weightscope-plots", daemon=True).start)
        else:
            self.run_tree.catalog = catalog
            self.run_tree.marks = np.full(len(catalog), -1, np.int8)
            self.run_tree.whole_flags = -1
            self.run_tree.set_run_model(self.names, self.table)
            self.run_tree.selected = self.selected
            if keep is not None:
                self.reveal_path(keep)
        self.query_one("#title", Static).update(self.title_text())
        self.show_legend()
        self.engine.send(msg.Scan())

    def reveal_path(self, path: str) -> None:
        found = next((node for node in range(len(self.names)) if self.names.path(node) == path), None)
        if found is not None:
            self.run_tree.reveal(found)

    def redraw(self) -> None:
        self._redraw = None
        if not self.ready:
            return
        progress = self.query_one("#progress", ProgressBar)
        progress.display = not self.scan_done
        progress.update(progress=self.progress[0], total=self.progress[1])
        self.run_tree.refresh_figures()
        self.show_legend()
        if time.monotonic() - self.detail_drawn > DETAIL_REDRAW or self.scan_done:
            self.show_detail()

    def finished(self, done: msg.RunDone) -> None:
        self.scan_done = True
        self.flags = list(done.flags)
        self.query_one("#progress").display = False
        if self.ready:
            self.run_tree.set_flags(self.flags)
            self.redraw()
        read = sum(done.read)
        from weightscope.report.diff import human

        cached = f", {len(done.cached)} step{'s' if len(done.cached) != 1 else ''} from the cache" if done.cached else ""
        if done.complete:
            self.notify(f"scan complete: {human(read, 'B')} read{cached}; {len(self.flags)} flags", timeout=3)

    # Drawing

    def show_legend(self) -> None:
        if self.run_tree is None:
            return
        labels = self.labels
        waiting = int((self.table.status == PENDING).any(axis=0).sum())
        # What matters most first: a narrow terminal cuts the end of the line
        text = Text.assemble("step ", (labels[self.selected], "bold"), f" ({self.selected + 1}/{len(labels)}, [ ])",
                             (f"  {waiting} steps pending" if waiting else "", "dim"), ("   drift by step ", "bold"),
                             self.run_tree.figures.scale.legend(), ("  = 0  · not read  blank n/a", "dim"))
        self.query_one("#run-legend", Static).update(text)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        if event.node.data is None or self.run_tree is None or event.control is not self.run_tree:
            return
        self.shown = event.node.data
        self.show_detail()

    def shown_tensor(self) -> int | None:
        if self.shown is None:
            return None
        pair = int(self.names.pair[self.shown])
        return pair if pair >= 0 and not self.names.is_group(self.shown) else None

    def flags_of(self, node: int) -> list:
        tensors = {self.catalog.names[i] for i in self.names.order[self.names.lo[node]:self.names.hi[node]].tolist()}
        return [f for f in self.flags if tensors.intersection(f.tensors) or (node == 0 and not f.tensors)]

    def show_detail(self) -> None:
        if not self.ready or self.shown is None or self.shown >= len(self.names):
            return
        from weightscope.ui.widgets.run_detail import group_rows, tensor_rows

        self.detail_drawn = time.monotonic()
        node, t, table = self.shown, self.selected, self.table
        label, x = self.labels[t], self.axis
        i = self.shown_tensor()
        if i is not None:
            name = self.catalog.names[i]
            rows = tensor_rows(table, i, t, label)
            drift, update = table.drift()[i], table.update()[i]
            pending = table.status[i] == PENDING
        else:
            found = self.run_tree.figures.of(node)
            name = self.names.path(node) or "all tensors"
            rows = group_rows(found, t, label, self.names.tensors(node),
                              int(self.catalog.numel[self.names.order[self.names.lo[node]:self.names.hi[node]]].sum()))
            drift, update, pending = found["drift"], found["update"], found["pending"]
        title = Text.assemble((name, "bold"), ("  (tensor)" if i is not None else "  (group)", "dim"))
        detail = self.query_one("#detail")
        detail.show(title, rows, self.flags_of(node) if self.scan_done else [], x, drift, update, pending,
                    self.log_scale, x[t])
        reference = os.path.basename(os.path.normpath(self.catalog.points[0].path))
        before = reference if t == 0 else self.labels[t - 1]
        detail.show_pair(Text.assemble(
            ("at step ", "dim"), label, (": drift against the reference ", "dim"), reference,
            (", update against ", "dim"), before, ("\npair (p): ", "dim"), self.point_label(self.against),
            (" → ", "dim"), label, ("  { } moves the first, [ ] the second", "dim")))

    # Actions

    def point_label(self, point: int) -> str:
        return "reference" if point == 0 else self.labels[point - 1]

    def pair_paths(self) -> tuple[str, str]:
        """The checkpoints the pair app compares: the one `{ }` chose, then the selected step."""
        points = self.catalog.points
        return points[self.against].path, points[self.selected + 1].path

    def action_step(self, delta: int) -> None:
        if not self.ready:
            return
        self.selected = max(0, min(self.catalog.steps - 1, self.selected + delta))
        self.against = min(self.against, self.selected)
        self.run_tree.selected = self.selected
        self.run_tree.refresh_lines()
        self.show_legend()
        self.show_detail()

    def action_against(self, delta: int) -> None:
        if not self.ready:
            return
        self.against = max(0, min(self.selected, self.against + delta))
        self.show_detail()

    def action_pair(self) -> None:
        """The pair app on the two checkpoints, at the selected tensor, in this terminal; back here when it quits."""
        if not self.ready:
            return
        argv = [*self.pair_paths()]
        i = self.shown_tensor()
        if i is not None:
            argv += ["--select", self.catalog.names[i]]
        if not self.job.use_cache:
            argv.append("--no-cache")
        try:
            with self.suspend():
                done = subprocess.run([sys.executable, "-m", "weightscope", *argv], check=False)
        except SuspendNotSupported:  # no terminal to hand over (a web or headless driver)
            self.notify(f"this terminal cannot be handed to the pair app; run: weightscope {shlex.join(argv)}",
                        severity="warning", timeout=10)
            return
        except OSError as exc:
            self.notify(f"the pair app did not start: {exc}", severity="error", timeout=8)
            return
        if done.returncode != 0:
            self.notify(f"the pair app ended with status {done.returncode}", severity="error", timeout=8)

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.show_detail()
        self.notify(f"drift and update: {'log' if self.log_scale else 'linear'} scale", timeout=2)

    def action_notes(self) -> None:
        if self.catalog is not None:
            self.push_screen(NotesScreen([("the run", list(self.catalog.notes))]))

    def action_overview(self) -> None:
        if not self.ready:
            return
        from weightscope.ui.screens.run_overview import RunOverviewScreen, module_of

        i = self.shown_tensor()
        module = module_of(self.catalog.names[i]) if i is not None else None
        self.push_screen(RunOverviewScreen(self.catalog, self.table, module, self.scan_done), self.show_in_tree)

    def show_in_tree(self, name: str | None) -> None:
        if name is None or not self.ready:
            return
        try:
            pair = self.catalog.names.index(name)
        except ValueError:
            return
        node = int(self.names.node_of[pair])
        if node >= 0:
            self.run_tree.reveal(node)
            self.run_tree.focus()

    # Watching a run directory

    def look_for_checkpoints(self) -> None:
        if self.looking or self.reopening or self.catalog is None:
            return
        self.looking = True
        known = {point.path for point in self.catalog.points}
        threading.Thread(target=self.look, args=(known,), name="weightscope-watch", daemon=True).start()

    def look(self, known: set[str]) -> None:
        """In a thread: the run's checkpoints now; new ones that are complete and have stopped growing."""
        from weightscope.sources.runs import plan_run

        try:
            spec = plan_run(self.paths)
            if spec is None:
                return
            ready = []
            for point in spec.steps:
                if point.path in known:
                    continue
                signature = files_signature(point.path)
                before, self.seen[point.path] = self.seen.get(point.path), signature
                if self.refused.get(point.path) == signature:
                    continue  # the run did not open with it; tried again once its files change
                if signature and before == signature and complete(point.path):
                    ready.append(point.path)
            if ready:
                self.post_message(NewCheckpoints(spec, ready))
        except Exception as exc:  # noqa: BLE001  (said, and the app goes on)
            self.call_from_thread(self.notify, f"watching the run failed: {exc}", severity="error", timeout=8)
        finally:
            self.looking = False

    def on_new_checkpoints(self, event: NewCheckpoints) -> None:
        """Open the run again with the new checkpoints: the steps seen before come from the cache."""
        from dataclasses import replace

        from weightscope.sources.runs import RunSpec

        if self.reopening:
            return
        known = {point.path for point in self.catalog.points}
        steps = tuple(p for p in event.spec.steps if p.path in known or p.path in event.added)
        reference = self.catalog.points[0]
        if reference.path != event.spec.reference.path:  # the first checkpoint, deleted (a trainer's save limit)
            self.notify(f"the reference {os.path.basename(os.path.normpath(reference.path))} is gone: drift is now "
                        f"against {os.path.basename(os.path.normpath(event.spec.reference.path))}",
                        severity="warning", timeout=10)
        self.job = replace(self.job, spec=RunSpec(event.spec.reference, steps))
        old = self.engine
        self.reopening, self.adding = True, list(event.added)
        threading.Thread(target=old.close, name="weightscope-engine-close", daemon=True).start()
        self.start_engine()
        names = ", ".join(os.path.basename(p) for p in event.added)
        self.notify(f"new checkpoint{'s' if len(event.added) > 1 else ''}: {names}", timeout=4)


def files_signature(path: str) -> tuple:
    """(name, size, mtime) of every file in a checkpoint directory (or of the file)."""
    try:
        if os.path.isfile(path):
            st = os.stat(path)
            return ((os.path.basename(path), st.st_size, st.st_mtime_ns),)
        found = []
        for name in sorted(os.listdir(path)):
            st = os.stat(os.path.join(path, name))
            found.append((name, st.st_size, st.st_mtime_ns))
        return tuple(found)
    except OSError:
        return ()


def complete(path: str) -> bool:
    """Whether a checkpoint opens whole (`sources.runs.incomplete`)."""
    from weightscope.sources.discover import open_checkpoint
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.runs import incomplete

    try:
        checkpoint = open_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    try:
        return incomplete(checkpoint) is None
    finally:
        checkpoint.close()
