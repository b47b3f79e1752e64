"""The help screen on `?`: every key, and what the badges mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from weightscope.ui.widgets import badges

KEYS = [
    ("↑ ↓  j k", "move"),
    ("← →  h l", "collapse / expand (or go to parent / first child)"),
    ("Enter  Space", "expand or collapse"),
    ("n  N", "next / previous tensor that differs"),
    ("/", "filter: a substring, or a glob * ? [ ]; Esc clears"),
    ("o", "overview: layers × modules, sparklines; v: × heads, × experts"),
    ("t", "table of every pair; digits sort by a column"),
    ("a", "next anomaly: NaN/Inf, shape or dtype change, one side only, outlier change"),
    ("e", "export the comparison as Markdown and JSON"),
    ("i", "notes: how each checkpoint was read, how the names were paired"),
    ("v", "detail view: histograms → spectrum (singular values of Δ) → change map (where in the matrix) "
          "→ heads (per head or expert)"),
    ("L", "log scale: histogram counts, singular values"),
    ("c", "copy the tensor name (OSC 52, works over SSH)"),
    ("?", "this help"),
    ("Ctrl+P", "command palette: every action by name"),
    ("q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    """Keys and badges."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keys = Table(box=None, show_header=False, padding=(0, 2))
        for key, what in KEYS:
            keys.add_row(Text(key, "bold"), what)
        legend = Table(box=None, show_header=False, padding=(0, 2))
        for status, (symbol, _, words) in badges.BADGES.items():
            legend.add_row(Text(symbol, badges.style(status)), words)
        with VerticalScroll(id="help"):
            yield Static(Text("weightscope — keys", "bold"))
            yield Static(keys)
            yield Static(Text("\nbadges", "bold"))
            yield Static(legend)
            yield Static(Text("\nThe column on the right: rel L2 = ‖B − A‖ / ‖A‖ for a tensor; "
                              "how many members differ for a group.", "dim"))
