"""The comparison written to files: JSON (the `diff --json` document) and a Markdown report.

A report made while the scan is still running says so in both files: "partial: k of N
tensors read", and `"complete": false` with the count not read yet in the JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from weightscope.analysis.anatomy import anomalies
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable
from weightscope.report.diff import factors_read, human, many, status_words, stored_dtypes, summary, write_document


def partial_line(catalog: Catalog, table: ResultTable) -> str | None:
    read = table.read
    return None if read == len(catalog) else f"partial: {read:,} of {len(catalog):,} tensors read"


def markdown(catalog: Catalog, table: ResultTable) -> str:
    """A report for humans: the two sides, counts by status, anomalies, every pair that differs."""
    lines = ["# weightscope comparison", ""]
    partial = partial_line(catalog, table)
    if partial:
        lines += [f"**{partial}** (the scan was still running; what follows covers those only)", ""]
    for label, side in (("A", catalog.summary_a), ("B", catalog.summary_b)):
        if side is not None:
            lines.append(f"- **{label}** `{side.path}` — {side.format}, {many(len(side.files), 'file')}, "
                         f"{many(side.tensors, 'tensor')}, {human(side.parameters)} parameters")
    lines += [f"- note: {n}" for n in catalog.notes]
    counts = summary(catalog, table)
    lines += ["", "| status | tensors |", "|---|---:|"]
    lines += [f"| {status} | {n:,} |" for status, n in counts.items() if n]
    factors = factors_read(catalog, table)
    if factors:
        lines.append(f"| LoRA factors (not weights, not counted) | {factors:,} |")
    if partial:
        lines.append(f"| not read yet | {len(catalog) - table.read:,} |")
    found = anomalies(catalog, table)
    if found:
        lines += ["", "## Anomalies", ""]
        lines += [f"- `{x.name}`: {x.reason}" for x in found]
    equal = [results.IDENTICAL, results.VALUE_EQUAL, results.UNREAD]
    differing = np.flatnonzero(~np.isin(table.status, equal) & ~catalog.factor)
    if len(differing):
        dtype_a, dtype_b = stored_dtypes(catalog.a), stored_dtypes(catalog.b)
        lines += ["", "## Tensors that differ", "",
                  "| tensor | status | dtype | shape | rel L2 | max \\|Δ\\| | cosine |", "|---|---|---|---|---:|---:|---:|"]

        def fmt(value: float, spec: str = ".3g") -> str:
            return "" if np.isnan(value) else format(value, spec)

        for i, status in zip(differing.tolist(), status_words(catalog, table, differing)):
            dtype = " → ".join(dict.fromkeys(d or "?" for d in (dtype_a[i], dtype_b[i]) if d is not None))
            dims = " → ".join(dict.fromkeys(str(list(s)) for s in (catalog.a.shape[i], catalog.b.shape[i])
                                            if s is not None))
            d = table.values[i, c.FD:]
            lines.append(f"| `{catalog.names[i]}` | {status} | {dtype} | {dims} | "
                         f"{fmt(d[c.REL_L2])} | {fmt(d[c.MAX_ABS])} | {fmt(d[c.COSINE], '.6f')} |")
    return "\n".join(lines) + "\n"


def export(catalog: Catalog, table: ResultTable, directory: str | Path = ".") -> tuple[Path, Path]:
    """Write `weightscope-<time>.md` and `.json` into `directory`; returns both paths.

    Raises:
        OSError: a file cannot be written.
    """
    stem = Path(directory) / time.strftime("weightscope-%Y%m%d-%H%M%S")
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(catalog, table), encoding="utf-8")
    with open(js, "wb") as out:
        write_document(out.write, catalog, table,
                       after={"complete": table.read == len(catalog), "not_read": len(catalog) - table.read})
    return md, js
