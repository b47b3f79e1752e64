"""A figure of a run against step (drift, update ratio) as a plotext line plot."""

from __future__ import annotations

import math

from textual_plotext import PlotextPlot

from weightscope.ui.widgets.histogram import x_ticks, y_ticks


class StepPlot(PlotextPlot):
    """One figure per step: x the steps' numbers, y the figure; undefined or pending steps are
    left out (said in the title), 0 is left out on a log scale. A second figure can share the
    axes (a small pane's drift and update in one plot)."""

    series: tuple[list[float], list[float]] = ([], [])
    """(x, y) of the points drawn (for the tests: the figures as the plot has them)."""
    other: tuple[str, list[float], list[float]] | None = None
    """The second figure's label and points, when it shares the axes."""
    drawn: tuple | None = None

    def show(self, title: str, x: list[float], values: list[float], log_scale: bool, selected: float | None,
             missing: str = "", other: tuple[str, list[float]] | None = None) -> None:
        """`values` per step (NaN where undefined or pending); `missing` says why some are not
        drawn; `other`: (label, values) of a second figure drawn on the same axes."""
        def points(ys):
            kept = [(a, v) for a, v in zip(x, ys) if math.isfinite(v) and (v > 0 or not log_scale)]
            return [a for a, _ in kept], [v for _, v in kept]

        self.series = points(values)
        self.other = (other[0], *points(other[1])) if other is not None else None
        self.drawn = (title, list(x), log_scale, selected, missing)
        self.refresh()

    def render(self):
        if self.drawn is not None:  # drawn afresh for the size it has now (plotext logs the data in place)
            self.draw(*self.drawn)
        return super().render()

    def draw(self, title: str, x: list[float], log_scale: bool, selected: float | None, missing: str) -> None:
        plt, (width, height) = self.plt, self.size
        plt.clear_figure()
        xs, ys = list(self.series[0]), list(self.series[1])
        margin = 8
        lines = [(xs, ys, "orange")] + ([(self.other[1], self.other[2], "cyan")] if self.other else [])
        for line_x, line_y, color in lines:
            if line_x:
                plt.plot(line_x, line_y, color=color, marker="braille")
                plt.scatter(line_x, line_y, color=color, marker="●")
        every = [v for _, line_y, _ in lines for v in line_y]
        if every:
            if log_scale:
                plt.yscale("log")
            else:
                top = max(every)
                margin = y_ticks(plt, 0, top if top > 0 else 1.0, height)
        if len(x) > 1 and x[-1] > x[0]:
            ticks, labels = x_ticks(x[0], x[-1], max(width - margin - 2, 4), least_step=1)
            plt.xlim(x[0], x[-1])
            plt.xticks(ticks, labels)
        elif x:
            plt.xticks([x[0]], [f"{x[0]:g}"])
        if selected is not None and len(x) > 1:
            plt.vline(selected, "gray")
        label = f"{title} (log)" if log_scale else title
        plt.title(f"{label}: {missing}" if missing else label)
        if height >= 12:  # a small plot keeps its rows for the lines: the ticks are the steps
            plt.xlabel("step")

    def message(self, text: str) -> None:
        self.series, self.drawn = ([], []), None
        self.plt.clear_figure()
        self.plt.title(text)
        self.refresh()
