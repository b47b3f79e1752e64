"""Columns of the float64 rows a run's scan fills: one row per tensor (or piece) and checkpoint.

Kept apart from the compiled loop (`run_kernels.py`) so that what only plans, merges or
reports never loads the compiler.
"""

# The checkpoint's own values, over its finite positions: Σ s², max |s|, and how many are NaN or ±Inf.
SQ, ABSMAX, NONFINITE = range(3)
# Against the reference R, over positions finite in both: Σ (s − r)², Σ r·s, Σ r², Σ s².
DD, RS, RR, SS = range(3, 7)
# Against the predecessor P, over positions finite in both: Σ (s − p)², Σ p².
UU, PP = range(7, 9)
SUMS = 9

# Flags per tensor and checkpoint: read (every piece), bytes equal to the reference's, to the predecessor's.
READ, SAME_REF, SAME_PREV = 1, 2, 4

# A tensor's status at a step, against the reference (PENDING until its data is read).
STATUSES = ("identical", "value_equal", "changed", "shape_mismatch", "removed", "added", "absent", "error", "pending")
IDENTICAL, VALUE_EQUAL, CHANGED, SHAPE_MISMATCH, REMOVED, ADDED, ABSENT, ERROR, PENDING = range(len(STATUSES))
