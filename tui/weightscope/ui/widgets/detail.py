"""The detail pane: what one pair (or one group) looks like, figure by figure."""

from __future__ import annotations

import math
import os

from rich.console import Group as Stack
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Static

from dataclasses import dataclass

from weightscope.compare.align import Pair
from weightscope.compare.checks import nonfinite_text
from weightscope.compare.results import PairResult
from weightscope.compare.stats import DiffStats
from weightscope.report.diff import human, many, slice_unit, slices_text, where_added
from weightscope.ui.widgets import badges

SIDE_ROWS = [("min", "min"), ("max", "max"), ("mean", "mean"), ("std", "std"), ("absmax", "absmax"),
             ("L2 norm", "l2"), ("NaN", "nan"), ("+Inf", "posinf"), ("−Inf", "neginf"), ("zeros", "zeros")]


def number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"


def verdict(diff: DiffStats, numel: int) -> Text:
    """'mismatched 1,234 / 16.7M (0.007%), max |Δ| 3.1e-3 at (12, 4001)'."""
    text = Text()
    share = f" ({100 * diff.mismatched / numel:.3g}%)" if numel else ""
    text.append(f"mismatched {diff.mismatched:,} / {human(numel)}{share}",
                "bold red" if diff.mismatched else "bold green")
    if diff.max_abs is not None:
        text.append(f", max |Δ| {diff.max_abs:.3g}")
        if diff.max_abs_index is not None:
            text.append(f" at {tuple(diff.max_abs_index)}")
    text.append(f"\n(atol {diff.atol:g}, rtol {diff.rtol:g})", "dim")
    return text


INITIALISED = {"zeros": "initialised as zeros", "mean of old rows": "initialised as the mean of old rows",
               "random at init scale": "random, at the old rows' scale", "norm far from old rows'":
               "norm far from the old rows'"}


def rows_count(n: int, what: str) -> str:
    """'none zero', '3 zero'."""
    return f"none {what}" if n == 0 else f"{n:,} {what}"


def resized_text(resized) -> Text:
    """A resized pair in plain words: its common part's status, then its added rows' audit:
    'rows 32000–32007 added in B: 8 rows, none zero, none NaN/Inf, 8 duplicated; norm 0.41
    vs old rows' 0.93 → initialised as the mean of old rows'."""
    text = Text(f"common part {list(resized.shape)}: ")
    if resized.error:
        return text.append(f"failed: {resized.error}", "red")
    text.append(f"{badges.symbol(resized.status)} {badges.words(resized.status)}", badges.style(resized.status))
    if resized.status in ("close", "changed"):
        text.append(f", rel L2 {badges.percent(resized.diff.rel_l2)}")
    added = resized.added
    n, (first, end) = added.count, added.rows
    units = slice_unit(added) + "s"
    text.append(f"\n{units} {first if n == 1 else f'{first}–{end - 1}'} {where_added(added)}: ", "bold")
    text.append(f"{slices_text(added, n)}, {rows_count(added.zero_rows, 'zero')}, ")
    text.append(rows_count(added.nonfinite_rows, "NaN/Inf"), "bold red" if added.nonfinite_rows else "")
    text.append(f", {rows_count(added.duplicate_rows, 'duplicated')}")
    if added.far_rows and added.far_rows < n - added.nonfinite_rows:  # (all of them: the guess says so)
        text.append(f", {added.far_rows:,} of a norm far from the old {units}'")
    text.append("; ")
    unknown = "n/a (each holds NaN/Inf)"
    text.append(f"norm {unknown if added.norm_mean is None else f'{added.norm_mean:#.3g}'} vs old {units}' "
                f"{unknown if added.norm_mean_old is None else f'{added.norm_mean_old:#.3g}'} → ")
    text.append(INITIALISED.get(added.init, added.init), "bold red" if added.nonfinite_rows else "bold")
    if added.mean_rows is None:
        text.append(f" ({units} too long to compare with their mean)", "dim")
    return text


@dataclass(frozen=True)
class Group:
    """What the pane shows of a group: its counts by status and its most changed members.

    Attributes:
        ranked: (name below the group, rel L2) of the most changed members, largest first.
    """

    path: str
    status: str
    counts: dict[str, int]
    tensors: int
    parameters: int
    max_rel: float | None
    ranked: list[tuple[str, float]]
    differing: int

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)


def aligned(rows: list[tuple], right: frozenset[int] | set[int] = frozenset(), gap: int = 2) -> Text:
    """Rows of cells (str or Text) in aligned columns, as one Text: a group's figures are drawn
    twice a second during a scan, and a Rich table takes several times longer to lay out.
    Lines longer than the pane are cut with an ellipsis."""
    rows = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    widths = [max(row[k].cell_len for row in rows) for k in range(len(rows[0]))] if rows else []
    out = Text(no_wrap=True, overflow="ellipsis")
    for r, row in enumerate(rows):
        if r:
            out.append("\n")
        for k, cell in enumerate(row):
            pad = " " * (widths[k] - cell.cell_len)
            out.append_text(Text(pad) + cell if k in right else cell + (Text(pad) if k < len(row) - 1 else Text()))
            if k < len(row) - 1:
                out.append(" " * gap)
    return out


@dataclass
class Plots:
    """The detail pane's plots, and the switcher that shows one view of them at a time."""

    values: Widget  # histogram.HistogramPlot (A and B)
    deltas: Widget  # histogram.HistogramPlot (B − A)
    spectrum: Widget  # spectrum_plot.SpectrumPlot
    map: Widget  # change_map_view.ChangeMapView
    heads: Widget  # heads_view.HeadsPlot
    grid_text: Static  # a layer's heads × q, k, v, o, or why a tensor has no heads
    switcher: ContentSwitcher


def load_plots() -> None:
    """Import the plots' modules (plotext), as a thread does once the first screen is drawn."""
    from weightscope.ui.widgets import change_map_view, heads_view, histogram, spectrum_plot  # noqa: F401


class DetailPane(VerticalScroll):
    """Names, dtypes, shapes and files at once; statistics and histograms when the worker is done."""

    single = False
    """One checkpoint browsed alone: only A's side is shown."""
    _plots: Plots | None = None
    shown_pair: str | None = None
    """The name of the pair shown (None for a group or nothing): its plots stay as its header is drawn again."""

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        yield Static(id="detail-sides")
        with Horizontal(id="detail-body"):
            with Vertical(id="detail-figures"):
                yield Static(id="detail-stats")
                yield Static(id="detail-verdict")
            yield ContentSwitcher(id="detail-plots")  # its plots come with `plots`

    @property
    def plots(self) -> Plots:
        """The plots, mounted when first asked for: their modules (plotext) load once the first
        screen is drawn (`load_plots`), not before it."""
        if self._plots is None:
            from weightscope.ui.widgets.change_map_view import ChangeMapView
            from weightscope.ui.widgets.heads_view import HeadsPlot
            from weightscope.ui.widgets.histogram import HistogramPlot
            from weightscope.ui.widgets.spectrum_plot import SpectrumPlot

            plots = Plots(HistogramPlot(id="hist-values"), HistogramPlot(id="hist-diff"), SpectrumPlot(id="spectrum"),
                          ChangeMapView(id="map"), HeadsPlot(id="heads"), Static(id="heads-grid-text"),
                          self.query_one(ContentSwitcher))
            views = [Vertical(plots.values, plots.deltas, id="histograms"), plots.spectrum, plots.map, plots.heads,
                     VerticalScroll(plots.grid_text, id="heads-grid")]
            for view in views[1:]:
                view.display = False
            plots.switcher.mount(*views)
            plots.switcher.current = "histograms"
            self._plots = plots
        return self._plots

    def show_pair(self, pair: Pair, status: str) -> None:
        """The header of a pair, with a loading indicator where the figures will go; its view's
        plot (spectrum, map, heads) emptied for a pair newly shown, kept for the pair already
        shown (its figures came after its heads, say)."""
        self.query_one("#detail-title", Static).update(self.title_text(pair.name, status))
        sides = Table.grid(padding=(0, 2))
        for label, info in (("A", pair.a),) if self.single else (("A", pair.a), ("B", pair.b)):
            if info is None:
                sides.add_row(label, Text("—", "dim"), "")
                continue
            where = info.origin or os.path.basename(info.file)
            if info.quant is not None and info.origin is None:  # the figures below are of the decoded values
                where += f", dequantized from {info.quant} to {info.dtype}"
            detail = info.error or (f"tied to {info.tied_to}" if info.tied_to else where)
            name = "" if info.name == pair.name else info.name
            sides.add_row(label, f"{info.stored_dtype or '?'} {list(info.shape) if info.shape is not None else ''}",
                          Text(f"{name} {detail}".strip(), "dim"))
        for note in pair.notes:
            sides.add_row("", "", Text(note, "dim"))
        self.query_one("#detail-sides", Static).update(sides)
        stats = self.query_one("#detail-stats", Static)
        stats.update("")
        stats.loading = True
        self.query_one("#detail-verdict", Static).update("")
        self.query_one("#detail-plots").display = True
        plots = self._plots
        self.shown_pair, shown = pair.name, self.shown_pair
        if plots is None:  # none drawn yet: they come with the figures, not in the tree's first frame
            return
        plots.values.clear()
        plots.deltas.clear()
        if pair.name != shown:
            plots.spectrum.message("")
            plots.map.update("")
            plots.heads.message("")
            if plots.switcher.current == "heads-grid":  # a group's grid (or another pair's words) gives way
                plots.switcher.current = "heads"

    def title_text(self, name: str, status: str) -> Text:
        text = Text(f"{badges.symbol(status)} {badges.words(status)}  ", badges.style(status))
        text.append(name, "bold")
        return text

    def show_result(self, result: PairResult, log_counts: bool, histograms_pending: bool = False) -> None:
        """The figures of a pair: A | B statistics, the difference, the verdict, histograms
        (or a word that they are on their way). A resized pair's figures are over its common
        part, under a word on that part and on the rows only one side has."""
        stats = self.query_one("#detail-stats", Static)
        stats.loading = False
        resized = None if self.single else result.resized
        numel = (result.pair.a or result.pair.b).numel
        sides = [(label, s) for label, s in (("A", result.a), ("B", result.b)) if s is not None]
        diff = None if self.single else result.diff
        if resized is not None and resized.values is not None:
            sides, diff, numel = [("A", resized.a), ("B", resized.b)], resized.diff, math.prod(resized.shape)
        if self.single:
            sides = sides[:1]
        # One Text rather than a Rich table: the pane is laid out and drawn line by line, and a
        # table is measured again for each, a tenth of a second per tensor shown.
        header = [Text(""), *(Text(label, "bold") for label, _ in sides)]
        if diff is not None:
            header += [Text(""), Text("Δ = B − A", "bold")]
        diff_rows = self.diff_rows(diff) if diff is not None else []
        rows = [header]
        for i, (label, key) in enumerate(SIDE_ROWS):
            row = [Text(label, "dim")] + [number(getattr(s, key)) for _, s in sides]
            if diff is not None:
                extra = diff_rows[i] if i < len(diff_rows) else ("", "")
                row += [Text(extra[0], "dim"), extra[1]]
            rows.append(row)
        right = {k for k in range(1, len(header)) if k != len(sides) + 1}
        table = aligned(rows, right=right)
        if result.error:
            stats.update(Text(result.error, "red"))
        elif resized is not None:
            stats.update(Stack(resized_text(resized), "", table))
        else:
            stats.update(table if sides else Text("no statistics", "dim"))
        message = Text()
        if diff is not None:
            message.append(verdict(diff, numel))
            for key, why in diff.undefined.items():
                message.append(f"\n{key} n/a: {why}", "dim")
        for label, side in sides:
            if side.nonfinite:
                message.append(f"\n{label} holds {nonfinite_text(side)}", "bold red")
        for note in result.notes:
            message.append(f"\n{note}", "dim")
        self.query_one("#detail-verdict", Static).update(message)
        if histograms_pending:
            self.clear_histograms("computing histograms…")
        else:
            self.draw_histograms(result, log_counts)

    def diff_rows(self, diff: DiffStats) -> list[tuple[str, str]]:
        """Δ's figures, beside the sides' rows (at most as many): rel L2 in percent, as the tree shows it."""
        return [("max |Δ|", number(diff.max_abs)), ("mean |Δ|", number(diff.mean_abs)), ("RMS", number(diff.rms)),
                ("rel L2", badges.percent(diff.rel_l2) if diff.rel_l2 is not None else "n/a"),
                ("SNR dB", f"{diff.snr_db:.1f}" if diff.snr_db is not None else "n/a"), ("cosine", number(diff.cosine)),
                ("changed", f"{100 * diff.changed_fraction:.4g}%" if diff.changed_fraction is not None else "n/a"),
                ("mismatched", number(diff.mismatched))]

    def draw_histograms(self, result: PairResult, log_counts: bool) -> None:
        values, deltas = self.plots.values, self.plots.deltas
        hists = result.histograms
        series = [(label, hists[key], colour) for key, label, colour in (("a", "A", "cyan"), ("b", "B", "orange"))
                  if key in hists and not (self.single and key == "b")]
        if series:
            values.show("values", series, log_counts)
        else:
            values.clear("no finite values")
        deltas.display = not self.single  # one checkpoint: there is no Δ to draw
        if "diff" in hists:
            deltas.show("Δ = B − A", [("Δ", hists["diff"], "red")], log_counts)
        else:
            deltas.clear("no difference to draw")

    def shown_status(self, status: str) -> str:
        """A status as this pane names it: browsing one checkpoint, 'identical' means read."""
        return "read" if self.single and status == "identical" else status

    def show_group(self, group: Group, verdict: Text | None = None) -> None:
        """A group's aggregate: counts by status, parameters and the most-changed members; for
        the root of a comparison, its verdict first."""
        self.shown_pair = None
        title = self.title_text(group.path or "(all tensors)", self.shown_status(group.status))
        self.query_one("#detail-title", Static).update(title)
        counts = [(Text(badges.symbol(shown), badges.style(shown)), badges.words(shown), f"{group.count(status):,}")
                  for status in badges.BADGES if group.count(status) for shown in [self.shown_status(status)]]
        self.query_one("#detail-sides", Static).update(aligned(counts))
        stats = self.query_one("#detail-stats", Static)
        stats.loading = False
        summary = Text(f"{many(group.tensors, 'tensor')}, {human(group.parameters)} parameters")
        if group.max_rel is not None and not self.single:
            summary.append(f", largest rel L2 {badges.percent(group.max_rel)}")
        if group.count("factor"):
            summary.append(f"; and {many(group.count('factor'), 'LoRA factor')} beside them", "dim")
        stats.update(Text.assemble(verdict, "\n\n", summary) if verdict is not None else summary)
        self.query_one("#detail-plots").display = False
        self.show_ranking(group)

    def show_failure(self, line: str) -> None:
        """What went wrong working out the figures of the pair shown (instead of a spinner)."""
        stats = self.query_one("#detail-stats", Static)
        stats.loading = False
        stats.update(Text(line, "red"))
        self.clear_histograms("")

    def clear_histograms(self, message: str) -> None:
        """No histograms, and why (an empty message: none)."""
        self.plots.values.clear(message)
        self.plots.deltas.clear(message)

    def show_nothing(self, message: str) -> None:
        """An empty pane with one line saying why."""
        self.shown_pair = None
        self.query_one("#detail-title", Static).update(Text(message, "dim"))
        for part in ("#detail-sides", "#detail-stats", "#detail-verdict"):
            self.query_one(part, Static).update("")
        self.query_one("#detail-stats", Static).loading = False
        self.query_one("#detail-plots").display = False

    def show_view(self, view: str) -> None:
        """Which figure the lower right shows: "histograms", "spectrum" or "map". In a narrow
        pane, where the plots sit below the figures, a spectrum or map takes the figures' place."""
        self.plots.switcher.current = view
        self.set_class(view != "histograms", "plot-view")

    def show_spectrum(self, spectrum, log_scale: bool) -> None:
        plot = self.plots.spectrum
        if spectrum is None:
            plot.message("no spectrum: it needs two sides of the same shape with 2 or more dimensions")
        else:
            plot.show(spectrum, log_scale)

    def show_map(self, cmap, name: str) -> None:
        view = self.plots.map
        if cmap is None:
            view.update(Text("no change map: it needs two sides of the same shape, or resized in one dimension",
                             "dim"))
        else:
            view.show(cmap, name)

    def show_heads(self, found, name: str) -> None:
        """A tensor's change by head or expert (or why it has none)."""
        from weightscope.ui.widgets.heads_view import explain

        plots = self.plots
        if found is None or not hasattr(found, "units"):  # in words that wrap: a plot's title would be cut
            plots.grid_text.update(Text(explain(found), "dim"))
            plots.switcher.current = "heads-grid"
        else:
            plots.heads.show(found, name)
            plots.switcher.current = "heads"

    def show_heads_grid(self, path: str, found: dict) -> None:
        """A layer's attention as heads × q, k, v, o, where its group's figures were."""
        from weightscope.ui.widgets.heads_view import explain, render_grid

        text = self.plots.grid_text
        usable = {role: f for role, f in found.items() if hasattr(f, "units")}
        if usable:
            text.update(render_grid(path, usable))
        else:
            why = next((explain(f) for f in found.values()), "no attention projections here")
            text.update(Text(why, "dim"))
        self.query_one("#detail-plots").display = True
        self.plots.switcher.current = "heads-grid"

    def map_size(self) -> tuple[int, int]:
        """The grid a change map gets: the size of the figure area (known even while it is hidden)."""
        from weightscope.ui.widgets.change_map_view import grid_size

        area = self.query_one("#detail-plots").size
        return grid_size(area.width, area.height)

    def show_ranking(self, group: Group) -> None:
        """The most-changed members of a group."""
        header = (Text("rel L2", "bold"), Text("tensor", "bold"))
        top = Text.assemble(Text("most changed", "italic"), "\n", aligned([header] + [
            (badges.percent(rel), name) for name, rel in group.ranked], right={0}), no_wrap=True, overflow="ellipsis")
        pending = group.count("pending")
        if self.single:
            bad = group.count("nonfinite")
            message = Text(f"{bad:,} of {many(group.tensors, 'tensor')} {'holds' if bad == 1 else 'hold'} NaN or Inf" if bad else
                           f"{pending:,} of {many(group.tensors, 'tensor')} not read yet" if pending else
                           "every value is finite", "bold red" if bad else "dim")
        elif group.ranked:
            message = top
        elif group.differing:
            message = Text(f"{group.differing:,} of {many(group.tensors, 'tensor')} {'differs' if group.differing == 1 else 'differ'}", "dim")
        elif pending:
            message = Text(f"{pending:,} of {many(group.tensors, 'tensor')} not read yet", "dim")
        else:
            message = Text("nothing differs here", "dim")
        self.query_one("#detail-verdict", Static).update(message)
