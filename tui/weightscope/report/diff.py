"""Headless output of a comparison: the JSON document, the text table, the exit status."""

from __future__ import annotations

import shutil
from dataclasses import asdict

from weightscope import __version__
from weightscope.compare.align import Alignment
from weightscope.sources.checkpoint import Checkpoint, TensorInfo
from weightscope.compare.checks import nonfinite_text
from weightscope.compare.scan import STATUSES, PairResult
from weightscope.compare.stats import DiffStats, SideStats

EQUAL = {"identical", "value_equal"}
SIDE_FIELDS = ("min", "max", "mean", "std", "absmax", "l2", "nan", "posinf", "neginf", "zeros", "finite")


def exit_status(results: list[PairResult], close_is_equal: bool = False) -> int:
    """0 when nothing differs, 1 when something does (as diff(1)); 2 is left to open failures.

    A name on one side only that is tied to a tensor both sides hold does not count. With
    `close_is_equal` (a merge check), differences within tolerance are rounding, not change.
    """
    equal = EQUAL | {"close"} if close_is_equal else EQUAL
    differs = any(r.status not in equal and not (r.status in ("only_a", "only_b") and r.pair.tied_elsewhere)
                  for r in results)
    return 1 if differs else 0


def side_json(checkpoint: Checkpoint) -> dict:
    return {"path": checkpoint.path, "format": checkpoint.format, "files": checkpoint.files,
            "tensors": len(checkpoint.tensors), "parameters": checkpoint.parameters,
            "bytes": checkpoint.nbytes, "notes": checkpoint.notes, "extras": checkpoint.extras}


def stats_json(side: SideStats | None) -> dict | None:
    return None if side is None else {k: getattr(side, k) for k in SIDE_FIELDS}


def diff_json(diff: DiffStats | None) -> dict | None:
    if diff is None:
        return None
    out = asdict(diff)
    out["max_abs_index"] = list(diff.max_abs_index) if diff.max_abs_index is not None else None
    return out


def shape(info: TensorInfo | None) -> list[int] | None:
    return list(info.shape) if info is not None and info.shape is not None else None


def stored_name(info: TensorInfo | None) -> str | None:
    """The name the file holds the tensor under, which a script can look up in it."""
    return info and (info.stored_name or info.name)


def tensor_json(result: PairResult, histograms: bool = False, spectra: dict | None = None) -> dict:
    pair = result.pair
    a, b = pair.a, pair.b
    out = {"name": pair.name, "name_a": stored_name(a), "name_b": stored_name(b), "status": result.status,
           "dtype_a": a and a.stored_dtype, "dtype_b": b and b.stored_dtype,
           "shape_a": shape(a), "shape_b": shape(b),
           "error": result.error, "notes": list(pair.notes) + list(result.notes),
           "a": stats_json(result.a), "b": stats_json(result.b), "diff": diff_json(result.diff)}
    if histograms:
        out["histograms"] = {k: asdict(h) for k, h in result.histograms.items()}
    if spectra is not None:  # `diff --spectrum`: a `spectrum.Spectrum` for changed pairs of 2+ dimensions, else null
        spectrum = spectra.get(pair.name)
        out["spectrum"] = asdict(spectrum) if spectrum is not None else None
    return out


def summary(results: list[PairResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] += 1
    return counts


def to_json(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult],
            histograms: bool = False, spectra: dict | None = None) -> dict:
    return {"version": __version__, "a": side_json(a), "b": side_json(b), "notes": alignment.notes,
            "tensors": [tensor_json(r, histograms, spectra) for r in results], "summary": summary(results)}


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
    return "n/a" if value is None else format(value, fmt)


def arrow(x, y) -> str:
    return str(x) if x == y else f"{x} → {y}"


def header_lines(a: Checkpoint, b: Checkpoint | None, notes: list[str]) -> list[str]:
    lines = []
    for label, cp in (("A", a), ("B", b)):
        if cp is None:
            continue
        files = f"{len(cp.files)} file{'s' if len(cp.files) != 1 else ''}"
        lines.append(f"{label}  {cp.path}  {cp.format}, {files}, {len(cp.tensors)} tensors, "
                     f"{human(cp.parameters)} parameters, {human(cp.nbytes, 'B')}")
        lines += [f"   note: {n}" for n in cp.notes]
        lines += [f"   not weights: {x}" for x in cp.extras]
    return lines + [f"note: {n}" for n in notes]


def nonfinite_cell(result: PairResult) -> str:
    texts = [nonfinite_text(s) if s else "" for s in (result.a, result.b)]
    if not any(texts):
        return ""
    return arrow(texts[0] or "0", texts[1] or "0") if result.a and result.b else texts[0] or texts[1]


def to_text(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult]) -> str:
    lines = header_lines(a, b, alignment.notes)
    rows = []
    for r in results:
        pa, pb = r.pair.a, r.pair.b
        dtype = arrow(pa and pa.stored_dtype or "-", pb and pb.stored_dtype or "-")
        dims = arrow(shape(pa) or "-", shape(pb) or "-")
        d = r.diff
        figures = ((figure(d.rel_l2), figure(d.max_abs), figure(d.snr_db, ".1f"), figure(d.cosine, ".6f"))
                   if d else ("",) * 4)
        why = [f"{k}: {v}" for k, v in d.undefined.items() if k in ("rel_l2", "max_abs", "cosine")] if d else []
        if r.status in EQUAL:
            why = []
        detail = "; ".join(([r.error] if r.error else []) + list(r.pair.notes) + list(r.notes) + why)
        rows.append((r.status, r.pair.name, dtype, dims, *figures, nonfinite_cell(r), detail))
    if rows:
        lines.append("")
        lines += table(("status", "name", "dtype", "shape", "rel_l2", "max|Δ|", "SNR dB", "cosine", "NaN/Inf", ""),
                       rows)
    lines.append("")
    counts = summary(results)
    lines.append("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) if results else "summary: no tensors")
    return "\n".join(lines)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns; the name column (second) gives way first when the terminal is narrow."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    room = shutil.get_terminal_size((200, 24)).columns
    others = sum(widths) - widths[1] - widths[-1] + 2 * (len(header) - 1)
    widths[1] = max(24, min(widths[1], room - others))
    out = []
    for row in (header, *rows):
        cells = [str(c) for c in row]
        if len(cells[1]) > widths[1]:
            cells[1] = "…" + cells[1][-(widths[1] - 1):]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths)).rstrip() +
                   (f"  {cells[-1]}" if cells[-1] else ""))
    return out


def inspect_json(checkpoint: Checkpoint, results: list[tuple[TensorInfo, SideStats | None, str | None]]) -> dict:
    tensors = [{"name": info.name, "dtype": info.stored_dtype, "shape": shape(info), "tied_to": info.tied_to,
                "error": error, "stats": stats_json(side)} for info, side, error in results]
    return {"version": __version__, "checkpoint": side_json(checkpoint), "tensors": tensors,
            "summary": {"tensors": len(results), "error": sum(1 for *_, e in results if e),
                        "nonfinite": sum(1 for _, s, _ in results if s and s.nonfinite)}}


def inspect_text(checkpoint: Checkpoint, results: list[tuple[TensorInfo, SideStats | None, str | None]]) -> str:
    lines = header_lines(checkpoint, None, [])
    rows = []
    for info, side, error in results:
        cells = [figure(getattr(side, k)) if side else "" for k in ("min", "max", "mean", "std")]
        detail = error or (f"tied to {info.tied_to}" if info.tied_to else "")
        rows.append((info.stored_dtype or "-", info.name, str(shape(info) or "-"), *cells,
                     nonfinite_text(side) if side else "", detail))
    if rows:
        lines.append("")
        lines += table(("dtype", "name", "shape", "min", "max", "mean", "std", "NaN/Inf", ""), rows)
    bad = sum(1 for _, s, _ in results if s and s.nonfinite)
    errors = sum(1 for *_, e in results if e)
    lines += ["", f"summary: {len(results)} tensors, {bad} with NaN/Inf, {errors} unreadable"]
    return "\n".join(lines)
