"""How a status looks: a one-cell symbol (readable without colour) and a style."""

from __future__ import annotations

import os

from rich.style import Style

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


def percent(rel: float) -> str:
    """rel_l2 as a short percentage: 0.031 -> '3.1%', 2e-6 -> '0.0002%', 1.5 -> '150%'."""
    if rel == 0:
        return "0%"
    value = rel * 100
    if value >= 10:
        return f"{value:.0f}%"
    return f"{value:.2g}%" if value >= 0.01 else f"{value:.1g}%"
