"""The piece table the kernels read: its columns, what a piece asks for, what comes back.

A piece is at most `PIECE` consecutive elements of a tensor (or of both tensors of a pair)
in a byte buffer. The planner writes piece tables in numpy; the compiled loops
(`kernels.py`) read them. Kept apart from the loops so that everything that only plans,
merges or reports never loads the compiler.
"""

import numpy as np

PIECE = 1 << 15  # elements per piece: both sides' decoded scratch stay in a core's L2 cache

# Element types the loops decode, by code. Types past `NARROW` decode to float64 (exactly).
CODES = {"float32": 0, "float16": 1, "bfloat16": 2, "float8_e4m3fn": 3, "float8_e5m2": 4, "float8_e8m0fnu": 5,
         "int8": 6, "uint8": 7, "int16": 8, "uint16": 9, "bool": 10,
         "float64": 11, "int32": 12, "uint32": 13, "int64": 14, "uint64": 15}
NARROW = 11
ITEMSIZES = np.array([4, 2, 2, 1, 1, 1, 1, 1, 2, 2, 1, 8, 4, 4, 8, 8], np.int64)

# Columns of a piece table (one int64 row per piece).
KIND, CODE_A, CODE_B, OFF_A, OFF_B, COUNT, START = range(7)
PIECE_COLUMNS = 7
# What a piece asks for: both sides of a pair of one shape, one side only, or only whether
# the bytes are equal (types without statistics).
PAIRED, SIDE_A, SIDE_B, BYTES = range(4)
# Flags of a finished piece.
HAS_A, HAS_B, HAS_D, EQUAL = 1, 2, 4, 8


def cut(numel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tensors of `numel` elements cut into pieces of at most `PIECE` (one, empty, for an
    empty tensor): each piece's tensor (its place in `numel`), first element and length."""
    count = np.maximum(1, -(-numel // PIECE))
    entry = np.repeat(np.arange(len(numel)), count)
    first = np.repeat(np.cumsum(count) - count, count)
    element = (np.arange(len(entry)) - first) * PIECE
    return entry, element, np.minimum(PIECE, numel[entry] - element)
