"""The compiled loop behind per-head and per-expert figures: sums of a pair by row or by column.

`split_sums` decodes a run of elements of both sides (any stored type, as the statistics
decode it) and adds, for each element finite on both sides, Δ², a², b² and a·b to the row
(or column) it lies in, keeps the largest |Δ| there, and counts the positions where either
side is NaN or ±Inf. Heads and experts are runs of rows or columns: their figures are these
sums gathered by owner, in numpy (`analysis/heads.py`). One pass over each element, in
float64.
"""

import numba
import numpy as np

from weightscope.compare import kernels
from weightscope.compare.kernels import decode_wide

DELTA_SQ, A_SQ, B_SQ, AB, MAX_ABS, NONFINITE = range(6)
SUMS = 6


@numba.njit(nogil=True, cache=True, error_model="numpy")
def split_sums(buf_a, code_a, buf_b, code_b, count, first, cols, by_rows, acc, wide_a, wide_b, narrow, tables):
    """Add elements [first, first + count) of a rows × cols pair to `acc` (one row of sums per
    matrix row when `by_rows`, else per matrix column)."""
    decode_wide(buf_a, 0, count, code_a, wide_a, narrow, tables)
    decode_wide(buf_b, 0, count, code_b, wide_b, narrow, tables)
    r, c = first // cols, first % cols
    for k in range(count):
        i = r if by_rows else c
        a, b = wide_a[k], wide_b[k]
        if abs(a) < np.inf and abs(b) < np.inf:
            d = b - a
            acc[i, 0] += d * d
            acc[i, 1] += a * a
            acc[i, 2] += b * b
            acc[i, 3] += a * b
            if abs(d) > acc[i, 4]:
                acc[i, 4] = abs(d)
        else:
            acc[i, 5] += 1.0
        c += 1
        if c == cols:
            c = 0
            r += 1


def load() -> None:
    """Load (or compile, the first time) the loop."""
    buf = np.zeros(16, np.uint8)
    acc = np.zeros((2, SUMS))
    split_sums(buf, 2, buf, 0, 2, 0, 2, True, acc, np.zeros(4), np.zeros(4), np.zeros(4, np.float32), kernels.TABLES)
