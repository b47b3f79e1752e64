"""Headless output of a training run: the JSON document, the text table of groups × steps, the
exit status. Figures undefined at a step are null in JSON and n/a in text, never NaN."""

from __future__ import annotations

import os

import numpy as np

from weightscope import __version__
from weightscope.analysis.runs import SEVERITIES, Groups, RunFlag
from weightscope.compare.run_columns import ABSMAX, IDENTICAL, NONFINITE, SQ, STATUSES, VALUE_EQUAL
from weightscope.compare.run_plan import RunCatalog
from weightscope.compare.run_results import RunTable
from weightscope.report.diff import TENSORS_AT_ONCE, human, percent, side_json, write_json

SYMBOL = {"error": "✖", "warn": "⚠", "info": "·"}


def exit_status(table: RunTable) -> int:
    """0 when every step equals the reference (identical or value_equal) in every tensor, 1 otherwise."""
    return int(bool((~np.isin(table.status, (IDENTICAL, VALUE_EQUAL))).any()))


def step_label(catalog: RunCatalog, k: int) -> str:
    point = catalog.points[k]
    return str(point.step) if point.step is not None else os.path.basename(os.path.normpath(point.path))


def summary(catalog: RunCatalog, table: RunTable, flags: list[RunFlag]) -> dict:
    counts = {status: np.count_nonzero(table.status == code, axis=0).tolist() for code, status in enumerate(STATUSES)
              if status != "pending" and (table.status == code).any()}
    return {"tensors": len(catalog), "steps": table.steps, "statuses": counts,
            "flags": {severity: sum(f.severity == severity for f in flags) for severity in reversed(SEVERITIES)}}


def write_document(write, catalog: RunCatalog, table: RunTable, groups: Groups, flags: list[RunFlag]) -> None:
    """The `diff --json` document of a run (see the README), handed to `write` a piece at a time."""
    head = {"version": __version__, "reference": side_json(catalog.summaries[0]) | {"step": catalog.points[0].step},
            "steps": [{"step": point.step, "path": point.path, "side": side_json(side)}
                      for point, side in zip(catalog.points[1:], catalog.summaries[1:])],
            "notes": list(catalog.notes)}
    columns = {"drift": table.drift(), "cosine": table.cosine(), "update": table.update(),
               "update_per_step": table.update_per_step(), "absmax": table.absmax(), "norm": table.norm()}
    nonfinite = table.nonfinite()
    words = np.array(STATUSES, object)

    def entries(lo: int, hi: int) -> list[dict]:
        values = {key: column[lo:hi].tolist() for key, column in columns.items()}  # NaN: written as null
        status = words[table.status[lo:hi]].tolist()
        counts = nonfinite[lo:hi].tolist()
        out = []
        for j, i in enumerate(range(lo, hi)):
            entry = {"name": catalog.names[i], "status": status[j]}
            entry |= {key: values[key][j] for key in columns}
            entry["nonfinite"] = counts[j]
            errors = [f"{step_label(catalog, t)}: {table.errors[(i, t)]}" for t in range(1, table.steps + 1)
                      if (i, t) in table.errors]
            if errors:
                entry["errors"] = errors
            out.append(entry)
        return out

    reference = {"absmax": table.reference(ABSMAX).tolist(), "norm": table.reference(SQ).tolist(),
                 "nonfinite": np.nan_to_num(table.reference(NONFINITE)).astype(np.int64).tolist()}
    pieces = (entries(lo, min(lo + TENSORS_AT_ONCE, len(catalog))) for lo in range(0, len(catalog), TENSORS_AT_ONCE))
    write_json(write, head, "tensors", pieces, lambda: {
        "reference_figures": {"name": list(catalog.names)} | reference,
        "groups": [{"name": name, "drift": groups.drift[g].tolist(), "cosine": groups.cosine[g].tolist(),
                    "update": groups.update[g].tolist()} for g, name in enumerate(groups.labels)],
        "flags": [flag.json() for flag in flags], "summary": summary(catalog, table, flags)})


def text_lines(catalog: RunCatalog, table: RunTable, groups: Groups, flags: list[RunFlag]):
    """The reference and steps, drift from the reference per group and step (in percent), then the flags."""
    for k, (point, side) in enumerate(zip(catalog.points, catalog.summaries)):
        name = "reference" if k == 0 else step_label(catalog, k)
        yield f"{name}  {point.path}  {side.format}, {side.tensors:,} tensors, {human(side.nbytes, 'B')}"
    yield from (f"note: {note}" for note in catalog.notes)
    yield ""
    yield "drift from the reference ‖S − R‖/‖R‖ by group and step; last line: the update ‖S − P‖/‖P‖ of all tensors"
    header = ["group", *(step_label(catalog, k) for k in range(1, len(catalog.points)))]
    rows = [[name, *map(percent, row)] for name, row in zip(groups.labels, groups.drift.tolist())]
    rows.append(["(update)", *map(percent, groups.update[0].tolist())])
    widths = [max(len(row[j]) for row in [header, *rows]) for j in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:]))])
    yield ""
    if not flags:
        yield "flags: none"
    for flag in flags:
        yield f"{SYMBOL[flag.severity]} {flag.severity} {flag.code}: {flag.message}"
