"""The plots read like numbers (issue 17): the spectrum always says its ranks, ticks sit at round
values (whole numbers for the singular-value index), and a constant tensor's axis reads as
its value rather than as the tiny range drawn around it.

The widgets are read as the screen shows them: mounted alone in a small app, or in the app on
a tiny pair written here.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from textual.app import App, ComposeResult
from textual.widget import Widget
from weightscope.analysis.spectrum import Spectrum
from weightscope.compare.stats import HISTOGRAM_BINS, Histogram, value_range
from weightscope.ui.widgets.histogram import HistogramPlot
from weightscope.ui.widgets.spectrum_plot import SpectrumPlot, summary

from .helpers import SIZE, histograms_of, open_app, screen_text, settle


class OnePlot(App):
    """A plot widget alone on the screen."""

    def __init__(self, plot: Widget):
        super().__init__()
        self.plot = plot

    def compose(self) -> ComposeResult:
        yield self.plot


def plot_lines(app: App, plot: Widget) -> list[str]:
    """The rows of the screen the plot covers, cut to its columns."""
    rows = screen_text(app).split("\n")
    region = plot.region
    return [rows[y][region.x:region.right] if y < len(rows) else "" for y in range(region.y, region.bottom)]


def x_labels(lines: list[str]) -> list[str]:
    """The tick labels under the x axis, left to right."""
    axis = next(i for i, line in enumerate(lines) if "└" in line)
    return lines[axis + 1].split()


def y_labels(lines: list[str]) -> list[str]:
    """The tick labels left of the y axis, top to bottom."""
    return [line.split("┤")[0].strip() for line in lines if "┤" in line]


def whole_numbers(labels: list[str]) -> bool:
    """Labels of whole numbers, rising, from 1 or 2 (1, 2, 3 … or 2, 4, 6 … or 1, 5, 10 …)."""
    return all(label.isdigit() for label in labels) and labels[0] in ("1", "2") and \
        [int(label) for label in labels] == sorted({int(label) for label in labels})


def evenly_round(values: list[float]) -> bool:
    """Multiples of one step of 1, 2 or 5 × 10^k, one step apart (0, 5000, 10000, 15000)."""
    if len(values) < 2:
        return True
    step = abs(values[1] - values[0])
    mantissa = step / 10.0 ** math.floor(math.log10(step))
    return any(math.isclose(mantissa, m) for m in (1, 2, 5)) and \
        all(math.isclose(abs(b - a), step) for a, b in itertools.pairwise(values)) and \
        all(math.isclose(v / step, round(v / step), abs_tol=1e-6) for v in values)


def spectrum_of(values: list[float]) -> Spectrum:
    """The spectrum of a change with these singular values (figures as analysis.spectrum defines them)."""
    energy = sum(v * v for v in values)
    shares = tuple(sum(v * v for v in values[:i + 1]) / energy for i in range(len(values)))
    p = [v * v / energy for v in values]
    return Spectrum((64, 64), "exact", tuple(values), math.sqrt(energy), math.exp(-sum(x * math.log(x) for x in p)),
                    energy / values[0] ** 2, shares)


def bell(lo: float, hi: float, peak: int) -> Histogram:
    """A bell-shaped histogram over [lo, hi] whose tallest bin holds `peak`."""
    centres = np.linspace(-3, 3, HISTOGRAM_BINS)
    return Histogram(lo, hi, tuple(int(peak * math.exp(-x * x / 2)) for x in centres), 0, 0)


# The spectrum


async def test_near_equal_singular_values_sit_high_on_an_axis_from_zero_indexed_by_whole_numbers():
    plot = SpectrumPlot()
    app = OnePlot(plot)
    async with app.run_test(size=(60, 20)) as pilot:
        plot.show(spectrum_of([1.0, 0.99, 0.98, 0.97]), log_scale=False)
        await pilot.pause()
        lines = plot_lines(app, plot)
        assert x_labels(lines) == ["1", "2", "3", "4"]
        ys = [float(label) for label in y_labels(lines)]
        assert ys[-1] == 0 and evenly_round(ys), lines
        canvas = [line for line in lines if "│" in line or "┤" in line]
        marked = [row for row, line in enumerate(canvas) if "●" in line]
        assert marked and max(marked) < len(canvas) / 4, lines  # all four in the top quarter: no steep decay
        assert "effective rank 4.0" in lines[0] and "stable rank" in lines[0]


@pytest.mark.parametrize("width", [30, 40, 60, 100])
async def test_the_spectrum_title_says_both_ranks_however_narrow(width):
    plot = SpectrumPlot()
    app = OnePlot(plot)
    async with app.run_test(size=(width, 16)) as pilot:
        plot.show(spectrum_of([float(32 - i) for i in range(32)]), log_scale=False)
        await pilot.pause()
        lines = plot_lines(app, plot)
        assert "rank" in lines[0] and "stable" in lines[0], lines
        assert whole_numbers(x_labels(lines)), lines


def test_the_spectrum_summary_shortens_but_keeps_the_ranks():
    spectrum = spectrum_of([3.0, 2.0, 1.0])
    assert summary(spectrum, 0) == summary(spectrum, 200)  # not laid out yet: the whole summary
    assert "(exact)" in summary(spectrum, 200)
    for width in range(26, 120):
        text = summary(spectrum, width)
        assert len(text) <= width and "rank 2." in text and "stable" in text, (width, text)


async def test_the_log_scale_keeps_plotexts_own_ticks_and_survives_a_resize():
    """plotext takes the log of its data in place when it draws: drawn twice, it once failed."""
    plot = SpectrumPlot()
    app = OnePlot(plot)
    async with app.run_test(size=(60, 20)) as pilot:
        plot.show(spectrum_of([10.0 ** -i for i in range(6)]), log_scale=True)
        await pilot.pause()
        lines = plot_lines(app, plot)
        assert float(y_labels(lines)[-1]) > 0  # a log axis cannot start at 0
        assert x_labels(lines) == ["1", "2", "3", "4", "5", "6"]
        await pilot.resize_terminal(70, 20)
        await pilot.pause()
        assert plot_lines(app, plot)[1:] != lines[1:] and "stable rank" in plot_lines(app, plot)[0]


async def test_the_spectrum_view_shows_the_ranks_at_120x40_and_80x24(pair):
    """A rank-4 change of a 64×32 matrix, as the app draws it after `v`, then in a smaller terminal."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(64, 32, generator=generator)
    b = a + torch.randn(64, 4, generator=generator) @ torch.randn(4, 32, generator=generator) * 0.01
    app = open_app(*pair({"w": a}, {"w": b}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("v")  # the cursor starts on the one tensor `w`
        computed = app.figures.keys  # an LRUCache: keys() but no iteration of its own
        await settle(pilot, until=lambda: any(key[1] == "spectrum" for key in computed()))
        await pilot.pause()
        screen = screen_text(app)
        assert "effective rank" in screen and "stable rank" in screen, screen
        lines = plot_lines(app, app.query_one(SpectrumPlot))
        assert whole_numbers(x_labels(lines)), lines
        assert float(y_labels(lines)[-1]) == 0, lines
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        screen = screen_text(app)
        assert "effective rank" in screen and "stable rank" in screen, screen


# Histograms


async def test_count_ticks_are_round_numbers():
    plot = HistogramPlot()
    app = OnePlot(plot)
    async with app.run_test(size=(70, 24)) as pilot:
        plot.show("values", [("A", bell(-0.0621, 0.0613, 19939), "cyan")], log_counts=False)
        await pilot.pause()
        lines = plot_lines(app, plot)
        counts = [int(label) for label in y_labels(lines)]  # whole numbers: no '19939.0'
        assert counts[-1] == 0 and len(counts) >= 3 and evenly_round(counts), lines
        values = x_labels(lines)
        assert len(values) >= 3 and evenly_round([float(label) for label in values]), lines
        assert not any(label.startswith("-") and float(label) == 0 for label in values), lines


async def test_a_constant_tensor_reads_as_its_value():
    plot = HistogramPlot()
    app = OnePlot(plot)
    async with app.run_test(size=(70, 20)) as pilot:
        for value, label in ((0.0, "0"), (0.25, "0.25")):
            lo, hi = value_range(np.full(100, value))  # the tiny range the core draws around a constant
            counts = [0] * HISTOGRAM_BINS
            counts[HISTOGRAM_BINS // 2] = 100
            plot.show("values", [("A", Histogram(lo, hi, tuple(counts), 0, 0), "cyan")], log_counts=False)
            await pilot.pause()
            assert x_labels(plot_lines(app, plot)) == [label]


async def test_an_all_zero_pair_has_plain_axes(pair):
    """Zeros against negative zeros: the bytes differ, so both value and Δ histograms are drawn,
    each over the tiny range around 0 that the core takes for a constant."""
    app = open_app(*pair({"w": torch.zeros(64, 64)}, {"w": torch.full((64, 64), -0.0)}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert set(histograms_of(app, "w")) >= {"a", "b", "diff"}
        for plot in app.query(HistogramPlot):
            lines = plot_lines(app, plot)
            assert x_labels(lines) == ["0"], lines
            assert evenly_round([int(label) for label in y_labels(lines)]), lines
        assert "0.0000" not in screen_text(app)
