"""Expectations for CI after training: what must stay frozen, what must move, no NaN/Inf."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from weightscope.compare.scan import PairResult

MOVED = ("close", "changed")


@dataclass(frozen=True)
class Expectations:
    """Globs are matched against a pair's name, A's name and B's name."""

    identical: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    finite: bool = False

    def __bool__(self) -> bool:
        return bool(self.identical or self.changed or self.finite)


def matches(result: PairResult, pattern: str) -> bool:
    names = {result.pair.name} | {i.name for i in (result.pair.a, result.pair.b) if i is not None}
    return any(fnmatchcase(n, pattern) for n in names)


def describe(result: PairResult) -> str:
    if result.status == "error":
        return f"error ({result.error})"
    d = result.diff
    if d is not None and d.rel_l2 is not None and result.status in MOVED:
        return f"{result.status} (rel_l2 {d.rel_l2:.3g})"
    return result.status


def failures(results: list[PairResult], expect: Expectations) -> list[str]:
    """One line per expectation that does not hold, naming the tensor and why."""
    lines = []
    for pattern, wanted, ok in [(p, "identical", lambda r: r.status == "identical") for p in expect.identical] + \
                               [(p, "changed", lambda r: r.status in MOVED) for p in expect.changed]:
        matched = [r for r in results if matches(r, pattern)]
        if not matched:
            lines.append(f"{pattern}: expected {wanted}, but no tensor matches")
        lines += [f"{r.pair.name}: expected {wanted} ({pattern}), is {describe(r)}" for r in matched if not ok(r)]
    if expect.finite:
        for r in results:
            bad = [f"{side} has {nonfinite_text(s)}" for side, s in (("A", r.a), ("B", r.b)) if s and s.nonfinite]
            if bad:
                lines.append(f"{r.pair.name}: {'; '.join(bad)}")
    return lines


def nonfinite_text(side) -> str:
    """'3 NaN, 1 +Inf' ('' when every value is finite)."""
    parts = [(side.nan, "NaN"), (side.posinf, "+Inf"), (side.neginf, "-Inf")]
    return ", ".join(f"{n:,} {what}" for n, what in parts if n)
