"""How a status looks: a one-cell symbol (readable without colour) and a style."""

from __future__ import annotations

import os

from rich.style import Style

from weightscope.report.diff import percent  # noqa: F401  (rel L2 as every view shows it)

# With NO_COLOR, Textual draws in greys, where dim text all but vanishes: the symbols carry
# the meaning, drawn plain or bold.
NO_COLOR = bool(os.environ.get("NO_COLOR"))
NOTABLE = {"changed", "dtype", "shape_mismatch", "only_a", "only_b", "nonfinite", "error"}

BADGES: dict[str, tuple[str, str, str]] = {
    # status: (symbol, style, words)
    "identical": ("=", "green dim", "identical"),
    "value_equal": ("≈", "green", "equal values, other dtype"),
    "pending": ("·", "dim", "not read yet"),
    "read": ("•", "green", "read; every value finite"),
    "close": ("~", "yellow", "changed within tolerance"),
    "changed": ("≠", "dark_orange bold", "changed"),
    "dtype": ("⇣", "magenta", "dtype changed"),
    "shape_mismatch": ("⇔", "magenta bold", "shape changed"),
    "only_a": ("◀", "blue bold", "only in A"),
    "only_b": ("▶", "blue bold", "only in B"),
    "nonfinite": ("!", "red bold", "NaN or Inf"),
    "error": ("✗", "red bold", "unreadable"),
    "factor": ("ƒ", "cyan dim", "LoRA factor: not a weight, not counted"),
}


def symbol(status: str) -> str:
    return BADGES[status][0]


def style(status: str) -> Style:
    if NO_COLOR:
        return Style(bold=status in NOTABLE)
    return Style.parse(BADGES[status][1])


def words(status: str) -> str:
    return BADGES[status][2]


