"""Headless output of a comparison: the JSON document, the text table, the exit status.

Everything here reads the catalog and the result table column by column: the document of a
100,000-tensor comparison is built from lists, not from an object per tensor, and encoded
with orjson (which writes an undefined figure, NaN here, as null).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import numpy as np
import orjson

from weightscope import __version__
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog, Side, SideSummary
from weightscope.compare.results import STATUSES, ResultTable

EQUAL = {"identical", "value_equal"}
SIDE_FIELDS = ("min", "max", "mean", "std", "absmax", "l2", "nan", "posinf", "neginf", "zeros", "finite")
SIDE_COUNTS = ("nan", "posinf", "neginf", "zeros", "finite")
DIFF_FLOATS = ("max_abs", "mean_abs", "rms", "rel_l2", "snr_db", "cosine", "changed_fraction", "atol", "rtol")
DIFF_COUNTS = ("changed", "mismatched")
UNDEFINED_KEYS = ("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine")


def exit_status(catalog: Catalog, table: ResultTable, close_is_equal: bool = False) -> int:
    """0 when nothing differs, 1 when something does (as diff(1)); 2 is left to open failures.

    A name on one side only that is tied to a tensor both sides hold does not count. With
    `close_is_equal` (a merge check), differences within tolerance are rounding, not change.
    """
    equal = [results.CODE[s] for s in (EQUAL | {"close"} if close_is_equal else EQUAL)]
    differing = np.flatnonzero(~np.isin(table.status, equal))
    one_sided = (results.ONLY_A, results.ONLY_B)
    return int(any(not (table.status[i] in one_sided and catalog.tied_elsewhere(i)) for i in differing.tolist()))


def summary(table: ResultTable) -> dict[str, int]:
    counts = np.bincount(table.status[table.status != results.UNREAD], minlength=len(STATUSES))
    return {status: int(n) for status, n in zip(STATUSES, counts)}


def nonfinite_count(table: ResultTable) -> int:
    """Tensors holding NaN or Inf on either side."""
    v = table.values
    bad = np.zeros(len(table), bool)
    for base in (c.FA, c.FB):
        bad |= np.nan_to_num(v[:, base + c.FNAN] + v[:, base + c.FPOSINF] + v[:, base + c.FNEGINF]) > 0
    return int(bad.sum())


def side_json(side: SideSummary, notes: list[str] | None = None) -> dict:
    return {"path": side.path, "format": side.format, "files": side.files, "tensors": side.tensors,
            "parameters": side.parameters, "bytes": side.nbytes, "notes": side.notes if notes is None else notes,
            "extras": side.extras}


def stored_dtypes(side: Side) -> list[str | None]:
    return [side.quant.get(i, dtype) for i, dtype in enumerate(side.dtype)] if side.quant else side.dtype


def shapes(side: Side) -> list[list[int] | None]:
    return [list(s) if s is not None else None for s in side.shape]


def stats_columns(values: np.ndarray, base: int) -> list[dict | None]:
    """One side's statistics dict per pair (None where the pair lacks that side)."""
    figures = [values[:, base + k].tolist() for k in range(6)]
    counts = [np.nan_to_num(values[:, base + k]).astype(np.int64).tolist() for k in range(6, 11)]
    present = (~np.isnan(values[:, base + c.FINITE])).tolist()
    return [dict(zip(SIDE_FIELDS, row[1:])) if row[0] else None for row in zip(present, *figures, *counts)]


def max_abs_indices(catalog: Catalog, values: np.ndarray) -> list[list[int] | None]:
    """Where the largest |Δ| is, in each tensor's shape (unravelled a shape at a time)."""
    flat = values[:, c.FD + c.MAX_ABS_AT]
    out: list[list[int] | None] = [None] * len(values)
    defined = np.flatnonzero(~np.isnan(flat))
    by_shape: dict[tuple, list[int]] = {}
    for i in defined.tolist():
        by_shape.setdefault(catalog.a.shape[i] or catalog.b.shape[i] or (), []).append(i)
    for shape, members in by_shape.items():
        if not shape:
            for i in members:
                out[i] = []
            continue
        where = np.stack(np.unravel_index(flat[members].astype(np.int64), shape), axis=1).tolist()
        for i, index in zip(members, where):
            out[i] = index
    return out


def undefined_reasons(catalog: Catalog, values: np.ndarray) -> list[dict]:
    """Why each undefined figure of the difference is undefined (shared dicts, one per case)."""
    d = values[:, c.FD:]
    code = (np.isnan(d[:, c.MAX_ABS_AT]).astype(np.int64) | np.isnan(d[:, c.REL_L2]) << 1
            | (np.isnan(d[:, c.SNR_DB]) & ~np.isnan(d[:, c.REL_L2])) << 2 | np.isnan(d[:, c.COSINE]) << 3)
    code = np.where(np.isnan(d[:, c.MAX_ABS]), 16, code)
    code = np.where(catalog.numel == 0, 17, code)
    cases: dict[int, dict] = {}
    for k in set(code.tolist()):
        if k == 17:
            cases[k] = dict.fromkeys((*UNDEFINED_KEYS, "changed_fraction"), "the tensor has no elements")
        elif k == 16:
            cases[k] = dict.fromkeys(UNDEFINED_KEYS, "no position is finite on both sides")
        else:
            why: dict[str, str] = {}
            if k & 1:
                why["max_abs_index"] = "nothing changed"
            if k & 2:
                why["rel_l2"] = why["snr_db"] = "‖A‖ = 0; see max_abs and rms"
            if k & 4:
                why["snr_db"] = "nothing changed"
            if k & 8:
                why["cosine"] = "one side is all zeros"
            cases[k] = why
    return [cases[k] for k in code.tolist()]


def diff_columns(catalog: Catalog, values: np.ndarray) -> list[dict | None]:
    d = values[:, c.FD:]
    floats = [d[:, k].tolist() for k in (c.MAX_ABS, c.MEAN_ABS, c.RMS, c.REL_L2, c.SNR_DB, c.COSINE,
                                         c.CHANGED_FRACTION, c.ATOL, c.RTOL)]
    counts = [np.nan_to_num(d[:, k]).astype(np.int64).tolist() for k in (c.FCHANGED, c.FMISMATCHED)]
    present = (~np.isnan(d[:, c.FCHANGED])).tolist()
    indices, undefined = max_abs_indices(catalog, values), undefined_reasons(catalog, values)
    keys = (*DIFF_FLOATS, *DIFF_COUNTS, "max_abs_index", "undefined")
    return [dict(zip(keys, row[1:])) if row[0] else None
            for row in zip(present, *floats, *counts, indices, undefined)]


def pair_notes(catalog: Catalog, table: ResultTable, i: int) -> list[str]:
    return list(catalog.pair_notes.get(i, ())) + list(table.notes.get(i, ()))


def document(catalog: Catalog, table: ResultTable, histograms: bool = False, spectra: dict | None = None,
             side_notes: tuple[list[str], list[str] | None] | None = None) -> dict:
    """The `diff --json` document of the pairs read (all of them, after a whole scan)."""
    read = np.flatnonzero(table.status != results.UNREAD)
    values = table.values
    columns = {
        "name": catalog.names, "name_a": catalog.a.file_names(), "name_b": catalog.b.file_names(),
        "status": [STATUSES[s] if s >= 0 else None for s in table.status.tolist()],
        "dtype_a": stored_dtypes(catalog.a), "dtype_b": stored_dtypes(catalog.b),
        "shape_a": shapes(catalog.a), "shape_b": shapes(catalog.b),
        "a": stats_columns(values, c.FA), "b": stats_columns(values, c.FB), "diff": diff_columns(catalog, values),
    }
    keys = list(columns)
    tensors = []
    errors, notes = table.errors, table.notes
    for i in read.tolist():
        tensor = {key: columns[key][i] for key in keys}
        tensor["error"] = errors.get(i)
        tensor["notes"] = pair_notes(catalog, table, i) if i in notes or i in catalog.pair_notes else []
        if histograms:
            tensor["histograms"] = {k: asdict(h) for k, h in table.histograms.get(i, {}).items()}
        if spectra is not None:  # `diff --spectrum`: a `spectrum.Spectrum` for changed pairs of 2+ dimensions
            found = spectra.get(i)
            tensor["spectrum"] = asdict(found) if found is not None else None
        tensors.append(tensor)
    notes_a, notes_b = side_notes or (None, None)
    b = catalog.summary_b or catalog.summary_a
    return {"version": __version__, "a": side_json(catalog.summary_a, notes_a), "b": side_json(b, notes_b),
            "notes": catalog.notes, "tensors": tensors, "summary": summary(table)}


def dumps(doc: dict) -> bytes:
    """One JSON document, compact (pipe it through `jq` to read it), NaN written as null."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


# Text


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; with unit 'B', 1234567 -> '1.23 MB'."""
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or suffix == "P":
            text = f"{n:.0f}" if suffix == "" else f"{n:.3g}"
            sep = " " if unit else ""
            return f"{text}{sep}{suffix}{unit}" if unit or suffix else text
        n /= 1000
    return str(n)


def figure(value: float | None, fmt: str = ".3g") -> str:
    """A number for a table cell; 'n/a' where it is undefined (the notes say why)."""
    return "n/a" if value is None or value != value else format(value, fmt)


def arrow(x, y) -> str:
    return str(x) if x == y else f"{x} → {y}"


def header_lines(a: SideSummary, b: SideSummary | None, notes: list[str],
                 side_notes: tuple[list[str], list[str] | None] | None = None) -> list[str]:
    lines = []
    for label, side, own in (("A", a, side_notes and side_notes[0]), ("B", b, side_notes and side_notes[1])):
        if side is None:
            continue
        files = f"{len(side.files)} file{'s' if len(side.files) != 1 else ''}"
        lines.append(f"{label}  {side.path}  {side.format}, {files}, {side.tensors:,} tensors, "
                     f"{human(side.parameters)} parameters, {human(side.nbytes, 'B')}")
        lines += [f"   note: {n}" for n in (own if own is not None else side.notes)]
        lines += [f"   not weights: {x}" for x in side.extras]
    return lines + [f"note: {n}" for n in notes]


def nonfinite_text(nan: int, posinf: int, neginf: int) -> str:
    """'3 NaN, 1 +Inf' ('' when every value is finite)."""
    return ", ".join(f"{n:,} {what}" for n, what in ((nan, "NaN"), (posinf, "+Inf"), (neginf, "-Inf")) if n)


def nonfinite_cells(values: np.ndarray) -> list[str]:
    texts = []
    for base in (c.FA, c.FB):
        counts = np.nan_to_num(values[:, [base + c.FNAN, base + c.FPOSINF, base + c.FNEGINF]]).astype(np.int64)
        texts.append([nonfinite_text(*row) if any(row) else "" for row in counts.tolist()])
    present_a, present_b = (~np.isnan(values[:, c.FA + c.FINITE])).tolist(), (~np.isnan(values[:, c.FB + c.FINITE])).tolist()
    out = []
    for ta, tb, pa, pb in zip(*texts, present_a, present_b):
        if not (ta or tb):
            out.append("")
        else:
            out.append(arrow(ta or "0", tb or "0") if pa and pb else ta or tb)
    return out


def to_text(catalog: Catalog, table: ResultTable, side_notes: tuple[list[str], list[str] | None] | None = None,
            notes: list[str] = ()) -> str:
    lines = header_lines(catalog.summary_a, catalog.summary_b, catalog.notes + list(notes), side_notes)
    read = np.flatnonzero(table.status != results.UNREAD)
    values = table.values
    dtype_a, dtype_b = stored_dtypes(catalog.a), stored_dtypes(catalog.b)
    d = values[:, c.FD:]
    rel, big, snr, cos = (d[:, k].tolist() for k in (c.REL_L2, c.MAX_ABS, c.SNR_DB, c.COSINE))
    has_diff = (~np.isnan(d[:, c.FCHANGED])).tolist()
    nonfinite = nonfinite_cells(values)
    undefined = undefined_reasons(catalog, values)
    rows = []
    for i in read.tolist():
        status = STATUSES[table.status[i]]
        dtype = arrow(dtype_a[i] or "-", dtype_b[i] or "-")
        sa, sb = catalog.a.shape[i], catalog.b.shape[i]
        dims = arrow(list(sa) if sa is not None else "-", list(sb) if sb is not None else "-")
        if has_diff[i]:
            figures = (figure(rel[i]), figure(big[i]), figure(snr[i], ".1f"), figure(cos[i], ".6f"))
            why = [f"{k}: {v}" for k, v in undefined[i].items() if k in ("rel_l2", "max_abs", "cosine")]
        else:
            figures, why = ("",) * 4, []
        if status in EQUAL:
            why = []
        error = table.errors.get(i)
        detail = "; ".join(([error] if error else []) + pair_notes(catalog, table, i) + why)
        rows.append((status, catalog.names[i], dtype, dims, *figures, nonfinite[i], detail))
    if rows:
        lines.append("")
        lines += text_table(("status", "name", "dtype", "shape", "rel_l2", "max|Δ|", "SNR dB", "cosine", "NaN/Inf",
                             ""), rows)
    lines.append("")
    counts = summary(table)
    if len(read):
        line = "summary: " + ", ".join(f"{n:,} {s}" for s, n in counts.items() if n)
        bad = nonfinite_count(table)
        lines.append(line + (f"; {bad:,} with NaN/Inf" if bad else ""))
    else:
        lines.append("summary: no tensors")
    return "\n".join(lines)


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns; the name column (second) gives way first when the terminal is narrow."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    room = shutil.get_terminal_size((200, 24)).columns
    others = sum(widths) - widths[1] - widths[-1] + 2 * (len(header) - 1)
    widths[1] = max(24, min(widths[1], room - others))
    out = []
    for row in (header, *rows):
        cells = [str(x) for x in row]
        if len(cells[1]) > widths[1]:
            cells[1] = "…" + cells[1][-(widths[1] - 1):]
        out.append("  ".join(x.ljust(w) for x, w in zip(cells[:-1], widths)).rstrip() +
                   (f"  {cells[-1]}" if cells[-1] else ""))
    return out


# One checkpoint (`inspect`)


def inspect_json(catalog: Catalog, table: ResultTable) -> dict:
    read = np.flatnonzero(table.status != results.UNREAD)
    stats = stats_columns(table.values, c.FA)
    dtypes, dims = stored_dtypes(catalog.a), shapes(catalog.a)
    tensors = [{"name": catalog.names[i], "dtype": dtypes[i], "shape": dims[i], "tied_to": catalog.a.tied_to.get(i),
                "error": error_of(table, i), "stats": stats[i]} for i in read.tolist()]
    errors = sum(1 for t in tensors if t["error"])
    return {"version": __version__, "checkpoint": side_json(catalog.summary_a), "tensors": tensors,
            "summary": {"tensors": len(tensors), "error": errors, "nonfinite": nonfinite_count(table)}}


def error_of(table: ResultTable, i: int) -> str | None:
    """Why a tensor has no statistics: unreadable, or a type without them (its note says so)."""
    if not np.isnan(table.values[i, c.FA + c.FINITE]):
        return None
    return table.errors.get(i) or next(iter(table.notes.get(i, ())), None)


def inspect_text(catalog: Catalog, table: ResultTable) -> str:
    lines = header_lines(catalog.summary_a, None, [])
    read = np.flatnonzero(table.status != results.UNREAD)
    values = table.values
    dtypes = stored_dtypes(catalog.a)
    nonfinite = nonfinite_cells(values)
    rows = []
    for i in read.tolist():
        cells = [figure(values[i, c.FA + k]) if not np.isnan(values[i, c.FA + c.FINITE]) else ""
                 for k in (c.MIN, c.MAX, c.MEAN, c.STD)]
        tied = catalog.a.tied_to.get(i)
        detail = error_of(table, i) or (f"tied to {tied}" if tied else "")
        shape = catalog.a.shape[i]
        rows.append((dtypes[i] or "-", catalog.names[i], str(list(shape)) if shape is not None else "-", *cells,
                     nonfinite[i], detail))
    if rows:
        lines.append("")
        lines += text_table(("dtype", "name", "shape", "min", "max", "mean", "std", "NaN/Inf", ""), rows)
    errors = sum(1 for i in read.tolist() if error_of(table, i))
    lines += ["", f"summary: {len(read):,} tensors, {nonfinite_count(table):,} with NaN/Inf, {errors:,} unreadable"]
    return "\n".join(lines)
