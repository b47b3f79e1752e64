"""The comparison written to files: JSON (the `diff --json` document) and a Markdown report.

A report made while the scan is still running says so in both files: "partial: k of N
tensors read", and `"complete": false` with the count not read yet in the JSON.
"""

from __future__ import annotations

import time
from itertools import groupby
from pathlib import Path

import numpy as np

from weightscope.analysis.anatomy import anomalies
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable
from weightscope.report.diff import (factors_read, figure, many, natural_order, nonfinite_cells, nonfinite_count,
                                     parameters, percent, read_in_order, status_words, stored_dtypes, summary,
                                     write_document)


def partial_line(catalog: Catalog, table: ResultTable) -> str | None:
    read = table.read
    return None if read == len(catalog) else f"partial: {read:,} of {many(len(catalog), 'tensor')} read"


def cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar in a name would end the cell


def nonfinite_column(catalog: Catalog, table: ResultTable, rows: np.ndarray) -> list[str]:
    """Each row's NaN/Inf counts: '0' only where every side the pair has was counted, else 'n/a'
    (a tensor without statistics, unreadable or of a type without them, may hold any)."""
    values = table.values[rows]
    counted = ((~catalog.a.present[rows] | ~np.isnan(values[:, c.FA + c.FINITE]))
               & (~catalog.b.present[rows] | ~np.isnan(values[:, c.FB + c.FINITE]))).tolist()
    return [text or ("0" if known else "n/a") for text, known in zip(nonfinite_cells(values), counted)]


def markdown(catalog: Catalog, table: ResultTable, order: np.ndarray | None = None) -> str:
    """A report for humans: the two sides, counts by status, anomalies, every pair that differs
    (in natural order; `order`: `natural_order(catalog)`, when the caller has it already)."""
    order = natural_order(catalog) if order is None else order
    lines = ["# weightscope comparison", ""]
    partial = partial_line(catalog, table)
    if partial:
        lines += [f"**{partial}** (the scan was still running; what follows covers those only)", ""]
    for label, side in (("A", catalog.summary_a), ("B", catalog.summary_b)):
        if side is not None:
            lines.append(f"- **{label}** `{side.path}` — {side.format}, {many(len(side.files), 'file')}, "
                         f"{many(side.tensors, 'tensor')}, {parameters(side.parameters)}")
    lines += [f"- note: {n}" for n in catalog.notes]
    counts = summary(catalog, table)
    lines += ["", "| status | tensors |", "|---|---:|"]
    lines += [f"| {status} | {n:,} |" for status, n in counts.items() if n]
    factors = factors_read(catalog, table)
    if factors:
        lines.append(f"| LoRA factors (not weights, not counted) | {factors:,} |")
    if table.read:  # across the rows above, not a status of its own
        lines.append(f"| with NaN/Inf (among the above) | {nonfinite_count(table):,} |")
    if partial:
        lines.append(f"| not read yet | {len(catalog) - table.read:,} |")
    found = anomalies(catalog, table)
    if found:
        lines += ["", "## Anomalies", ""]
        lines += [f"- `{cell(x.name)}`: {x.reason}" for x in in_order(found, catalog, order)]
    read = read_in_order(catalog, table, order)
    differing = read[~np.isin(table.status[read], [results.IDENTICAL, results.VALUE_EQUAL]) & ~catalog.factor[read]]
    if len(differing):
        dtype_a, dtype_b = stored_dtypes(catalog.a), stored_dtypes(catalog.b)
        lines += ["", "## Tensors that differ", "",
                  "| tensor | status | dtype | shape | rel L2 (%) | max \\|Δ\\| | cosine | NaN/Inf |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        rows = zip(differing.tolist(), status_words(catalog, table, differing),
                   nonfinite_column(catalog, table, differing))
        for i, status, nonfinite in rows:
            dtype = " → ".join(dict.fromkeys(d or "?" for d in (dtype_a[i], dtype_b[i]) if d is not None))
            dims = " → ".join(dict.fromkeys(str(list(s)) for s in (catalog.a.shape[i], catalog.b.shape[i])
                                            if s is not None))
            d = table.values[i, c.FD:].tolist()
            lines.append(f"| `{cell(catalog.names[i])}` | {status} | {dtype} | {dims} | {percent(d[c.REL_L2])} | "
                         f"{figure(d[c.MAX_ABS])} | {figure(d[c.COSINE], '.6f')} | {nonfinite} |")
    return "\n".join(lines) + "\n"


def in_order(found: list, catalog: Catalog, order: np.ndarray) -> list:
    """Anomalies most serious first as `anomalies` lists them, each run of one reason in natural order."""
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    out = []
    for _, run in groupby(found, key=lambda x: x.reason):
        out += sorted(run, key=lambda x: place[catalog.index(x.name)])
    return out


def export(catalog: Catalog, table: ResultTable, directory: str | Path = ".") -> tuple[Path, Path]:
    """Write `weightscope-<time>.md` and `.json` into `directory`; returns both paths.

    Raises:
        OSError: a file cannot be written.
    """
    stem = Path(directory) / time.strftime("weightscope-%Y%m%d-%H%M%S")
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    order = natural_order(catalog)  # made once for both files
    md.write_text(markdown(catalog, table, order), encoding="utf-8")
    with open(js, "wb") as out:
        write_document(out.write, catalog, table, order=order,
                       after={"complete": table.read == len(catalog), "not_read": len(catalog) - table.read})
    return md, js
