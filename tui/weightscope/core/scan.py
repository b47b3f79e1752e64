"""One pass over every aligned pair: its status.

A pair of the same dtype and shape is `identical` when its bytes are, decided by comparing
bytes without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightscope.core.align import Alignment, Pair
from weightscope.core.checkpoint import Checkpoint, TensorUnreadable

STATUSES = ("identical", "value_equal", "changed", "shape_mismatch", "only_a", "only_b", "error")
COMPARE_CHUNK = 1 << 24


@dataclass(frozen=True)
class PairResult:
    """What the scan found for one pair.

    Attributes:
        status: one of `STATUSES`.
        error: why a side could not be read, for status `error`.
    """

    pair: Pair
    status: str
    error: str | None = None


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two byte arrays are equal, read in chunks that stop at the first difference."""
    if x.size != y.size:
        return False
    return all(np.array_equal(x[i:i + COMPARE_CHUNK], y[i:i + COMPARE_CHUNK])
               for i in range(0, x.size, COMPARE_CHUNK))


def same_values(x, y) -> bool:
    """Whether two tensors of different dtypes hold equal values (NaN equals NaN), chunk by chunk."""
    import torch

    wide = torch.complex128 if x.is_complex() or y.is_complex() else torch.float64
    fx, fy = x.reshape(-1), y.reshape(-1)
    for i in range(0, fx.numel(), COMPARE_CHUNK):
        cx, cy = fx[i:i + COMPARE_CHUNK].to(wide), fy[i:i + COMPARE_CHUNK].to(wide)
        if not torch.equal(cx.nan_to_num(0.5), cy.nan_to_num(0.5)) or not torch.equal(cx.isnan(), cy.isnan()):
            return False
    return True


def compare(pair: Pair, a: Checkpoint, b: Checkpoint) -> PairResult:
    if pair.b is None:
        return PairResult(pair, "only_a")
    if pair.a is None:
        return PairResult(pair, "only_b")
    errors = [f"{side}: {info.error}" for side, info in (("A", pair.a), ("B", pair.b)) if info.error]
    if errors:
        return PairResult(pair, "error", "; ".join(errors))
    if pair.a.shape != pair.b.shape:
        return PairResult(pair, "shape_mismatch")
    try:
        if pair.a.dtype == pair.b.dtype:
            equal = same_bytes(a.raw(pair.a.name), b.raw(pair.b.name))
            return PairResult(pair, "identical" if equal else "changed")
        equal = same_values(a.load(pair.a.name), b.load(pair.b.name))
        return PairResult(pair, "value_equal" if equal else "changed")
    except TensorUnreadable as exc:
        return PairResult(pair, "error", str(exc))


def scan(alignment: Alignment, a: Checkpoint, b: Checkpoint,
         progress: Callable[[int, int], None] | None = None,
         should_cancel: Callable[[], bool] = lambda: False) -> list[PairResult]:
    """Compare every pair; `progress(done, total)` after each, stopping early when cancelled."""
    results = []
    for done, pair in enumerate(alignment.pairs, 1):
        if should_cancel():
            break
        results.append(compare(pair, a, b))
        if progress:
            progress(done, len(alignment.pairs))
    return results
