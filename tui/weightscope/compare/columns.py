"""Columns of the float64 rows that statistics passes fill, one row per chunk.

The CPU kernels (`kernels.py`) and the torch path (`device.py`) both produce these rows;
`stats.py` merges them into figures. A side row holds one tensor's columns; a pair row
holds A's side columns, B's, then the difference's.
"""

# One side: finite count, shift, sums of (x - shift) and (x - shift)², counts, min, max.
N, SHIFT, S1, S2, ZEROS, NAN, POSINF, NEGINF, LO, HI = range(10)
SIDE = 10
A, B, D = 0, SIDE, 2 * SIDE
# The difference, from D: positions finite on both sides, sums of |Δ|, Δ², a², b², ab,
# changed and mismatched counts, the largest |Δ| and its index within the chunk.
BOTH, SUMABS, SUMSQ, AA, BB, AB, CHANGED, MISMATCHED, MAXABS, ARGMAX = range(10)
PAIR = 2 * SIDE + 10
