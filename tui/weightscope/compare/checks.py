"""Expectations for CI after training: what must stay frozen, what must move, no NaN/Inf."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import STATUSES, ResultTable

MOVED = (results.CLOSE, results.CHANGED)


@dataclass(frozen=True)
class Expectations:
    """Globs are matched against a pair's name, A's name and B's name."""

    identical: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    finite: bool = False

    def __bool__(self) -> bool:
        return bool(self.identical or self.changed or self.finite)


def matching(catalog: Catalog, pattern: str) -> list[int]:
    return [i for i, names in enumerate(zip(catalog.names, catalog.a.name, catalog.b.name))
            if any(n is not None and fnmatchcase(n, pattern) for n in names)]


def describe(table: ResultTable, i: int) -> str:
    status = STATUSES[table.status[i]]
    if status == "error":
        return f"error ({table.errors.get(i)})"
    rel = table.values[i, c.FD + c.REL_L2]
    if table.status[i] in MOVED and not np.isnan(rel):
        return f"{status} (rel_l2 {rel:.3g})"
    return status


def nonfinite_text(side) -> str:
    """'3 NaN, 1 +Inf' ('' when every value is finite), of a `SideStats`."""
    parts = [(side.nan, "NaN"), (side.posinf, "+Inf"), (side.neginf, "-Inf")]
    return ", ".join(f"{n:,} {what}" for n, what in parts if n)


def failures(catalog: Catalog, table: ResultTable, expect: Expectations) -> list[str]:
    """One line per expectation that does not hold, naming the tensor and why."""
    lines = []
    checks = [(p, "identical", lambda s: s == results.IDENTICAL) for p in expect.identical] + \
             [(p, "changed", lambda s: s in MOVED) for p in expect.changed]
    for pattern, wanted, holds in checks:
        matched = matching(catalog, pattern)
        if not matched:
            lines.append(f"{pattern}: expected {wanted}, but no tensor matches")
        lines += [f"{catalog.names[i]}: expected {wanted} ({pattern}), is {describe(table, i)}"
                  for i in matched if not holds(table.status[i])]
    if expect.finite:
        values = table.values
        counts = values[:, [base + k for base in (c.FA, c.FB) for k in (c.FNAN, c.FPOSINF, c.FNEGINF)]]
        for i in np.flatnonzero((np.nan_to_num(counts) > 0).any(axis=1)).tolist():
            bad = []
            for side, base in (("A", c.FA), ("B", c.FB)):
                counts = [values[i, base + k] for k in (c.FNAN, c.FPOSINF, c.FNEGINF)]
                if any(n > 0 for n in counts):  # NaN (no such side) compares false
                    what = ", ".join(f"{int(n):,} {w}" for n, w in zip(counts, ("NaN", "+Inf", "-Inf")) if n > 0)
                    bad.append(f"{side} has {what}")
            if bad:
                lines.append(f"{catalog.names[i]}: {'; '.join(bad)}")
    return lines
