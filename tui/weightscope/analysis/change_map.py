"""Where in a matrix a change sits: |B − A| pooled down to a grid the size of a pane.

New vocabulary rows, one re-initialised attention head or a band of changed units show as
lit rows, blocks or bands. Each cell of a rows × cols grid covers a block of the matrix
(a tensor of more than 2 dimensions is its first dimension by all the others; a vector is one
row) and holds the RMS of Δ over that block, its largest |Δ| and its count of non-finite
differences. Blocks split the matrix as evenly as integers allow: cell i covers rows
⌊i·m/rows⌋ to ⌊(i+1)·m/rows⌋. The matrix is read in chunks of rows, so memory stays bounded
whatever its size; the decoding is the statistics' own (numpy, no torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightscope.compare.align import Pair
from weightscope.compare.reading import as_bytes
from weightscope.compare.stats import Cancelled, code_of, decoded, itemsize
from weightscope.sources.checkpoint import Checkpoint

CHUNK = 1 << 22  # elements of Δ decoded at a time


@dataclass(frozen=True, eq=False)
class ChangeMap:
    """|Δ| pooled to a grid.

    Attributes:
        shape: the matrix the grid covers (rows, cols).
        row_edges, col_edges: cell i covers rows row_edges[i] … row_edges[i+1] − 1 (likewise columns).
        rms: the RMS of the finite Δ in each cell (0 where none is finite), float64 [rows, cols].
        peak: the largest finite |Δ| in each cell.
        nonfinite: how many Δ in each cell are NaN or ±Inf (either side non-finite).
    """

    shape: tuple[int, int]
    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]
    rms: np.ndarray
    peak: np.ndarray
    nonfinite: np.ndarray

    @property
    def max_rms(self) -> float:
        """The brightest cell, for scaling a colour ramp (0 for an unchanged matrix)."""
        return float(self.rms.max()) if self.rms.size else 0.0

    def rows_of(self, i: int) -> tuple[int, int]:
        """The rows [start, stop) cell row i covers."""
        return self.row_edges[i], self.row_edges[i + 1]

    def cols_of(self, j: int) -> tuple[int, int]:
        return self.col_edges[j], self.col_edges[j + 1]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def edges(n: int, cells: int) -> np.ndarray:
    """Boundaries of `cells` near-equal runs over n indices (fewer cells when n is smaller)."""
    cells = max(1, min(cells, n))
    return np.arange(cells + 1, dtype=np.int64) * n // cells


def change_map(a: Checkpoint, b: Checkpoint, pair: Pair, rows: int, cols: int,
               should_cancel: Callable[[], bool] = lambda: False) -> ChangeMap:
    """|B − A| of a pair pooled to at most rows × cols cells.

    Raises:
        ValueError: the pair's sides are missing or differ in shape.
        TensorUnreadable: a side cannot be read.
        stats.Unsupported: a dtype without statistics (complex).
        Cancelled: `should_cancel()` turned true (polled between chunks).
    """
    if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape:
        raise ValueError(f"{pair.name}: a change map needs both sides, of one shape")
    return pooled(a.raw(pair.a.name), pair.a.dtype, b.raw(pair.b.name), pair.b.dtype,
                  matrix_shape(pair.a.shape), rows, cols, should_cancel)


def pooled(raw_a, dtype_a: str, raw_b, dtype_b: str, shape: tuple[int, int], rows: int, cols: int,
           should_cancel: Callable[[], bool] = lambda: False) -> ChangeMap:
    """The map of two tensors' bytes (arrays or `reading.Bytes`), viewed as matrices of `shape`."""
    m, n = shape
    raw_a, raw_b = as_bytes(raw_a), as_bytes(raw_b)
    code_a, code_b = code_of(dtype_a), code_of(dtype_b)
    row_edges, col_edges = edges(m, rows), edges(n, cols)
    grid = (len(row_edges) - 1, len(col_edges) - 1)
    sums, peak, bad = np.zeros(grid), np.zeros(grid), np.zeros(grid, dtype=np.int64)
    if m * n == 0:
        return ChangeMap(shape, tuple(row_edges.tolist()), tuple(col_edges.tolist()), sums, peak, bad)
    # The cell row of every matrix row, and the chunks of rows decoded at a time.
    cell_of_row = np.repeat(np.arange(grid[0]), np.diff(row_edges))
    size_a, size_b = itemsize(dtype_a), itemsize(dtype_b)
    step = max(1, CHUNK // n)
    for start in range(0, m, step):
        if should_cancel():
            raise Cancelled
        stop = min(start + step, m)
        x = decoded(raw_a.window(start * n * size_a, stop * n * size_a), code_a).reshape(-1, n)
        y = decoded(raw_b.window(start * n * size_b, stop * n * size_b), code_b).reshape(-1, n)
        with np.errstate(invalid="ignore"):  # Inf − Inf: counted as non-finite below
            delta = np.abs(y - x)
        finite = np.isfinite(delta)
        cells = cell_of_row[start:stop]
        firsts = np.flatnonzero(np.diff(cells, prepend=-1))  # where each cell's rows begin in the chunk

        def by_cell(values, reduce):
            return reduce.reduceat(reduce.reduceat(values, col_edges[:-1], axis=1), firsts, axis=0)

        if not finite.all():
            bad[cells[firsts]] += by_cell((~finite).astype(np.int64), np.add)
            delta = np.where(finite, delta, 0.0)
        here = cells[firsts]  # a cell split across chunks gets both parts
        sums[here] += by_cell(delta * delta, np.add)
        peak[here] = np.maximum(peak[here], by_cell(delta, np.maximum))
    counts = np.outer(np.diff(row_edges), np.diff(col_edges)) - bad
    rms = np.sqrt(np.divide(sums, counts, out=np.zeros(grid), where=counts > 0))
    return ChangeMap(shape, tuple(row_edges.tolist()), tuple(col_edges.tolist()), rms, peak, bad)
