"""Headless output of a comparison: the JSON document, the text table, the exit status."""

from __future__ import annotations

import shutil

from weightscope import __version__
from weightscope.core.align import Alignment
from weightscope.core.checkpoint import Checkpoint
from weightscope.core.scan import STATUSES, PairResult

EQUAL = {"identical", "value_equal"}


def exit_status(results: list[PairResult]) -> int:
    """0 when nothing differs, 1 when something does (as diff(1)); 2 is left to open failures.

    A name on one side only that is tied to a tensor both sides hold does not count.
    """
    differs = any(r.status not in EQUAL and not (r.status in ("only_a", "only_b") and r.pair.tied_elsewhere)
                  for r in results)
    return 1 if differs else 0


def side_json(checkpoint: Checkpoint) -> dict:
    return {"path": checkpoint.path, "format": checkpoint.format, "files": checkpoint.files,
            "tensors": len(checkpoint.tensors), "parameters": checkpoint.parameters,
            "bytes": checkpoint.nbytes, "notes": checkpoint.notes, "extras": checkpoint.extras}


def tensor_json(result: PairResult) -> dict:
    pair = result.pair
    a, b = pair.a, pair.b
    return {"name": pair.name, "name_a": a and a.name, "name_b": b and b.name, "status": result.status,
            "dtype_a": a and a.dtype, "dtype_b": b and b.dtype,
            "shape_a": list(a.shape) if a and a.shape is not None else None,
            "shape_b": list(b.shape) if b and b.shape is not None else None,
            "error": result.error, "notes": list(pair.notes)}


def summary(results: list[PairResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] += 1
    return counts


def to_json(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult]) -> dict:
    return {"version": __version__, "a": side_json(a), "b": side_json(b), "notes": alignment.notes,
            "tensors": [tensor_json(r) for r in results], "summary": summary(results)}


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2M'; with unit 'B', 1234567 -> '1.2 MB'."""
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or suffix == "P":
            text = f"{n:.0f}" if suffix == "" else f"{n:.3g}"
            sep = " " if unit else ""
            return f"{text}{sep}{suffix}{unit}" if unit or suffix else text
        n /= 1000
    return str(n)


def arrow(x, y) -> str:
    return str(x) if x == y else f"{x} → {y}"


def to_text(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult]) -> str:
    lines = []
    for label, cp in (("A", a), ("B", b)):
        files = f"{len(cp.files)} file{'s' if len(cp.files) != 1 else ''}"
        lines.append(f"{label}  {cp.path}  {cp.format}, {files}, {len(cp.tensors)} tensors, "
                     f"{human(cp.parameters)} parameters, {human(cp.nbytes, 'B')}")
        lines += [f"   note: {n}" for n in cp.notes]
        lines += [f"   not weights: {x}" for x in cp.extras]
    lines += [f"note: {n}" for n in alignment.notes]
    rows = []
    for r in results:
        pa, pb = r.pair.a, r.pair.b
        dtype = arrow(pa and pa.dtype or "-", pb and pb.dtype or "-")
        shape = arrow(list(pa.shape) if pa and pa.shape is not None else "-",
                      list(pb.shape) if pb and pb.shape is not None else "-")
        detail = "; ".join(([r.error] if r.error else []) + list(r.pair.notes))
        rows.append((r.status, r.pair.name, dtype, shape, detail))
    if rows:
        lines.append("")
        lines += table(("status", "name", "dtype", "shape", ""), rows)
    counts = summary(results)
    lines.append("")
    lines.append("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) if results else "summary: no tensors")
    return "\n".join(lines)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns; the name column gives way first when the terminal is narrow."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    room = shutil.get_terminal_size((160, 24)).columns
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
