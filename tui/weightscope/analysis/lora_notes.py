"""What a comparison involving a LoRA checkpoint adds to its results once they are in.

Each pair gets a note saying what the adapter made of its tensor (computed W + ΔW, replaced,
a factor that is not a model weight, ...), and the size of each module's change is judged:
‖ΔW‖_F comes exactly from the factors, ‖W‖_F from the scan's statistics of the other side
(the base; in a merge check the merged model, which equals W + ΔW to rounding).

A module whose ‖ΔW‖_F / ‖W‖_F is below `NEGLIGIBLE` (1e-6) changes nothing that matters:
that is nearly 4000 times below bf16's unit roundoff (2⁻⁸ ≈ 3.9e-3) and 500 times below
fp16's (2⁻¹¹ ≈ 4.9e-4), so merged into either it rounds away almost entirely, and in float32
it moves outputs by about a millionth. Trained LoRAs sit around 1e-4 to 1e-1; below 1e-6 an
adapter is as good as untrained, or its alpha/scaling is wrong. Where every module is below
it, the checkpoint gets an alarm.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import PairResult, ResultTable
from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.lora.checkpoint import LoraCheckpoint

NEGLIGIBLE = 1e-6


def delta_norm(checkpoint: LoraCheckpoint, name: str) -> float:
    """‖ΔW‖_F of a computed tensor from its factors, in float64: ‖s·B@A‖²_F = s² · Σ (BᵀB) ∘ (AAᵀ)."""
    b, a = (f.double() for f in checkpoint.factors(name))
    square = float(((b.T @ b) * (a @ a.T)).sum())
    return abs(checkpoint.modules[name].scaling) * math.sqrt(max(square, 0.0))


def annotate(a: Checkpoint, b: Checkpoint | None, catalog: Catalog, table: ResultTable
             ) -> tuple[dict[int, tuple[str, ...]], tuple[list[str], list[str] | None]]:
    """What a LoRA side adds to a comparison's results: each pair's notes (the scan's own, then
    what the adapter made of its tensor and whether ΔW is negligible), and each side's notes
    with the spread of ‖ΔW‖/‖W‖ and the alarm when every module is negligible.

    Returns:
        (the notes of every pair that has new ones, (A's notes, B's notes or None)), computed
        afresh from the results: nothing is added to the checkpoints.
    """
    sides = [(label, side) for label, side in (("A", a), ("B", b)) if isinstance(side, LoraCheckpoint)]
    side_notes = (list(a.notes), list(b.notes) if b is not None else None)
    if not sides:
        return {}, side_notes
    ratios: dict[str, list[float]] = {"A": [], "B": []}
    out: dict[int, tuple[str, ...]] = {}
    for label, checkpoint in sides:
        column = catalog.a if label == "A" else catalog.b
        other = c.FB if label == "A" else c.FA
        for i, name in enumerate(column.name):
            if name is None or name not in checkpoint.roles:
                continue
            notes = list(out.get(i, table.notes.get(i, ())))
            notes.append(f"{label}: {checkpoint.roles[name]}")
            l2 = table.values[i, other + c.L2]
            ratio = change_ratio(checkpoint, name, None if np.isnan(l2) else float(l2))
            if ratio is not None:
                ratios[label].append(ratio)
                if ratio < NEGLIGIBLE:
                    notes.append(f"{label}: ALARM ΔW negligible: ‖ΔW‖/‖W‖ = {ratio:.2g} (< {NEGLIGIBLE:g})")
            out[i] = tuple(notes)
    side_notes[0].extend(effect_notes(sorted(ratios["A"])))
    if side_notes[1] is not None:
        side_notes[1].extend(effect_notes(sorted(ratios["B"])))
    return out, side_notes


def annotate_results(a: Checkpoint, b: Checkpoint, results: list[PairResult]) -> list[PairResult]:
    """`annotate` for results held as objects (a scan in this process): the results with their
    notes, and each LoRA checkpoint's notes extended."""
    from weightscope.compare import catalog as cat
    from weightscope.compare.align import Alignment

    alignment = Alignment([r.pair for r in results], [])
    catalog = cat.build(a, b, alignment)
    table = ResultTable(len(results))
    for i, r in enumerate(results):
        table.values[i, c.FA + c.L2] = r.a.l2 if r.a is not None and r.a.l2 is not None else np.nan
        table.values[i, c.FB + c.L2] = r.b.l2 if r.b is not None and r.b.l2 is not None else np.nan
        if r.notes:
            table.notes[i] = r.notes
    notes, (notes_a, notes_b) = annotate(a, b, catalog, table)
    a.notes[:] = notes_a
    b.notes[:] = notes_b
    return [replace(r, notes=notes[i]) if i in notes else r for i, r in enumerate(results)]


def change_ratio(checkpoint: LoraCheckpoint, name: str, other_l2: float | None) -> float | None:
    """‖ΔW‖/‖W‖ for a computed tensor, with ‖W‖ from the other side's statistics; None where
    either is unknown or ΔW is exactly zero (the zero-factor alarm covers that)."""
    if name not in checkpoint.modules or not other_l2:
        return None
    norm = delta_norm(checkpoint, name)
    return norm / other_l2 if norm > 0 else None


def effect_notes(ratios: list[float]) -> list[str]:
    """One line on the spread of ‖ΔW‖/‖W‖ over the modules, and the alarm when all are negligible."""
    if not ratios:
        return []
    median = ratios[len(ratios) // 2]
    notes = [f"‖ΔW‖/‖W‖ over {len(ratios)} modules: min {ratios[0]:.2g}, median {median:.2g}, "
             f"max {ratios[-1]:.2g}"]
    if ratios[-1] < NEGLIGIBLE:
        notes.append(f"ALARM: ΔW is negligible next to W in every module (‖ΔW‖/‖W‖ at most {ratios[-1]:.2g}, "
                     f"below {NEGLIGIBLE:g}): the adapter changes nothing that survives rounding")
    return notes
