"""The compiled loop behind per-head and per-expert figures: sums of a pair by row or by column.

`split_sums` decodes a run of elements of both sides (any stored type, as the statistics
decode it) and adds, for each element finite on both sides, Δ², a², b² and a·b to the row
(or column) it lies in, keeps the largest |Δ| there, and counts the positions where either
side is NaN or ±Inf. Heads and experts are runs of rows or columns: their figures are these
sums gathered by owner, in numpy (`analysis/heads.py`). One pass over each element, in
float64; the sums are columns of `acc` (`acc[DELTA_SQ]` per row or column), so that a row's
stretch of columns is added with loops that vectorize. A stretch whose sums come out NaN or
Inf held such values and is redone by an exact loop that leaves them out.
"""

import numba
import numpy as np

from weightscope.compare import kernels
from weightscope.compare.kernels import decode_narrow, decode_wide
from weightscope.compare.pieces import NARROW

DELTA_SQ, A_SQ, B_SQ, AB, MAX_ABS, NONFINITE = range(6)
SUMS = 6

exact = numba.njit(nogil=True, cache=True, error_model="numpy")
fast = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})


@fast
def row_stretch(x, y, start, stop):
    """Sums of one row's stretch, assuming every value finite (the caller checks the result)."""
    dd = aa = bb = ab = 0.0
    top = 0.0
    for k in range(start, stop):
        a, b = np.float64(x[k]), np.float64(y[k])
        d = b - a
        dd += d * d
        aa += a * a
        bb += b * b
        ab += a * b
        top = max(top, abs(d))
    return dd, aa, bb, ab, top


@fast
def column_stretch(x, y, start, stop, first, acc):
    """Add one row's stretch to its columns' sums, assuming every value finite; False when a
    value was not (nothing added then)."""
    check = 0.0
    for k in range(start, stop):
        check += np.float64(x[k]) * 0.0 + np.float64(y[k]) * 0.0  # NaN when any value is NaN or ±Inf
    if check != 0.0:
        return False
    for k in range(start, stop):
        j = first + k - start
        a, b = np.float64(x[k]), np.float64(y[k])
        d = b - a
        acc[0, j] += d * d
        acc[1, j] += a * a
        acc[2, j] += b * b
        acc[3, j] += a * b
        acc[4, j] = max(acc[4, j], abs(d))
    return True


@exact
def exact_stretch(x, y, start, stop, i, by_rows, acc):
    """A stretch with NaN or ±Inf in it: finite positions added, the others counted."""
    for k in range(start, stop):
        j = i if by_rows else i + k - start
        a, b = np.float64(x[k]), np.float64(y[k])
        if abs(a) < np.inf and abs(b) < np.inf:
            d = b - a
            acc[0, j] += d * d
            acc[1, j] += a * a
            acc[2, j] += b * b
            acc[3, j] += a * b
            if abs(d) > acc[4, j]:
                acc[4, j] = abs(d)
        else:
            acc[5, j] += 1.0


@exact
def split_sums(buf_a, code_a, buf_b, code_b, count, first, cols, by_rows, acc, wide_a, wide_b, narrow_a, narrow_b,
               tables):
    """Add elements [first, first + count) of a rows × cols pair to `acc` (SUMS × rows when
    `by_rows`, else SUMS × cols)."""
    if code_a < NARROW and code_b < NARROW:
        decode_narrow(buf_a, 0, count, code_a, narrow_a, tables)
        decode_narrow(buf_b, 0, count, code_b, narrow_b, tables)
        walk(narrow_a, narrow_b, count, first, cols, by_rows, acc)
    else:
        decode_wide(buf_a, 0, count, code_a, wide_a, narrow_a, tables)
        decode_wide(buf_b, 0, count, code_b, wide_b, narrow_b, tables)
        walk(wide_a, wide_b, count, first, cols, by_rows, acc)


@exact
def walk(x, y, count, first, cols, by_rows, acc):
    """The decoded run, a row's stretch at a time."""
    k = 0
    while k < count:
        row, col = (first + k) // cols, (first + k) % cols
        stop = min(count, k + cols - col)
        if by_rows:
            dd, aa, bb, ab, top = row_stretch(x, y, k, stop)
            if abs(dd + aa + bb + ab) < np.inf:
                acc[0, row] += dd
                acc[1, row] += aa
                acc[2, row] += bb
                acc[3, row] += ab
                acc[4, row] = max(acc[4, row], top)
            else:
                exact_stretch(x, y, k, stop, row, True, acc)
        elif not column_stretch(x, y, k, stop, col, acc):
            exact_stretch(x, y, k, stop, col, False, acc)
        k = stop


def load() -> None:
    """Load (or compile, the first time) the loops, for narrow and wide types, rows and columns."""
    buf = np.zeros(32, np.uint8)
    acc = np.zeros((SUMS, 2))
    for code in (2, 11):
        for by_rows in (True, False):
            split_sums(buf, code, buf, code, 4, 0, 2, by_rows, acc, np.zeros(4), np.zeros(4),
                       np.zeros(4, np.float32), np.zeros(4, np.float32), kernels.TABLES)
