"""The comparison written to files: JSON (the `diff --json` document) and a Markdown report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from weightscope.compare.align import Alignment
from weightscope.analysis.anatomy import anomalies
from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.files import open_for_writing
from weightscope.analysis.hierarchy import badge_status
from weightscope.report.diff import EQUAL, human, shape, summary, to_json
from weightscope.compare.scan import PairResult


def markdown(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult]) -> str:
    """A report for humans: the two sides, counts by status, anomalies, every pair that differs."""
    lines = ["# weightscope comparison", ""]
    for label, cp in (("A", a), ("B", b)):
        lines.append(f"- **{label}** `{cp.path}` — {cp.format}, {len(cp.files)} files, {len(cp.tensors):,} tensors, "
                     f"{human(cp.parameters)} parameters")
    lines += [f"- note: {n}" for n in alignment.notes]
    counts = summary(results)
    lines += ["", "| status | tensors |", "|---|---:|"]
    lines += [f"| {status} | {n:,} |" for status, n in counts.items() if n]
    found = anomalies(results, badge_status)
    if found:
        lines += ["", "## Anomalies", ""]
        lines += [f"- `{x.name}`: {x.reason}" for x in found]
    differing = [r for r in results if r.status not in EQUAL]
    if differing:
        lines += ["", "## Tensors that differ", "",
                  "| tensor | status | dtype | shape | rel L2 | max \\|Δ\\| | cosine |", "|---|---|---|---|---:|---:|---:|"]
        for r in differing:
            pa, pb = r.pair.a, r.pair.b
            dtype = " → ".join(dict.fromkeys(i.stored_dtype or "?" for i in (pa, pb) if i is not None))
            dims = " → ".join(dict.fromkeys(str(shape(i)) for i in (pa, pb) if i is not None))
            d = r.diff

            def fmt(value, spec=".3g"):
                return "" if value is None else format(value, spec)

            lines.append(f"| `{r.pair.name}` | {r.status} | {dtype} | {dims} | {fmt(d and d.rel_l2)} | "
                         f"{fmt(d and d.max_abs)} | {fmt(d and d.cosine, '.6f')} |")
    return "\n".join(lines) + "\n"


def export(a: Checkpoint, b: Checkpoint, alignment: Alignment, results: list[PairResult],
           directory: str | Path = ".") -> tuple[Path, Path]:
    """Write `weightscope-<time>.md` and `.json` into `directory`; returns both paths."""
    stem = Path(directory) / time.strftime("weightscope-%Y%m%d-%H%M%S")
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(a, b, alignment, results), encoding="utf-8")
    with open_for_writing(js) as f:  # streamed: one 80 MB string would hold the interpreter 0.5 s
        json.dump(to_json(a, b, alignment, results), f, indent=1)
    return md, js
