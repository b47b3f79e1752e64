"""Headless output of a comparison: the JSON document, the text table, the exit status.

Everything here reads the catalog and the result table column by column: the document of a
100,000-tensor comparison is built from lists a slice of tensors at a time, and encoded with
orjson as it goes.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict

import numpy as np
import orjson

from weightscope import __version__
from weightscope.analysis import hierarchy
from weightscope.compare import columns as c
from weightscope.compare import results
from weightscope.compare.catalog import Catalog, Side, SideSummary
from weightscope.compare.results import STATUSES, ResultTable

EQUAL = {"identical", "value_equal"}
FACTOR = "factor"  # a LoRA adapter's own parameter, shown beside the weights
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
    differing = np.flatnonzero(~np.isin(table.status, equal) & ~catalog.factor)  # a LoRA factor is no difference
    one_sided = (results.ONLY_A, results.ONLY_B)
    return int(any(not (table.status[i] in one_sided and catalog.tied_elsewhere(i)) for i in differing.tolist()))


def summary(catalog: Catalog, table: ResultTable) -> dict[str, int]:
    """The model weights read, by status (a LoRA adapter's factors are not weights: see `factors_read`)."""
    counts = np.bincount(table.status[(table.status != results.UNREAD) & ~catalog.factor], minlength=len(STATUSES))
    return {status: int(n) for status, n in zip(STATUSES, counts)}


def factors_read(catalog: Catalog, table: ResultTable) -> int:
    return int((catalog.factor & (table.status != results.UNREAD)).sum())


def status_words(catalog: Catalog, table: ResultTable, index: np.ndarray) -> list[str]:
    """Each pair's status as `diff` prints it: the scan's, or "factor" for a LoRA adapter's own parameter."""
    return [FACTOR if factor else STATUSES[s] for s, factor in zip(table.status[index].tolist(),
                                                                   catalog.factor[index].tolist())]


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


def stats_columns(values: np.ndarray, base: int) -> list[dict | None]:
    """One side's statistics dict per pair (None where the pair lacks that side)."""
    figures = [values[:, base + k].tolist() for k in range(6)]
    counts = [np.nan_to_num(values[:, base + k]).astype(np.int64).tolist() for k in range(6, 11)]
    present = (~np.isnan(values[:, base + c.FINITE])).tolist()
    return [dict(zip(SIDE_FIELDS, row[1:])) if row[0] else None for row in zip(present, *figures, *counts)]


def max_abs_indices(catalog: Catalog | None, values: np.ndarray, rows: list[int],
                    shapes: list[tuple[int, ...]] | None = None) -> list[list[int] | None]:
    """Where the largest |Δ| is, in each tensor's shape (unravelled a shape at a time).

    Args:
        values: the result table's rows `rows`.
        shapes: the shapes the figures are of, where not the pairs' own (a resized pair's common part).
    """
    flat = values[:, c.FD + c.MAX_ABS_AT]
    out: list[list[int] | None] = [None] * len(values)
    defined = np.flatnonzero(~np.isnan(flat))
    by_shape: dict[tuple, list[int]] = {}
    for j in defined.tolist():
        i = rows[j]
        shape = shapes[j] if shapes is not None else catalog.a.shape[i] or catalog.b.shape[i] or ()
        by_shape.setdefault(shape, []).append(j)
    for shape, members in by_shape.items():
        if not shape:
            for j in members:
                out[j] = []
            continue
        where = np.stack(np.unravel_index(flat[members].astype(np.int64), shape), axis=1).tolist()
        for j, index in zip(members, where):
            out[j] = index
    return out


def undefined_reasons(numel: np.ndarray, values: np.ndarray) -> list[dict]:
    """Why each undefined figure of the difference is undefined (shared dicts, one per case).

    Args:
        numel, values: of the same pairs.
    """
    d = values[:, c.FD:]
    code = (np.isnan(d[:, c.MAX_ABS_AT]).astype(np.int64) | np.isnan(d[:, c.REL_L2]) << 1
            | (np.isnan(d[:, c.SNR_DB]) & ~np.isnan(d[:, c.REL_L2])) << 2 | np.isnan(d[:, c.COSINE]) << 3)
    code = np.where(np.isnan(d[:, c.MAX_ABS]), 16, code)
    code = np.where(numel == 0, 17, code)
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


def diff_columns(catalog: Catalog | None, values: np.ndarray, rows: list[int],
                 shapes: list[tuple[int, ...]] | None = None) -> list[dict | None]:
    """The difference's dict per pair of `rows` (None where there is none); `values`: their rows;
    `shapes`: the shapes the figures are of, where not the pairs' own."""
    d = values[:, c.FD:]
    floats = [d[:, k].tolist() for k in (c.MAX_ABS, c.MEAN_ABS, c.RMS, c.REL_L2, c.SNR_DB, c.COSINE,
                                         c.CHANGED_FRACTION, c.ATOL, c.RTOL)]
    counts = [np.nan_to_num(d[:, k]).astype(np.int64).tolist() for k in (c.FCHANGED, c.FMISMATCHED)]
    present = (~np.isnan(d[:, c.FCHANGED])).tolist()
    indices = max_abs_indices(catalog, values, rows, shapes)
    numel = catalog.numel[rows] if shapes is None else np.array([math.prod(shape) for shape in shapes])
    undefined = undefined_reasons(numel, values)
    keys = (*DIFF_FLOATS, *DIFF_COUNTS, "max_abs_index", "undefined")
    return [dict(zip(keys, row[1:])) if row[0] else None
            for row in zip(present, *floats, *counts, indices, undefined)]


def pair_notes(catalog: Catalog, table: ResultTable, i: int) -> list[str]:
    return list(catalog.pair_notes.get(i, ())) + list(table.notes.get(i, ()))


TENSORS_AT_ONCE = 4096  # tensors encoded per call: a document is never whole in memory


def write_json(write, head: dict, listed: str, pieces, tail) -> None:
    """One JSON object on one line, handed to `write` a piece at a time: `head`'s keys, then
    `listed`, a list made of the lists `pieces` yields, then the keys of the dict `tail()`
    returns once they are written. orjson encodes it, and writes an undefined figure (NaN
    here) as null."""
    write(orjson.dumps(head)[:-1] + b',"' + listed.encode() + b'":[')
    first = True
    for piece in pieces:
        if piece:
            write((b"" if first else b",") + orjson.dumps(piece, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
            first = False
    write(b"]," + orjson.dumps(tail())[1:] + b"\n")


def natural_order(catalog: Catalog) -> np.ndarray:
    """Every pair in the order the app's tree shows them: digits as numbers (`h.2` before
    `h.10`), a group's tensors together (`h.0.ln_1.bias` before `h.1.*`). The tree sorts with
    array operations, so 100,000 names cost no Python sort key each."""
    return hierarchy.build(catalog).order


def read_in_order(catalog: Catalog, table: ResultTable, order: np.ndarray | None = None) -> np.ndarray:
    """The pairs read, in natural order (`order`: `natural_order`'s, when already made)."""
    order = natural_order(catalog) if order is None else order
    return order[table.status[order] != results.UNREAD]


def slices(catalog: Catalog, table: ResultTable, order: np.ndarray | None = None):
    """The pairs read, in natural order, `TENSORS_AT_ONCE` at a time."""
    read = read_in_order(catalog, table, order)
    return (read[start:start + TENSORS_AT_ONCE] for start in range(0, len(read), TENSORS_AT_ONCE))


def write_document(write, catalog: Catalog, table: ResultTable, histograms: bool = False,
                   spectra: dict | None = None, side_notes: tuple[list[str], list[str] | None] | None = None,
                   notes: list[str] = (), after: dict | None = None, order: np.ndarray | None = None,
                   heads: tuple | None = None, verdict=None) -> None:
    """The `diff --json` document of the pairs read (all of them, after a whole scan), in
    natural order.

    Args:
        write: takes each piece of the document (bytes), which ends with a newline.
        notes: added to the catalog's notes (the scan's plan notes).
        after: keys that follow `summary` (an export's completeness).
        order: `natural_order(catalog)`, when the caller has it already.
        heads: `diff --heads`: (analysis.heads.Known, {index: breakdown}).
        verdict: the comparison's `analysis.verdict.Verdict`, when made.
    """
    notes_a, notes_b = side_notes or (None, None)
    b = catalog.summary_b or catalog.summary_a
    head = {"version": __version__, "a": side_json(catalog.summary_a, notes_a), "b": side_json(b, notes_b),
            "notes": list(catalog.notes) + list(notes)}
    if verdict is not None:
        head["verdict"] = verdict.json()
    if heads is not None:
        from weightscope.report.heads import head_counts_json

        head["head_counts"] = head_counts_json(heads[0])
    columns = {"name": catalog.names, "name_a": catalog.a.file_names(), "name_b": catalog.b.file_names(),
               "dtype_a": stored_dtypes(catalog.a),
               "dtype_b": stored_dtypes(catalog.b), "shape_a": catalog.a.shape, "shape_b": catalog.b.shape}
    pieces = (tensor_entries(catalog, table, columns, rows, histograms, spectra, heads)
              for rows in slices(catalog, table, order))
    write_json(write, head, "tensors", pieces,
               lambda: {"summary": summary(catalog, table), "lora_factors": factors_read(catalog, table)} | (after or {}))


def tensor_entries(catalog: Catalog, table: ResultTable, columns: dict[str, list], rows: np.ndarray,
                   histograms: bool, spectra: dict | None, heads: tuple | None = None) -> list[dict]:
    """The `tensors` entries of the pairs `rows`."""
    index = rows.tolist()
    values = table.values[rows]
    stats_a, stats_b, diff = stats_columns(values, c.FA), stats_columns(values, c.FB), diff_columns(catalog, values, index)
    errors, notes = table.errors, table.notes
    out = []
    words = status_words(catalog, table, rows)
    for j, i in enumerate(index):
        tensor = {key: column[i] for key, column in columns.items()}
        tensor["status"] = words[j]
        tensor["a"], tensor["b"], tensor["diff"] = stats_a[j], stats_b[j], diff[j]
        tensor["error"] = errors.get(i)
        tensor["notes"] = pair_notes(catalog, table, i) if i in notes or i in catalog.pair_notes else []
        if histograms:
            tensor["histograms"] = {k: asdict(h) for k, h in table.histograms.get(i, {}).items()}
        if spectra is not None:  # `diff --spectrum`: a `spectrum.Spectrum` for changed pairs of 2+ dimensions
            found = spectra.get(i)
            tensor["spectrum"] = asdict(found) if found is not None else None
        if i in table.resized:  # resized in one dimension: its common part and its added rows
            tensor |= resized_fields(table.resized[i])
        if heads is not None:  # `diff --heads`: per head of attention tensors, per expert of fused expert tensors
            from weightscope.report.heads import tensor_fields

            fields, note = tensor_fields(heads[1].get(i), heads[0])
            tensor |= fields
            if note:
                tensor["notes"] = [*tensor["notes"], note]
        out.append(tensor)
    return out


def resized_fields(found) -> dict:
    """A resized pair's "overlap" (the common part's figures, as a pair's) and "added" (the audit)."""
    values = (found.values if found.values is not None else np.full(c.FIGURES, np.nan))[None]
    diff = diff_columns(None, values, [0], [found.shape])[0] if found.values is not None else None
    overlap = {"shape": list(found.shape), "status": found.status, "error": found.error,
               "a": stats_columns(values, c.FA)[0], "b": stats_columns(values, c.FB)[0], "diff": diff}
    added = found.added
    return {"overlap": overlap, "added": None if added is None else asdict(added)}


def resized_gist(found) -> str:
    """A resized pair in a few words: 'common [32000, 8] identical; 8 rows added in B: mean of old rows'."""
    common = f"common {shape_text(found.shape)} {found.status}"
    if found.error:
        return f"{common}: {found.error}"
    if found.status in ("close", "changed"):
        common += f" (rel L2 {percent(found.values[c.FD + c.REL_L2])})"
    added = found.added
    return f"{common}; {slices_text(added, added.count)} {where_added(added)}: {added.init}"


def slice_unit(added) -> str:
    """What a slice along the resized dimension is called: a row, a column, a value (of a vector), a slice."""
    ndim = len(added.shape)
    return "value" if ndim == 1 else "row" if added.dim == 0 else "column" if ndim == 2 else "slice"


def slices_text(added, n: int) -> str:
    """n slices along the resized dimension, by their name: '8 rows', '1 column', '2 slices along dim 2'."""
    unit = slice_unit(added)
    return f"{many(n, unit)}{f' along dim {added.dim}' if unit == 'slice' else ''}"


def where_added(added) -> str:
    return "added in B" if added.side == "b" else "only in A"


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


def many(n: int, noun: str) -> str:
    """A count with its noun: '1 tensor', '96,200 tensors'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def figure(value: float | None, fmt: str = ".3g") -> str:
    """A number for a table cell; 'n/a' where it is undefined (the notes say why)."""
    return "n/a" if value is None or value != value else format(value, fmt)


def percent(rel: float | None) -> str:
    """rel L2 as every view shows it (the app, the export): 0.031 -> '3.1%', 2e-6 -> '0.0002%',
    1.5 -> '150%'; 'n/a' where it is undefined."""
    if rel is None or rel != rel:
        return "n/a"
    if rel == 0:
        return "0%"
    value = rel * 100
    if value >= 10:
        return f"{value:.0f}%"
    return f"{value:.2g}%" if value >= 0.01 else f"{value:.1g}%"


def parameters(n: int) -> str:
    """'1.23M parameters', '1 parameter'."""
    return f"{human(n)} parameter{'' if n == 1 else 's'}"


def arrow(x, y) -> str:
    return str(x) if x == y else f"{x} → {y}"


def header_lines(a: SideSummary, b: SideSummary | None, notes: list[str],
                 side_notes: tuple[list[str], list[str] | None] | None = None) -> list[str]:
    lines = []
    for label, side, own in (("A", a, side_notes and side_notes[0]), ("B", b, side_notes and side_notes[1])):
        if side is None:
            continue
        lines.append(f"{label}  {side.path}  {side.format}, {many(len(side.files), 'file')}, "
                     f"{many(side.tensors, 'tensor')}, {parameters(side.parameters)}, {human(side.nbytes, 'B')}")
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


def text_lines(catalog: Catalog, table: ResultTable, side_notes: tuple[list[str], list[str] | None] | None = None,
               notes: list[str] = (), heads: tuple | None = None):
    """The text table of the pairs read in natural order, a line at a time, its cells made a
    column at a time; with `heads` (`diff --heads`), the heads and experts section after it."""
    yield from header_lines(catalog.summary_a, catalog.summary_b, catalog.notes + list(notes), side_notes)
    read = read_in_order(catalog, table)
    index = read.tolist()
    values = table.values[read]
    d = values[:, c.FD:]
    has_diff = (~np.isnan(d[:, c.FCHANGED])).tolist()

    def figures(k: int, fmt: str = ".3g") -> list[str]:
        return [figure(v, fmt) if shown else "" for v, shown in zip(d[:, k].tolist(), has_diff)]

    dtype_a, dtype_b = stored_dtypes(catalog.a), stored_dtypes(catalog.b)
    status = status_words(catalog, table, read)
    columns = [status, [catalog.names[i] for i in index],
               [arrow(dtype_a[i] or "-", dtype_b[i] or "-") for i in index],
               [arrow(shape_text(catalog.a.shape[i]), shape_text(catalog.b.shape[i])) for i in index],
               figures(c.REL_L2), figures(c.MAX_ABS), figures(c.SNR_DB, ".1f"), figures(c.COSINE, ".6f"),
               nonfinite_cells(values), details(catalog, table, index, values, has_diff, status)]
    if index:
        yield ""
        yield from text_table(("status", "name", "dtype", "shape", "rel_l2", "max|Δ|", "SNR dB", "cosine", "NaN/Inf",
                               ""), columns)
    yield ""
    if len(read):
        line = "summary: " + ", ".join(f"{n:,} {s}" for s, n in summary(catalog, table).items() if n)
        bad, factors = nonfinite_count(table), factors_read(catalog, table)
        yield (line + (f"; {bad:,} with NaN/Inf" if bad else "")
               + (f"; {many(factors, 'LoRA factor')} beside them, not counted" if factors else ""))
    else:
        yield "summary: no tensors"
    if heads is not None:
        from weightscope.report import heads as inside

        yield from inside.text_lines(catalog, table, *heads)


SHAPES: dict[tuple[int, ...] | None, str] = {None: "-"}  # a model has few distinct shapes


def shape_text(shape: tuple[int, ...] | None) -> str:
    text = SHAPES.get(shape)
    if text is None:
        text = SHAPES[shape] = str(list(shape))
    return text


def details(catalog: Catalog, table: ResultTable, index: list[int], values: np.ndarray, has_diff: list[bool],
            status: list[str]) -> list[str]:
    """The last column of each row: its error, notes and why a figure is undefined ('' for most)."""
    why_of: dict[int, list[str]] = {}  # the reasons are shared dicts, one per case
    undefined = undefined_reasons(catalog.numel[index], values)
    out = []
    for j, i in enumerate(index):
        why = []
        if has_diff[j] and status[j] not in EQUAL:
            case = undefined[j]
            if id(case) not in why_of:
                why_of[id(case)] = [f"{k}: {v}" for k, v in case.items() if k in ("rel_l2", "max_abs", "cosine")]
            why = why_of[id(case)]
        error = table.errors.get(i)
        noted = i in table.notes or i in catalog.pair_notes
        if i in table.resized:
            why = [resized_gist(table.resized[i]), *why]
        out.append("; ".join(([error] if error else []) + (pair_notes(catalog, table, i) if noted else []) + why)
                   if error or noted or why else "")
    return out


def text_table(header: tuple[str, ...], columns: list[list[str]]):
    """Left-aligned columns, a line at a time; the name column (second) gives way first when
    the terminal is narrow.

    Args:
        columns: one list of cells per header, all as long.
    """
    widths = [max(len(title), max(map(len, column), default=0)) for title, column in zip(header, columns)]
    room = shutil.get_terminal_size((200, 24)).columns
    others = sum(widths) - widths[1] - widths[-1] + 2 * (len(header) - 1)
    widths[1] = width = max(24, min(widths[1], room - others))
    names = (name if len(name) <= width else "…" + name[-(width - 1):] for name in columns[1])
    for cells in [header, *zip(columns[0], names, *columns[2:])]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(cells[:-1], widths)).rstrip()
        yield line + f"  {cells[-1]}" if cells[-1] else line


# One checkpoint (`inspect`)


def write_inspect(write, catalog: Catalog, table: ResultTable) -> None:
    """The `inspect --json` document, handed to `write` a piece at a time (see `write_json`)."""
    dtypes, shapes, tied_to = stored_dtypes(catalog.a), catalog.a.shape, catalog.a.tied_to
    errors = 0

    def entries(rows: np.ndarray) -> list[dict]:
        nonlocal errors
        stats = stats_columns(table.values[rows], c.FA)
        out = [{"name": catalog.names[i], "dtype": dtypes[i], "shape": shapes[i], "tied_to": tied_to.get(i),
                "error": error_of(table, i), "stats": stats[j]} for j, i in enumerate(rows.tolist())]
        errors += sum(1 for t in out if t["error"])
        return out

    head = {"version": __version__, "checkpoint": side_json(catalog.summary_a)}
    pieces = (entries(rows) for rows in slices(catalog, table))
    write_json(write, head, "tensors", pieces,
               lambda: {"summary": {"tensors": table.read, "error": errors, "nonfinite": nonfinite_count(table)}})


def error_of(table: ResultTable, i: int) -> str | None:
    """Why a tensor has no statistics: unreadable, or a type without them (its note says so)."""
    if not np.isnan(table.values[i, c.FA + c.FINITE]):
        return None
    return table.errors.get(i) or next(iter(table.notes.get(i, ())), None)


def inspect_lines(catalog: Catalog, table: ResultTable):
    """`inspect`'s text table in natural order, a line at a time."""
    yield from header_lines(catalog.summary_a, None, [])
    read = read_in_order(catalog, table)
    index = read.tolist()
    values = table.values[read]
    counted = (~np.isnan(values[:, c.FA + c.FINITE])).tolist()
    dtypes = stored_dtypes(catalog.a)
    figures = [[figure(v) if shown else "" for v, shown in zip(values[:, c.FA + k].tolist(), counted)]
               for k in (c.MIN, c.MAX, c.MEAN, c.STD)]
    tied = catalog.a.tied_to
    errors = [error_of(table, i) for i in index]
    detail = [error or (f"tied to {tied[i]}" if i in tied else "") for error, i in zip(errors, index)]
    columns = [[dtypes[i] or "-" for i in index], [catalog.names[i] for i in index],
               [shape_text(catalog.a.shape[i]) for i in index], *figures, nonfinite_cells(values), detail]
    if index:
        yield ""
        yield from text_table(("dtype", "name", "shape", "min", "max", "mean", "std", "NaN/Inf", ""), columns)
    unreadable = sum(1 for error in errors if error)
    yield ""
    yield f"summary: {many(len(read), 'tensor')}, {nonfinite_count(table):,} with NaN/Inf, {unreadable:,} unreadable"
