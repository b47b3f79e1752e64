"""Columns of the float64 rows that statistics passes fill (one per piece), and of the figures.

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

# The figures of one pair, as the scan hands them on (`results.ResultTable.values`): A's,
# B's, then the difference's. NaN where a figure is undefined or its side is missing.
MIN, MAX, MEAN, STD, ABSMAX, L2, FNAN, FPOSINF, FNEGINF, FZEROS, FINITE = range(11)
SIDE_FIGURES = ("min", "max", "mean", "std", "absmax", "l2", "nan", "posinf", "neginf", "zeros", "finite")
FA, FB, FD = 0, 11, 22
MAX_ABS, MAX_ABS_AT, MEAN_ABS, RMS, REL_L2, SNR_DB, COSINE, CHANGED_FRACTION, FCHANGED, FMISMATCHED, ATOL, RTOL = \
    range(12)
DIFF_FIGURES = ("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine", "changed_fraction",
                "changed", "mismatched", "atol", "rtol")
FIGURES = 34
