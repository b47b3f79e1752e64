"""The spectrum of a change as a plotext bar chart of its top singular values."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from weightscope.analysis.spectrum import Spectrum


def summary(spectrum: Spectrum) -> str:
    """'effective rank 8.0 · stable rank 1.3 · top 8 hold 99.7% of ‖Δ‖²'."""
    if spectrum.effective_rank is None:
        return "Δ is zero: no spectrum"
    top = min(8, len(spectrum.singular_values))
    share = spectrum.share(top)
    return (f"effective rank {spectrum.effective_rank:.1f} · stable rank {spectrum.stable_rank:.2g} · "
            f"top {top} hold {100 * share:.3g}% of ‖Δ‖² ({spectrum.method})")


class SpectrumPlot(PlotextPlot):
    """σ₁ … σₖ of B − A (from the factors for a LoRA module)."""

    def show(self, spectrum: Spectrum, log_scale: bool) -> None:
        plt = self.plt
        plt.clear_figure()
        values = list(spectrum.singular_values)
        if values:
            plt.plot(list(range(1, len(values) + 1)), values, color="orange", marker="braille")
            plt.scatter(list(range(1, len(values) + 1)), values, color="orange", marker="●")
            if log_scale and min(values) > 0:
                plt.yscale("log")
        plt.title(summary(spectrum))
        plt.xlabel("i")
        plt.ylabel("σᵢ")
        self.refresh()

    def message(self, text: str) -> None:
        self.plt.clear_figure()
        self.plt.title(text)
        self.refresh()
