"""The CPU inner loops: sums and counts for one chunk, in one pass over its elements.

Loops are compiled with numba (cached on disk) and release the GIL, so chunks run in
parallel threads. A chunk is walked in small blocks: each block first takes a loop whose sums vectorize;
when a sum comes out NaN or Inf, the block held such values and is redone by an exact
scalar loop that counts them. Minima, maxima and the largest difference are
left to numpy's SIMD reductions in `stats.py` (LLVM will not vectorize float min/max here).

The kernels fill the sum and count columns of `columns.py`; min, max and the largest
difference are filled by the caller.
"""

import os
import sys

from weightscope.paths import cache_dir

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from weightscope.compare.columns import (  # noqa: E402
    PAIR, SIDE, AA, AB, BB, BOTH, CHANGED, MISMATCHED, NAN, NEGINF, POSINF, S1, S2, SHIFT, SUMABS, SUMSQ, ZEROS, A, B, D, N)

BLOCK = 4096


exact = numba.njit(nogil=True, cache=True, error_model="numpy")
# Reassociation lets the sums vectorize; NaN and Inf still propagate, which is how a block
# that holds them is noticed and redone exactly.
fast = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp"})


@exact
def bfloat16_to_float32(bits):
    """bfloat16 is the top half of a float32: shift the bits into place."""
    out = np.empty(bits.size, np.uint32)
    for i in range(bits.size):
        out[i] = np.uint32(bits[i]) << 16
    return out.view(np.float32)


@exact
def first_finite(x):
    for i in range(x.size):
        v = np.float64(x[i])
        if abs(v) < np.inf:
            return v
    return 0.0


@fast
def finite_side_block(x, start, stop, shift):
    s1 = s2 = 0.0
    zeros = 0
    for i in range(start, stop):
        v = np.float64(x[i])
        w = v - shift
        s1 += w
        s2 += w * w
        zeros += v == 0.0
    return s1, s2, zeros


@exact
def any_side_block(x, start, stop, shift):
    """The exact loop for a block that holds NaN or Inf."""
    n = nan = posinf = neginf = zeros = 0
    s1 = s2 = 0.0
    for i in range(start, stop):
        v = np.float64(x[i])
        if abs(v) < np.inf:
            n += 1
            w = v - shift
            s1 += w
            s2 += w * w
            zeros += v == 0.0
        elif v != v:
            nan += 1
        elif v > 0:
            posinf += 1
        else:
            neginf += 1
    return n, s1, s2, zeros, nan, posinf, neginf


@exact
def side_chunk(x, row):
    """One tensor chunk into `row` (`columns.SIDE` wide). Sums are shifted by the first
    finite value, which keeps the variance exact when the mean is far from zero."""
    row[:] = 0.0
    shift = row[SHIFT] = first_finite(x)
    for start in range(0, x.size, BLOCK):
        stop = min(start + BLOCK, x.size)
        s1, s2, zeros = finite_side_block(x, start, stop, shift)
        if abs(s2) < np.inf:
            add_side(row, 0, stop - start, s1, s2, zeros, 0, 0, 0)
        else:
            add_side(row, 0, *any_side_block(x, start, stop, shift))


@fast
def finite_pair_block(a, b, start, stop, shift_a, shift_b, atol, rtol):
    """Both sides' sums and the difference's, in one loop that vectorizes."""
    s1a = s2a = s1b = s2b = 0.0
    zeros_a = zeros_b = 0
    sumabs = sumsq = aa = bb = ab = 0.0
    changed = mismatched = 0
    for i in range(start, stop):
        va, vb = np.float64(a[i]), np.float64(b[i])
        wa, wb = va - shift_a, vb - shift_b
        s1a += wa
        s2a += wa * wa
        s1b += wb
        s2b += wb * wb
        zeros_a += va == 0.0
        zeros_b += vb == 0.0
        d = abs(vb - va)
        sumabs += d
        sumsq += d * d
        aa += va * va
        bb += vb * vb
        ab += va * vb
        changed += va != vb
        mismatched += d > atol + rtol * abs(va)
    return s1a, s2a, s1b, s2b, zeros_a, zeros_b, sumabs, sumsq, aa, bb, ab, changed, mismatched


@exact
def any_diff_block(a, b, start, stop, atol, rtol):
    """The exact loop for a block where either side holds NaN or Inf.

    `changed` counts positions whose values differ (NaN on both sides is equal);
    `mismatched` counts, as `torch.testing.assert_close` does, positions where
    |b - a| > atol + rtol * |a| or where non-finite values differ.
    """
    both = changed = mismatched = 0
    sumabs = sumsq = aa = bb = ab = 0.0
    for i in range(start, stop):
        va, vb = np.float64(a[i]), np.float64(b[i])
        if abs(va) < np.inf and abs(vb) < np.inf:
            d = abs(vb - va)
            both += 1
            sumabs += d
            sumsq += d * d
            aa += va * va
            bb += vb * vb
            ab += va * vb
        if va != vb and not (va != va and vb != vb):
            changed += 1
            # an infinite side is never within tolerance: rtol * |Inf| would admit anything
            if not (abs(va) < np.inf and abs(vb) < np.inf and abs(vb - va) <= atol + rtol * abs(va)):
                mismatched += 1
    return both, sumabs, sumsq, aa, bb, ab, changed, mismatched


@exact
def add_side(row, base, n, s1, s2, zeros, nan, posinf, neginf):
    row[base + N] += n
    row[base + S1] += s1
    row[base + S2] += s2
    row[base + ZEROS] += zeros
    row[base + NAN] += nan
    row[base + POSINF] += posinf
    row[base + NEGINF] += neginf


@exact
def add_diff(row, both, sumabs, sumsq, aa, bb, ab, changed, mismatched):
    row[D + BOTH] += both
    row[D + SUMABS] += sumabs
    row[D + SUMSQ] += sumsq
    row[D + AA] += aa
    row[D + BB] += bb
    row[D + AB] += ab
    row[D + CHANGED] += changed
    row[D + MISMATCHED] += mismatched


@exact
def pair_chunk(a, b, atol, rtol, row):
    """A chunk of A and the same chunk of B into one pair row; the difference is taken
    where both sides are finite."""
    row[:] = 0.0
    shift_a = row[A + SHIFT] = first_finite(a)
    shift_b = row[B + SHIFT] = first_finite(b)
    for start in range(0, a.size, BLOCK):
        stop = min(start + BLOCK, a.size)
        s1a, s2a, s1b, s2b, zeros_a, zeros_b, sumabs, sumsq, aa, bb, ab, changed, mismatched = \
            finite_pair_block(a, b, start, stop, shift_a, shift_b, atol, rtol)
        if abs(s2a) < np.inf and abs(s2b) < np.inf:
            n = stop - start
            add_side(row, A, n, s1a, s2a, zeros_a, 0, 0, 0)
            add_side(row, B, n, s1b, s2b, zeros_b, 0, 0, 0)
            add_diff(row, n, sumabs, sumsq, aa, bb, ab, changed, mismatched)
        else:
            add_side(row, A, *any_side_block(a, start, stop, shift_a))
            add_side(row, B, *any_side_block(b, start, stop, shift_b))
            add_diff(row, *any_diff_block(a, b, start, stop, atol, rtol))


@exact
def histogram_chunk(x, lo, hi, row):
    """Add the finite values of `x` to `row`: counts over [lo, hi] in row[:-2], then how many
    fell below and above."""
    bins = row.size - 2
    scale = bins / (hi - lo)
    for i in range(x.size):
        v = np.float64(x[i])
        if not abs(v) < np.inf:
            continue
        if v < lo:
            row[bins] += 1
        elif v > hi:
            row[bins + 1] += 1
        else:
            row[min(int((v - lo) * scale), bins - 1)] += 1


@exact
def diff_histogram_chunk(a, b, lo, hi, row):
    """Like `histogram_chunk`, for b − a where both are finite (no temporary array)."""
    bins = row.size - 2
    scale = bins / (hi - lo)
    for i in range(a.size):
        va, vb = np.float64(a[i]), np.float64(b[i])
        if not (abs(va) < np.inf and abs(vb) < np.inf):
            continue
        v = vb - va
        if v < lo:
            row[bins] += 1
        elif v > hi:
            row[bins + 1] += 1
        else:
            row[min(int((v - lo) * scale), bins - 1)] += 1


def load() -> None:
    """Load (or compile, the first time) every loop for float32 data, once, at import, so the
    first real tensor does not wait for it. numba's first call loads its whole library, and with
    it a probe that imports scipy.linalg to offer BLAS to compiled code: 0.2 s of a 0.35 s start
    here. These loops use no linear algebra, so while the library loads the probe fails at once."""
    probe = "scipy.linalg.cython_blas"
    blocked = probe not in sys.modules
    if blocked:
        sys.modules[probe] = None  # an import of it raises ImportError; numba then goes without BLAS
    try:
        x = np.zeros(8, np.float32)
        side_chunk(x, np.zeros(SIDE))
        pair_chunk(x, x, 0.0, 0.0, np.zeros(PAIR))
        bfloat16_to_float32(np.zeros(8, np.uint16))
        histogram_chunk(x, 0.0, 1.0, np.zeros(6, np.int64))
        diff_histogram_chunk(x, x, 0.0, 1.0, np.zeros(6, np.int64))
    finally:
        if blocked and sys.modules.get(probe, 0) is None:
            del sys.modules[probe]


load()
