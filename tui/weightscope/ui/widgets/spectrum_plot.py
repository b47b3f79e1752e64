"""The spectrum of a change as a plotext bar chart of its top singular values."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from weightscope.analysis.spectrum import Spectrum
from weightscope.ui.widgets.histogram import x_ticks, y_ticks


def summaries(spectrum: Spectrum) -> list[str]:
    """The summary from longest to shortest, each saying both ranks:
    'effective rank 8.0 · stable rank 1.3 · top 8 hold 99.7% of ‖Δ‖² (exact)' … 'eff. rank 8.0 · stable 1.3'."""
    if spectrum.effective_rank is None:
        return ["Δ is zero: no spectrum"]
    top = min(8, len(spectrum.singular_values))
    share = f"top {top} hold {100 * spectrum.share(top):.3g}%"
    ranks = f"effective rank {spectrum.effective_rank:.1f} · stable rank {spectrum.stable_rank:.3g}"
    return [f"{ranks} · {share} of ‖Δ‖² ({spectrum.method})", f"{ranks} · {share}", ranks,
            f"eff. rank {spectrum.effective_rank:.1f} · stable {spectrum.stable_rank:.3g}"]


def summary(spectrum: Spectrum, width: int = 0) -> str:
    """The longest summary that fits `width` cells (plotext drops a title that does not fit),
    cut short when none does; the longest when `width` is not known yet (0 or less)."""
    texts = summaries(spectrum)
    fitting = [text for text in texts if len(text) <= width]
    if width <= 0 or fitting:
        return fitting[0] if fitting else texts[0]
    return texts[-1][:max(width - 1, 0)] + "…"


class SpectrumPlot(PlotextPlot):
    """σ₁ … σₖ of B − A (from the factors for a LoRA module)."""

    drawn: tuple[Spectrum, bool] | None = None
    """The spectrum shown and whether on a log scale; None for a message."""

    def show(self, spectrum: Spectrum, log_scale: bool) -> None:
        self.drawn = (spectrum, log_scale)
        self.refresh()

    def render(self):
        if self.drawn is not None:  # drawn afresh each time: plotext takes the log of the data in place
            self.draw(*self.drawn)
        return super().render()

    def draw(self, spectrum: Spectrum, log_scale: bool) -> None:
        """The plot for the size it has now: the longest summary that fits, whole-number ticks."""
        plt, (width, height) = self.plt, self.size
        plt.clear_figure()
        values = list(spectrum.singular_values)
        index = list(range(1, len(values) + 1))
        margin = 8  # about what plotext's own labels take on the log scale
        if values:
            plt.plot(index, values, color="orange", marker="braille")
            plt.scatter(index, values, color="orange", marker="●")
            if log_scale and min(values) > 0:
                plt.yscale("log")
            elif max(values) > 0:  # from 0: near-equal values must not look like a steep decay
                margin = y_ticks(plt, 0, max(values), height)
        if len(values) > 1:  # ticks at 1, 2, … or 1, 5, 10, …
            ticks, labels = x_ticks(1, len(values), width - margin - 2, least_step=1)
            if ticks and ticks[0] >= 5:
                ticks, labels = [1, *ticks], ["1", *labels]
            plt.xlim(1, len(values))
            plt.xticks(ticks, labels)
        elif values:
            plt.xticks([1], ["1"])
        plt.title(summary(spectrum, width - margin - 1))  # plotext centres the title over the canvas
        plt.xlabel("i")
        plt.ylabel("σᵢ")

    def message(self, text: str) -> None:
        self.drawn = None
        self.plt.clear_figure()
        self.plt.title(text)
        self.refresh()
