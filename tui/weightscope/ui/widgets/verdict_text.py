"""The verdict as the app shows it: on the root line of the tree, and in the detail pane
when the root is selected. Until the scan is done there is no verdict, and both say so."""

from __future__ import annotations

from collections import Counter

from rich.text import Text

MARKS = {"error": ("✖", "bold red"), "warn": ("⚠", "yellow"), "info": ("ℹ", "dim")}
WAITING = "the verdict comes once the scan is done"


def kind_text(verdict) -> Text:
    rank = f" rank {verdict.rank}" if verdict.rank else ""
    return Text.assemble((f"{verdict.kind}{rank}", "bold"), (f" ({verdict.confidence})", "dim"))


def root_texts(verdict, scan_done: bool, failed: str | None) -> tuple[Text, Text]:
    """(what the root line says under A, under B): the kind, and the flags counted by severity."""
    if failed is not None:
        return Text("verdict failed", "red"), Text(failed, "red")
    if verdict is None:
        return Text("verdict: working it out…" if scan_done else "verdict after the scan", "dim"), Text()
    counts = Counter(flag.severity for flag in verdict.flags)
    flags = Text()
    for severity, (mark, style) in MARKS.items():
        if counts[severity]:
            flags.append(f"{mark} {counts[severity]} {severity}  ", style)
    return kind_text(verdict), flags if flags else Text("no flags", "dim")


def pane_text(verdict, scan_done: bool, failed: str | None) -> Text:
    """The verdict in full: kind and summary, the flags (most severe first), the facts."""
    if failed is not None:
        return Text(f"verdict failed: {failed}", "red")
    if verdict is None:
        return Text("verdict: working it out…" if scan_done else f"{WAITING}: it weighs every tensor", "dim")
    text = Text.assemble(("verdict ", "bold"), kind_text(verdict), "\n", verdict.summary)
    for flag in verdict.flags:
        mark, style = MARKS[flag.severity]
        text.append(f"\n{mark} {flag.code}", style)
        text.append(f"  {flag.message}")
    for fact in verdict.facts:
        text.append(f"\n  {fact}", "dim")
    return text
