"""A training run's tensors as the pair app's name tree, each line ending in a sparkline of
its drift across the steps.

The tree is `DiffTree` (the same `NameTree`, lazy children, keys and guides) with its lines
drawn for a run: the name, a mark where a flag names a tensor of the line, one character
per step of drift from the reference on one log scale shared by every line (`SparkScale`),
and the drift at the selected step. A group's drift adds up its tensors' sums
(√(Σ‖S−R‖²/Σ‖R‖²), as `analysis.runs.groups` does), worked out when its line is drawn.
"""

from __future__ import annotations

import math
import os

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.widgets.tree import TreeNode

from weightscope.analysis.hierarchy import NameTree
from weightscope.analysis.runs import SEVERITIES, RunFlag
from weightscope.compare.run_columns import PENDING, STATUSES
from weightscope.compare.run_results import RunTable, cosine_of, ratio
from weightscope.report.diff import percent
from weightscope.ui.widgets.diff_tree import DiffTree

BARS = "▁▂▃▄▅▆▇█"
PENDING_MARK = "·"  # a step not read yet
UNDEFINED_MARK = " "  # drift undefined there (‖R‖ = 0, absent, another shape, unreadable)
ZERO_MARK = "="  # drift 0: equal to the reference
MAX_SPARK = 24  # characters of sparkline at most; more steps are pooled (largest drift of each run of steps)
FIGURE = 6  # the drift at the selected step
FLAG_STYLE = {"error": "red bold", "warn": "yellow bold", "info": "cyan"}
FLAG_MARK = {"error": "✖", "warn": "⚠", "info": "•"}


def step_labels(points) -> list[str]:
    """Each step's label: its number, or its directory's name where it has none."""
    return [str(p.step) if p.step is not None else os.path.basename(os.path.normpath(p.path)) for p in points[1:]]


def step_axis(points) -> list[float]:
    """Each step's x: its number where every step has one, else its position (1, 2, …)."""
    numbers = [p.step for p in points[1:]]
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        return [float(n) for n in numbers]
    return [float(k) for k in range(1, len(numbers) + 1)]


class NodeFigures:
    """Drift, cosine and update per step of any node of a name tree (a tensor, or a group's
    tensors added up), and which steps are still pending there. Worked out per node when
    asked, kept until `refresh` (new results)."""

    def __init__(self, names: NameTree, table: RunTable):
        self.names, self.table = names, table
        self.refresh()

    def refresh(self) -> None:
        order = self.names.order
        columns = self.table.rollup_columns()
        self.columns = {key: values[order] for key, values in columns.items()}
        self.pending_rows = (self.table.status == PENDING)[order]
        self.statuses = self.table.status[order]
        self._found: dict[int, dict[str, np.ndarray]] = {}
        drift = self.table.drift()
        positive = drift[np.isfinite(drift) & (drift > 0)]
        self.scale = SparkScale(float(positive.min()), float(positive.max())) if len(positive) else SparkScale(0, 0)

    def of(self, node: int) -> dict[str, np.ndarray]:
        found = self._found.get(node)
        if found is None:
            lo, hi = int(self.names.lo[node]), int(self.names.hi[node])
            s = {key: values[lo:hi].sum(axis=0) for key, values in self.columns.items()}
            found = self._found[node] = {
                "drift": ratio(s["dd"], s["rr"]), "cosine": cosine_of(s["rs"], s["rr"], s["ss"]),
                "update": ratio(s["uu"], s["pp"]), "pending": self.pending_rows[lo:hi].any(axis=0),
                "statuses": np.stack([(self.statuses[lo:hi] == code).sum(axis=0) for code in range(len(STATUSES))])}
        return found


class SparkScale:
    """One log scale for every sparkline: the smallest drift above 0 draws ▁, the largest █."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def bar(self, value: float) -> str:
        if self.high <= 0 or self.high <= self.low:
            return BARS[-1]
        height = math.log10(max(value, self.low) / self.low) / math.log10(self.high / self.low)
        return BARS[round(min(1.0, max(0.0, height)) * (len(BARS) - 1))]

    def legend(self) -> str:
        if self.high <= 0:
            return "no drift yet"
        return f"{BARS[0]} {percent(self.low)} … {BARS[-1]} {percent(self.high)} (log)"


def sparkline(drift: np.ndarray, pending: np.ndarray, scale: SparkScale, width: int = MAX_SPARK) -> Text:
    """One character per step (steps pooled by their largest drift where more than `width`):
    a bar on `scale`, `=` for drift 0, blank where undefined, `·` where not read yet."""
    steps = len(drift)
    cells = min(steps, width)
    text = Text()
    for x in range(cells):
        lo, hi = x * steps // cells, max(x * steps // cells + 1, (x + 1) * steps // cells)
        values, waiting = drift[lo:hi], pending[lo:hi]
        defined = values[np.isfinite(values)]
        if waiting.any() and not len(defined):
            text.append(PENDING_MARK, "dim")
        elif not len(defined):
            text.append(UNDEFINED_MARK)
        elif defined.max() <= 0:
            text.append(ZERO_MARK, "green dim")
        else:
            text.append(scale.bar(float(defined.max())), "dim" if waiting.any() else "dark_orange")
    return text


def flag_marks(names: NameTree, flags: list[RunFlag], index: dict[str, int]) -> np.ndarray:
    """Per tensor (catalog index), the most severe flag naming it (an index into SEVERITIES, -1 for none)."""
    marks = np.full(len(names.position), -1, np.int8)
    for flag in flags:
        level = SEVERITIES.index(flag.severity)
        rows = [index[name] for name in flag.tensors if name in index]
        if rows:
            marks[rows] = np.maximum(marks[rows], level)
    return marks


class RunTree(DiffTree):
    """The run's tensor names, a sparkline of drift across the steps on every line."""

    def __init__(self, catalog, names: NameTree, table: RunTable, **kwargs):
        super().__init__(catalog, names, None, single=False, table=None, **kwargs)
        self.run_table = table
        self.figures = NodeFigures(names, table)
        self.marks = np.full(len(catalog), -1, np.int8)  # per tensor: its flag's severity, -1 for none
        self.whole_flags = -1  # the most severe flag of the whole run that names no tensor
        self.selected = table.steps - 1  # the step whose drift the last column shows
        self.verdict = (Text(), Text())

    def set_flags(self, flags: list[RunFlag]) -> None:
        index = {name: i for i, name in enumerate(self.catalog.names)}
        self.marks = flag_marks(self.names, flags, index)
        self.whole_flags = max((SEVERITIES.index(f.severity) for f in flags), default=-1)
        self.refresh_lines()

    def set_run_model(self, names: NameTree, table: RunTable) -> None:
        """Another name tree or table (a filter, or a run with one more checkpoint)."""
        self.run_table = table
        self.figures = NodeFigures(names, table)
        self.selected = min(self.selected, table.steps - 1)
        self.set_model(names, None)

    def refresh_figures(self) -> None:
        """Results came in: every line's figures are worked out again as it is drawn."""
        self.figures.refresh()
        self.refresh_lines()

    def present(self, node: int, side: str) -> bool:
        return self.names.tensors(node) > 0

    def status_of(self, node: int) -> str:
        """The node's most notable status at the selected step (in the pair app's words)."""
        counts = self.figures.of(node)["statuses"][:, self.selected]
        for code in ("error", "shape_mismatch", "removed", "added", "changed", "pending", "value_equal", "identical"):
            if counts[STATUSES.index(code)]:
                return code
        return "absent"

    def mark(self, node: int) -> Text:
        lo, hi = int(self.names.lo[node]), int(self.names.hi[node])
        level = int(self.marks[self.names.order[lo:hi]].max(initial=-1))
        if node == 0:
            level = max(level, self.whole_flags)
        if level < 0:
            return Text(" ")
        severity = SEVERITIES[level]
        return Text(FLAG_MARK[severity], FLAG_STYLE[severity])

    def right_column(self, node: int) -> Text:
        found = self.figures.of(node)
        spark = sparkline(found["drift"], found["pending"], self.figures.scale)
        spark.pad_right(min(self.run_table.steps, MAX_SPARK) - spark.cell_len)
        value = found["drift"][self.selected]
        figure = "…" if found["pending"][self.selected] and not np.isfinite(value) else \
            percent(float(value)) if np.isfinite(value) else "n/a"
        return Text.assemble(" ", self.mark(node), " ", spark, (figure.rjust(FIGURE + 1), "dim"))

    def right_width(self) -> int:
        return 3 + min(self.run_table.steps, MAX_SPARK) + FIGURE + 1

    def name_text(self, line: TreeNode[int], width: int) -> Text:
        node = line.data
        icon = (self.ICON_NODE_EXPANDED if line.is_expanded else self.ICON_NODE) if line.allow_expand else "  "
        text = Text(icon, style="dim")
        text.append(self.names.parts[node])
        pair = int(self.names.pair[node])
        if pair >= 0 and not self.names.is_group(node):
            from weightscope.ui.widgets.diff_tree import describe_tensor

            dtype = self.catalog.dtype[0][pair] or next((d[pair] for d in self.catalog.dtype if d[pair]), None)
            text.append("  ")
            text.append(describe_tensor(dtype, self.catalog.shape[pair]), "dim")
        text.truncate(max(width, 0), overflow="ellipsis", pad=True)
        return text

    def render_label(self, line: TreeNode[int], base_style: Style, style: Style) -> Text:
        node = line.data
        total = self.label_width(line) + self.guides_width(line)
        right = self.right_column(node)
        if line is self.verdict_line:
            left = Text("all tensors", "bold")
            left.truncate(max(total - right.cell_len, 0), overflow="ellipsis", pad=True)
        else:
            left = self.name_text(line, total - self.guides_width(line) - right.cell_len)
        text = Text.assemble(left, right)
        text.stylize(style)
        return text
