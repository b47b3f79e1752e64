"""The change map: RMS of |B − A| per block of the matrix, two blocks per character cell.

Each character is an upper half block "▀" whose foreground is the upper block's colour and
whose background the lower one's, so a pane of h lines shows 2h block rows. Row labels give
the matrix rows each line covers; NaN/Inf blocks are marked in red.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from weightscope.analysis.change_map import ChangeMap

RAMP = ["#0b1020", "#1d3557", "#1f6f8b", "#2a9d8f", "#8ab17d", "#e9c46a", "#f4a261", "#e76f51", "#d62828"]
NONFINITE = "#ff00ff"
ADDED = "#8d8d8d"  # a resized pair's part only one side has: no Δ there
BOUNDARY = "#ffffff"
LABEL_WIDTH = 13


def shade(value: float, top: float) -> str:
    """A colour for value/top; exactly zero stays darkest, any change is at least one step up."""
    if top <= 0 or value <= 0:
        return RAMP[0]
    return RAMP[max(1, min(len(RAMP) - 1, int(value / top * (len(RAMP) - 1) + 0.999)))]


def render_map(cmap: ChangeMap, title: str) -> Text:
    """The map as text: a title, one line per two block rows, and a legend. Of a resized pair,
    the cells only one side has are hatched (░ where a whole character is), and a rule
    (a line of ─, or a column of │) marks where the common part ends."""
    rms, bad, top = cmap.rms, cmap.nonfinite, cmap.max_rms
    rows, cols = rms.shape
    added = cmap.fully_added()
    along, edge = cmap.boundary or ("", -1)
    rule_col = edge if along == "cols" else -1
    rule_row = edge + edge % 2 if along == "rows" else -1  # before the first line wholly added

    def colour(i: int, j: int) -> str:
        return RAMP[0] if i >= rows else ADDED if added[i, j] else NONFINITE if bad[i, j] else shade(rms[i, j], top)

    text = Text(title, "bold")
    if cmap.added is not None:  # (the legend below is full already)
        text.append("  ░", Style(color=ADDED))
        text.append(f" only in {cmap.added_in}", "dim")
    text.append("\n")
    text.append(" " * LABEL_WIDTH + f"cols 0…{cmap.shape[1] - 1}, {cmap.shape[1] / cols:.3g} per cell\n", "dim")
    for i in range(0, rows, 2):
        if i == rule_row:
            text.append(f"only in {cmap.added_in}".rjust(LABEL_WIDTH - 1) + " ", "dim")
            text.append("─" * (cols + (rule_col >= 0)) + "\n", BOUNDARY)
        start = cmap.rows_of(i)[0]
        stop = cmap.rows_of(min(i + 1, rows - 1))[1]
        text.append(f"{start}–{stop - 1}".rjust(LABEL_WIDTH - 1)[:LABEL_WIDTH - 1] + " ", "dim")
        for j in range(cols):
            if j == rule_col:
                text.append("│", BOUNDARY)
            if added[i, j] and (i + 1 >= rows or added[i + 1, j]):
                text.append("░", Style(color=ADDED, bgcolor=RAMP[0]))
            else:
                text.append("▀", Style(color=colour(i, j), bgcolor=colour(i + 1, j)))
        text.append("\n")
    text.append(" " * LABEL_WIDTH + "RMS |Δ| 0 ", "dim")
    for ramp in RAMP:
        text.append(" ", Style(bgcolor=ramp))
    text.append(f" {top:.3g}   ", "dim")
    text.append(" ", Style(bgcolor=NONFINITE))
    text.append(" NaN/Inf", "dim")
    return text


class ChangeMapView(Static):
    """Where inside the matrix the change sits."""

    def show(self, cmap: ChangeMap, name: str) -> None:
        title = f"where {name.rsplit('.', 2)[-2] if '.' in name else name} changed: {cmap.shape[0]}×{cmap.shape[1]}"
        self.update(render_map(cmap, title))



def grid_size(width: int, height: int) -> tuple[int, int]:
    """The block rows and columns a map fits into a pane of this size (two block rows per line)."""
    return 2 * max(2, height - 3), max(8, width - LABEL_WIDTH - 1)
