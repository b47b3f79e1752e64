"""A histogram drawn with plotext, from bins the core computed.

Each widget owns its plotext instance (textual-plotext's `plt`), so two plots never share
plotext's global state.
"""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from weightscope.compare.stats import Histogram


def fitted_title(title: str, outside: list[tuple[str, int, int]], width: int) -> str:
    """The title and what fell outside the range, (label, below, above) per line, in `width`
    cells: plotext drops a title that does not fit. Shortened as needed; whole when `width`
    is not known yet (0 or less)."""
    if not outside:
        return title
    full = f"{title}  (" + "; ".join(f"{label}: {lo:,} below, {hi:,} above" for label, lo, hi in outside) + ")"
    if len(full) <= width or width <= 0:
        return full
    short = f"{title} (outside: " + ", ".join(f"{label} ↓{lo:,} ↑{hi:,}" for label, lo, hi in outside) + ")"
    return short if len(short) <= width else short[:max(width - 1, 0)] + "…"


class HistogramPlot(PlotextPlot):
    """Step lines of one or more histograms on a shared x range."""

    def show(self, title: str, series: list[tuple[str, Histogram, str]], log_counts: bool) -> None:
        """
        Args:
            title: drawn above the plot (what lies outside the range is added to it).
            series: (label, histogram, colour) for each line.
            log_counts: plot log10(1 + count) instead of the count.
        """
        plt = self.plt
        plt.clear_figure()
        for label, hist, colour in series:
            width = (hist.hi - hist.lo) / len(hist.counts)
            xs = [hist.lo + (i + 0.5) * width for i in range(len(hist.counts))]
            ys = [math.log10(1 + c) if log_counts else c for c in hist.counts]
            plt.plot(xs, ys, label=label, color=colour, marker="braille")
        plt.title(fitted_title(title, [(label, h.below, h.above) for label, h, _ in series if h.below or h.above],
                               self.size.width - 1))
        plt.ylabel("log10(1+count)" if log_counts else "count")
        self.refresh()

    def clear(self, message: str = "") -> None:
        self.plt.clear_figure()
        self.plt.title(message)
        self.refresh()
