"""A histogram drawn with plotext, from bins the core computed.

Each widget owns its plotext instance (textual-plotext's `plt`), so two plots never share
plotext's global state.
"""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from weightscope.compare.stats import Histogram


def round_step(least: float) -> float:
    """The smallest 1, 2 or 5 × 10^k that is at least `least` (> 0)."""
    power = 10.0 ** math.floor(math.log10(least))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= least * (1 - 1e-9))


def round_ticks(lo: float, hi: float, most: int, least_step: float = 0.0) -> tuple[list[float], float]:
    """As many ticks as can be, up to `most` (1 or more), within [lo, hi] (lo < hi) at the
    multiples of a round step of at least `least_step`; and the step."""
    step = round_step(max((hi - lo) / (2 * most + 2), least_step))  # short enough for a tick in [lo, hi]
    fewest: tuple[list[float], float] = ([], step)
    while True:
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        ticks = [k * step for k in range(first, last + 1)]
        if len(ticks) <= most:  # a step too long for any tick keeps the first of the step before
            return (ticks, step) if ticks else (fewest[0][:most], fewest[1])
        fewest = (ticks, step)
        step = round_step(step * 1.5)  # the next round step


def plain(value: float, digits: int = 6) -> str:
    """A number in few characters, to `digits` significant digits: '0', '1.5', '2e-6', '3e7' (never '-0')."""
    text = f"{value + 0.0:.{digits}g}"  # + 0.0 turns -0.0 into 0.0
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def tick_labels(ticks: list[float], step: float) -> list[str]:
    """Round ticks with the decimals their step needs ('-0.002', '0.000', '0.002'); very small
    or very large ones as '2e-6', '1.5e6'."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    largest = max((abs(t) for t in ticks), default=0)
    if decimals > 4 or largest >= 1e6:  # as many digits as tell one tick from the next
        digits = math.floor(math.log10(largest) + 1e-9) - math.floor(math.log10(step) + 1e-9) + 1 if largest else 1
        return [plain(t, max(digits, 1)) for t in ticks]
    return [f"{t + 0.0:.{decimals}f}" for t in ticks]


def y_ticks(plt, lo: float, hi: float, height: int) -> int:
    """Set the y range to [lo, hi] (lo < hi) with round ticks, no two on one row of a plot
    `height` rows high; returns the width of their labels (the plot's left margin)."""
    rows = max(height - 5, 1)  # less the title, the frame, the x labels and the axis label
    most = min(rows, 7)
    while True:
        ticks, step = round_ticks(lo, hi, most)
        placed = {math.floor(0.5 + (rows - 1) * (t - lo) / (hi - lo)) for t in ticks}  # as plotext places them
        if len(placed) == len(ticks) or most == 1:
            break
        most = len(ticks) - 1
    labels = tick_labels(ticks, step)
    plt.ylim(lo, hi)
    plt.yticks(ticks, labels)
    return max(map(len, labels), default=0)


def x_ticks(lo: float, hi: float, cells: int, least_step: float = 0.0) -> tuple[list[float], list[str]]:
    """Round ticks over [lo, hi] (lo < hi) and their labels, as many as `cells` columns hold
    with room between labels (plotext drops a label that would touch another)."""
    most = max(cells // 3, 1)
    while True:
        ticks, step = round_ticks(lo, hi, most, least_step)
        labels = tick_labels(ticks, step)
        if len(ticks) <= 1 or step * (cells - 1) >= (hi - lo) * (max(map(len, labels)) + 2):
            return ticks, labels
        most = len(ticks) - 1


def single_value(series: list[Histogram]) -> float | None:
    """The value every histogram in `series` piles up at, when their range is a degenerate one
    around it (a constant or all-zero tensor: all counts in the one bin at the middle); else None."""
    lo, hi = series[0].lo, series[0].hi
    middle = (lo + hi) / 2
    for hist in series:
        filled = [i for i, count in enumerate(hist.counts) if count]
        width = (hi - lo) / len(hist.counts)
        if len(filled) != 1 or not lo + filled[0] * width <= middle <= lo + (filled[0] + 1) * width:
            return None
    return middle


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

    drawn: tuple[str, list[tuple[str, Histogram, str]], bool] | None = None
    """The arguments of `show` for what is shown; None for a message."""

    def show(self, title: str, series: list[tuple[str, Histogram, str]], log_counts: bool) -> None:
        """
        Args:
            title: drawn above the plot (what lies outside the range is added to it).
            series: (label, histogram, colour) for each line.
            log_counts: plot log10(1 + count) instead of the count.
        """
        self.drawn = (title, series, log_counts)
        self.refresh()

    def render(self):
        if self.drawn is not None and self.drawn[1]:  # drawn for the size the plot has now
            self.draw(*self.drawn)
        return super().render()

    def draw(self, title: str, series: list[tuple[str, Histogram, str]], log_counts: bool) -> None:
        plt, (width, height) = self.plt, self.size
        plt.clear_figure()
        for label, hist, colour in series:
            bin_width = (hist.hi - hist.lo) / len(hist.counts)
            xs = [hist.lo + (i + 0.5) * bin_width for i in range(len(hist.counts))]
            ys = [math.log10(1 + c) if log_counts else c for c in hist.counts]
            plt.plot(xs, ys, label=label, color=colour, marker="braille")
        hists = [hist for _, hist, _ in series]
        lo, hi = hists[0].lo, hists[0].hi
        top = max(max(hist.counts, default=0) for hist in hists)
        top = math.log10(1 + top) if log_counts else top
        margin = y_ticks(plt, 0, top or 1, height)  # counts from 0
        plt.xlim(lo, hi)
        value = single_value(hists)
        if value is not None:  # a constant tensor: its value, not the tiny range drawn around it
            plt.xticks([value], [plain(value)])
        else:
            plt.xticks(*x_ticks(lo, hi, width - margin - 2))  # less the y labels and the frame
        plt.title(fitted_title(title, [(label, h.below, h.above) for label, h, _ in series if h.below or h.above],
                               width - margin - 1))  # plotext centres the title over the canvas
        plt.ylabel("log10(1+count)" if log_counts else "count")

    def clear(self, message: str = "") -> None:
        self.drawn = None
        self.plt.clear_figure()
        self.plt.title(message)
        self.refresh()
