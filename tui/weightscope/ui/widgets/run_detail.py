"""A run's detail pane: a tensor's or group's figures at the selected step, its flags, and its
drift and update ratio against step."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Static

from weightscope.analysis.runs import RunFlag
from weightscope.compare.run_columns import ABSMAX, SQ, STATUSES
from weightscope.report.diff import human, percent
from weightscope.report.runs import SYMBOL
from weightscope.ui.widgets.detail import aligned
from weightscope.ui.widgets.run_tree import FLAG_STYLE

PLOT_REST = 0.1  # seconds between two lines shown, under which the plots wait for the pane to rest
PLOTS_LOADED = threading.Event()  # the plots' module (plotext) is imported (`load_plots`, in a thread)

WHY = {"removed": "not in this step", "added": "not in the reference", "absent": "in neither",
       "shape_mismatch": "another shape than the reference's", "error": "not readable", "pending": "not read yet"}


def figure(value: float, status: str | None = None, kind: str = "percent", zero_reason: str = "") -> Text:
    """A figure, or n/a with why (never NaN)."""
    if value is None or not math.isfinite(value):
        why = WHY.get(status or "", zero_reason)
        return Text(f"n/a ({why})" if why else "n/a", "dim")
    if kind == "percent":
        return Text(percent(value))
    if kind == "count":
        return Text(f"{int(value):,}")
    return Text(f"{value:.6g}")


class RunDetail(VerticalScroll):
    """The figures at the selected step and the plots across the steps."""

    def compose(self) -> ComposeResult:
        yield Static(id="run-detail-title")
        with Horizontal(id="run-detail-body"):
            with Vertical(id="run-detail-figures"):
                yield Static(id="run-figures")
                yield Static(id="run-flags")
                yield Static(id="run-pair")
            yield Vertical(id="run-plots")

    _plots = None

    @property
    def plots(self):
        """(drift plot, update plot), mounted when first needed (plotext loads after the first screen)."""
        if self._plots is None:
            from weightscope.ui.widgets.step_plot import StepPlot

            self._plots = (StepPlot(id="plot-drift"), StepPlot(id="plot-update"))
            self.query_one("#run-plots").mount(*self._plots)
        return self._plots

    def show(self, title: Text, rows: list[tuple], flags: list[RunFlag], x: list[float], drift: np.ndarray,
             update: np.ndarray, pending: np.ndarray, log_scale: bool, selected: float) -> None:
        self.query_one("#run-detail-title", Static).update(title)
        narrow = self.has_class("narrow")  # the notes column left out: the plots keep their room
        self.query_one("#run-figures", Static).update(aligned([row[:2] for row in rows] if narrow else rows))
        self.query_one("#run-flags", Static).update(flags_text(flags))
        # The plots take most of a frame to draw: they come in the frame after the figures', and
        # while lines follow each other faster than PLOT_REST (a held key), once the pane rests.
        self._plots_asked = (narrow, x, drift, update, pending, log_scale, selected)
        now = time.monotonic()
        rested, self._shown_at = now - self._shown_at > PLOT_REST, now
        if self._plot_timer is not None:
            self._plot_timer.stop()
            self._plot_timer = None
        if rested:
            self.call_after_refresh(self.draw_plots)
        else:
            self._plot_timer = self.set_timer(PLOT_REST, self.draw_plots)

    _plots_asked: tuple | None = None
    _plot_timer: Timer | None = None
    _shown_at = 0.0

    def draw_plots(self) -> None:
        if self._plots_asked is None:  # drawn already
            return
        if not PLOTS_LOADED.is_set():  # still loading: the keys do not wait on it
            self._plot_timer = self.set_timer(PLOT_REST, self.draw_plots)
            return
        narrow, x, drift, update, pending, log_scale, selected = self._plots_asked
        self._plots_asked = None
        waiting = int(pending.sum())
        drift_plot, update_plot = self.plots

        def missing(values) -> str:
            return f"{waiting} step{'s' if waiting != 1 else ''} not read yet" if waiting else \
                "some steps undefined" if (~np.isfinite(values)).any() else ""

        drift, update = [float(v) for v in drift], [float(v) for v in update]
        update_plot.display = not narrow
        if narrow:  # one plot for both: two stacked would leave neither a row for its line
            drift_plot.show("drift (orange), update (cyan)", x, drift, log_scale, selected,
                            missing(np.array(drift + update)), other=("update", update))
            return
        drift_plot.show("drift ‖S−R‖/‖R‖", x, drift, log_scale, selected, missing(np.array(drift)))
        update_plot.show("update ‖S−P‖/‖P‖", x, update, log_scale, selected, missing(np.array(update)))

    def show_pair(self, text: Text) -> None:
        self.query_one("#run-pair", Static).update(text)


def load_plots() -> None:
    """In a thread, once the tree is drawn: the plots' module."""
    import weightscope.ui.widgets.step_plot  # noqa: F401

    PLOTS_LOADED.set()


def flags_text(flags: list[RunFlag]) -> Text:
    if not flags:
        return Text("no flag names it", "dim")
    text = Text("flags\n", "bold")
    for k, flag in enumerate(flags):
        if k:
            text.append("\n")
        text.append(f"{SYMBOL[flag.severity]} {flag.code}", FLAG_STYLE[flag.severity])
        text.append(f" {flag.message}")
    return text


def status_counts(counts: np.ndarray) -> str:
    return ", ".join(f"{int(n):,} {STATUSES[code].replace('_', ' ')}" for code, n in enumerate(counts) if n)


def tensor_rows(table, i: int, t: int, label: str) -> list[tuple]:
    """A tensor's figures at step t (a column of the run's tables), each with n/a and why where undefined."""
    status = STATUSES[int(table.status[i, t])]
    ref_abs, ref_norm = table.reference(ABSMAX)[i], table.reference(SQ)[i]
    gap = table.gaps[t]
    return [
        ("step", Text(label, "bold"), Text(status.replace("_", " "), "dim")),
        ("drift", figure(table.drift()[i, t], status, zero_reason="‖R‖ = 0"), Text("‖S−R‖/‖R‖", "dim")),
        ("cosine", figure(table.cosine()[i, t], status, "plain", "a side all zeros"), Text("to the reference", "dim")),
        ("update", figure(table.update()[i, t], status, zero_reason="no comparable predecessor"),
         Text("‖S−P‖/‖P‖", "dim")),
        ("update/step", figure(table.update_per_step()[i, t], status,
                               zero_reason="step numbers unknown" if not math.isfinite(gap) else "no predecessor"),
         Text(f"over {gap:g} steps" if math.isfinite(gap) else "", "dim")),
        ("absmax", figure(table.absmax()[i, t], status, "plain", "no finite value"),
         Text(f"reference {ref_abs:.6g}" if math.isfinite(ref_abs) else "", "dim")),
        ("norm", figure(table.norm()[i, t], status, "plain", "no finite value"),
         Text(f"reference {ref_norm:.6g}" if math.isfinite(ref_norm) else "", "dim")),
        ("NaN/Inf", Text(f"{int(table.nonfinite()[i, t]):,}"), Text("")),
    ]


def group_rows(found: dict, t: int, label: str, tensors: int, parameters: int) -> list[tuple]:
    pending = bool(found["pending"][t])
    reason = "not read yet" if pending else "no tensor defines it"
    return [
        ("step", Text(label, "bold"), Text(f"{tensors:,} tensors, {human(parameters)} parameters", "dim")),
        ("drift", figure(found["drift"][t], zero_reason=reason), Text("√(Σ‖S−R‖²/Σ‖R‖²)", "dim")),
        ("cosine", figure(found["cosine"][t], kind="plain", zero_reason=reason), Text("ΣR·S/√(ΣR²ΣS²)", "dim")),
        ("update", figure(found["update"][t], zero_reason=reason), Text("√(Σ‖S−P‖²/Σ‖P‖²)", "dim")),
        ("tensors", Text(status_counts(found["statuses"][:, t]) or "none"), Text("")),
    ]
