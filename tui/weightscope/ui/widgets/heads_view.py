"""The heads view: a tensor's change by attention head (or MoE expert) as a bar per unit, and a
layer's attention as a grid of heads × q, k, v, o.

Bars are rel L2 ‖ΔW_h‖ / ‖W_h‖ in percent, coloured by key/value group (query heads that
read one key/value head share a colour), so two heads that changed completely stand out
from a change spread over all of them. A unit whose rel L2 is undefined (A's slice is zero)
draws no bar; the title says how many.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual_plotext import PlotextPlot

from weightscope.analysis.heads import Breakdown, Unavailable, UnitFigures
from weightscope.ui.widgets import badges
from weightscope.ui.widgets.change_map_view import RAMP, shade
from weightscope.ui.widgets.histogram import x_ticks, y_ticks

GROUP_COLOURS = ["cyan", "orange", "green", "magenta"]  # key/value groups, in turn
PART_COLOURS = {"q": "cyan", "k": "orange", "v": "green", "o": "magenta", "expert": "cyan"}


def unit_name(unit) -> str:
    if unit.part == "expert":
        return f"expert {unit.index}"
    if unit.readers:
        first, last = unit.readers[0], unit.readers[-1]
        return f"{unit.part} kv {unit.index} (heads {first}–{last})" if last > first else \
            f"{unit.part} kv {unit.index} (head {first})"
    return f"{unit.part} {unit.index}"


def titles(found: Breakdown, name: str) -> list[str]:
    """The title from longest to shortest: 'q_proj: 1 of 8 heads changed, most q 3 12% · 2 kv groups' …"""
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else name
    moved = sorted((u for u in found.units if u.delta_sq > 0), key=lambda u: -(u.rel_l2 or 0))
    what = "experts" if found.kind == "experts" else "heads"
    counted = f"{len(moved)} of {len(found.units)} {what} changed"
    most = f", most {unit_name(moved[0].unit)} {badges.percent(moved[0].rel_l2)}" if moved else ""
    undefined = sum(1 for u in found.units if u.rel_l2 is None)
    undefined_text = f"; {undefined} n/a (A's slice is zero)" if undefined else ""
    groups = f" · {found.kv_heads} kv groups" if found.kv_heads and found.kv_heads != found.heads else ""
    return [f"{module}: {counted}{most}{undefined_text}{groups}", f"{module}: {counted}{most}{undefined_text}",
            f"{module}: {counted}{most}", f"{counted}{most}", counted]


def title(found: Breakdown, name: str, width: int = 0) -> str:
    """The longest title that fits `width` (plotext drops one that does not); cut short when none does."""
    texts = titles(found, name)
    if width <= 0:
        return texts[0]
    return next((text for text in texts if len(text) <= width), texts[-1][:max(width - 1, 0)] + "…")


def bar_colour(unit, kv_heads: int | None) -> str:
    if unit.part == "expert":
        return PART_COLOURS["expert"]
    if unit.kv_head is not None and kv_heads and kv_heads > 1 and unit.part in ("q", "o"):
        return GROUP_COLOURS[unit.kv_head % len(GROUP_COLOURS)]
    return PART_COLOURS.get(unit.part, "cyan")


class HeadsPlot(PlotextPlot):
    """rel L2 per head (or expert) of the pair shown."""

    drawn: tuple[Breakdown, str] | None = None

    def show(self, found: Breakdown, name: str) -> None:
        self.drawn = (found, name)
        self.refresh()

    def message(self, text: str) -> None:
        self.drawn = None
        self.plt.clear_figure()
        self.plt.title(text)
        self.refresh()

    def render(self):
        if self.drawn is not None:
            self.draw(*self.drawn)
        return super().render()

    def draw(self, found: Breakdown, name: str) -> None:
        plt, (width, height) = self.plt, self.size
        plt.clear_figure()
        units = list(found.units)
        values = [100 * (u.rel_l2 or 0.0) for u in units]
        top = max(values, default=0.0)
        margin = y_ticks(plt, 0, top, height) if top > 0 else 3
        by_colour: dict[str, tuple[list[int], list[float]]] = {}
        for x, (unit, value) in enumerate(zip(units, values)):
            if value <= 0:  # an unchanged head draws no bar (plotext drew a sliver at zero for some)
                continue
            xs, ys = by_colour.setdefault(bar_colour(unit.unit, found.kv_heads), ([], []))
            xs.append(x)
            ys.append(value)
        for colour, (xs, ys) in by_colour.items():
            plt.bar(xs, ys, color=colour, width=0.8)
        ticks, _ = x_ticks(0, max(len(units) - 1, 1), width - margin - 2, least_step=1)
        ticks = [int(t) for t in ticks if 0 <= t < len(units)]
        plt.xticks(ticks, [tick_label(units[t]) for t in ticks])
        plt.xlim(-0.5, len(units) - 0.5)
        plt.title(title(found, name, width - margin - 1))
        plt.xlabel("expert" if found.kind == "experts" else "head (colour: key/value group)" if found.kv_heads
                   and found.kv_heads not in (1, found.heads) else "head")
        plt.ylabel("rel L2 %")


def tick_label(figures: UnitFigures) -> str:
    unit = figures.unit
    return str(unit.index) if unit.part in ("q", "o", "expert") else f"{unit.part}{unit.index}"


def explain(found) -> str:
    """What the heads view says instead of a chart."""
    if isinstance(found, Unavailable):
        return found.why
    return "no heads: not an attention projection or a fused expert tensor"


# A layer's attention: heads × q, k, v, o


def cell(figures: UnitFigures | None, top: float) -> Text:
    if figures is None:
        return Text("    ·  ", "dim")
    rel = figures.rel_l2
    label = f"{badges.percent(rel):>6} " if rel is not None else "   n/a "
    background = shade(rel or 0.0, top)
    ink = "black" if RAMP.index(background) >= 4 else "white"  # legible on the dark end of the ramp too
    style = Style(color=ink, bgcolor=background) if figures.delta_sq > 0 else Style(dim=True)
    return Text(label, style)


def render_grid(path: str, found: dict[str, Breakdown]) -> Text:
    """Heads (rows) × q, k, v, o (columns): each query head's own q and o slices and the k and
    v slices of the key/value head it reads, coloured on one scale; groups of query heads that
    share a key/value head are separated by a rule.

    Args:
        found: role ("q", "k", "v", "o", or "qkv" for a fused projection) → its breakdown.
    """
    parts: dict[str, dict[int, UnitFigures]] = {p: {} for p in "qkvo"}
    heads = kv_heads = 0
    for breakdown in found.values():
        heads, kv_heads = breakdown.heads or heads, breakdown.kv_heads or kv_heads
        for u in breakdown.units:
            parts[u.unit.part][u.unit.index] = u
    top = max((u.rel_l2 or 0.0 for units in parts.values() for u in units.values()), default=0.0)
    group = heads // kv_heads if heads and kv_heads else 1
    text = Text(f"{path.rsplit('.', 1)[-1]} by head: rel L2 of each slice\n", "bold")
    text.append(f"{heads} query heads" + (f", {kv_heads} kv heads (k, v: the one read)"
                                          if kv_heads != heads else "") + "\n", "dim")
    text.append("head  kv      q      k      v      o\n", "bold")
    for h in range(heads):
        if h and group > 1 and h % group == 0:
            text.append("─" * 38 + "\n", "dim")
        kv = h // group
        text.append(f"{h:>4} {kv:>3} ")
        for part in "qkvo":
            text.append_text(cell(parts[part].get(kv if part in "kv" else h), top))
        text.append("\n")
    text.append("rel L2 0 ", "dim")
    for colour in RAMP:
        text.append(" ", Style(bgcolor=colour))
    text.append(f" {badges.percent(top)}", "dim")
    return text
