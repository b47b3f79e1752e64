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

from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.lora.checkpoint import LoraCheckpoint
from weightscope.compare.scan import PairResult

NEGLIGIBLE = 1e-6


def delta_norm(checkpoint: LoraCheckpoint, name: str) -> float:
    """‖ΔW‖_F of a computed tensor from its factors, in float64: ‖s·B@A‖²_F = s² · Σ (BᵀB) ∘ (AAᵀ)."""
    b, a = (f.double() for f in checkpoint.factors(name))
    square = float(((b.T @ b) * (a @ a.T)).sum())
    return abs(checkpoint.modules[name].scaling) * math.sqrt(max(square, 0.0))


def annotate(a: Checkpoint, b: Checkpoint, results: list[PairResult]) -> list[PairResult]:
    """The results with each LoRA side's roles noted per pair, and ΔW-size notes and alarms
    added per pair and to the LoRA checkpoint's notes. Plain checkpoints' results come back as they were."""
    sides = [(label, side) for label, side in (("A", a), ("B", b)) if isinstance(side, LoraCheckpoint)]
    if not sides:
        return results
    ratios: dict[tuple[str, str], float] = {}
    out = []
    for result in results:
        notes = list(result.notes)
        for label, checkpoint in sides:
            info = result.pair.a if label == "A" else result.pair.b
            if info is None or info.name not in checkpoint.roles:
                continue
            notes.append(f"{label}: {checkpoint.roles[info.name]}")
            ratio = change_ratio(checkpoint, info.name, result.b if label == "A" else result.a)
            if ratio is not None:
                ratios[(label, info.name)] = ratio
                if ratio < NEGLIGIBLE:
                    notes.append(f"{label}: ALARM ΔW negligible: ‖ΔW‖/‖W‖ = {ratio:.2g} (< {NEGLIGIBLE:g})")
        out.append(replace(result, notes=tuple(notes)) if len(notes) > len(result.notes) else result)
    for label, checkpoint in sides:
        mine = sorted(r for (side, _), r in ratios.items() if side == label)
        checkpoint.notes.extend(effect_notes(mine))
    return out


def change_ratio(checkpoint: LoraCheckpoint, name: str, other) -> float | None:
    """‖ΔW‖/‖W‖ for a computed tensor, with ‖W‖ from the other side's statistics; None where
    either is unknown or ΔW is exactly zero (the zero-factor alarm covers that)."""
    if name not in checkpoint.modules or other is None or not other.l2:
        return None
    norm = delta_norm(checkpoint, name)
    return norm / other.l2 if norm > 0 else None


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
