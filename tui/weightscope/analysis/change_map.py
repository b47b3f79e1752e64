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
        added: of a resized pair, how many positions of each cell only the bigger side has
            (the map covers the bigger shape; the other figures are of the common part); None
            for a pair of one shape.
        boundary: of a resized pair, ("rows" or "cols", the first cell of the added part) where
            the parts meet on a cell edge; None where they interleave (a middle dimension).
        added_in: "A" or "B", the side the added part belongs to.
    """

    shape: tuple[int, int]
    row_edges: tuple[int, ...]
    col_edges: tuple[int, ...]
    rms: np.ndarray
    peak: np.ndarray
    nonfinite: np.ndarray
    added: np.ndarray | None = None
    boundary: tuple[str, int] | None = None
    added_in: str = ""

    def fully_added(self) -> np.ndarray:
        """The cells every position of which only the bigger side has."""
        if self.added is None:
            return np.zeros(self.rms.shape, bool)
        return self.added == np.outer(np.diff(self.row_edges), np.diff(self.col_edges))

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
            pool(np.abs(y - x), cell_of_row[start:stop], col_edges, sums, peak, bad)
    counts = np.outer(np.diff(row_edges), np.diff(col_edges)) - bad
    rms = np.sqrt(np.divide(sums, counts, out=np.zeros(grid), where=counts > 0))
    return ChangeMap(shape, tuple(row_edges.tolist()), tuple(col_edges.tolist()), rms, peak, bad)


def pool(delta: np.ndarray, cells: np.ndarray, col_edges: np.ndarray, sums: np.ndarray, peak: np.ndarray,
         bad: np.ndarray) -> None:
    """Add a chunk of |Δ| (its rows in the cell rows `cells`) to the cells' sums, peaks and
    counts of non-finite values."""
    finite = np.isfinite(delta)
    firsts = np.flatnonzero(np.diff(cells, prepend=-1))  # where each cell's rows begin in the chunk

    def by_cell(values, reduce):
        return reduce.reduceat(reduce.reduceat(values, col_edges[:-1], axis=1), firsts, axis=0)

    if not finite.all():
        bad[cells[firsts]] += by_cell((~finite).astype(np.int64), np.add)
        delta = np.where(finite, delta, 0.0)
    here = cells[firsts]  # a cell split across chunks gets both parts
    sums[here] += by_cell(delta * delta, np.add)
    peak[here] = np.maximum(peak[here], by_cell(delta, np.maximum))


def split_edges(n: int, at: int, cells: int, step: int = 1) -> np.ndarray:
    """Edges of about `cells` runs over n indices with one edge at `at` (0 < at < n): each part
    gets cells in proportion to its size, at least `step`, the first part a multiple of `step`
    where it has the indices for it (two block rows make a line of text)."""
    first = max(step, min(cells - step, round(cells * at / n / step) * step))
    first = min(first, max(1, at - at % step))
    return np.concatenate([edges(at, first), at + edges(n - at, max(1, cells - first))[1:]])


def pooled_resized(raw_a, dtype_a: str, shape_a: tuple[int, ...], raw_b, dtype_b: str, shape_b: tuple[int, ...],
                   dim: int, rows: int, cols: int, should_cancel: Callable[[], bool] = lambda: False) -> ChangeMap:
    """The map of a pair resized along `dim`, over the bigger shape: |Δ| of the common part,
    and how much of each cell only the bigger side has. Where the parts meet on a cell edge
    (rows along the first dimension, columns along the last of a matrix or a vector), the
    grid has one line (or column) less, for the boundary to be drawn in."""
    big = shape_b if shape_b[dim] > shape_a[dim] else shape_a
    keep = min(shape_a[dim], shape_b[dim])
    m, n = matrix_shape(big)
    raw_a, raw_b = as_bytes(raw_a), as_bytes(raw_b)
    code_a, code_b = code_of(dtype_a), code_of(dtype_b)
    # where the parts meet on cell edges: rows of a matrix, columns of a matrix or a vector
    along = "cols" if len(big) == 1 or (len(big) == 2 and dim == 1) else "rows" if dim == 0 else None
    row_edges = split_edges(m, keep, rows - 2, 2) if along == "rows" else edges(m, rows)
    col_edges = split_edges(n, keep, cols - 1) if along == "cols" else edges(n, cols)
    grid = (len(row_edges) - 1, len(col_edges) - 1)
    sums, peak, bad = np.zeros(grid), np.zeros(grid), np.zeros(grid, dtype=np.int64)
    cell_of_row = np.repeat(np.arange(grid[0]), np.diff(row_edges))
    # Positions of a matrix row only the bigger side has (none when whole rows are added).
    only = np.zeros(n, bool)
    if along != "rows":
        within = np.ones(big[1:] if len(big) > 1 else big, bool)
        within[(slice(None),) * max(0, dim - 1) + (slice(0, keep),)] = False
        only = within.reshape(-1)
    common_rows = keep if along == "rows" else m
    sides = [(raw_a, code_a, itemsize(dtype_a), shape_a), (raw_b, code_b, itemsize(dtype_b), shape_b)]
    step = max(1, CHUNK // n)
    for start in range(0, common_rows, step):
        if should_cancel():
            raise Cancelled
        stop = min(start + step, common_rows)
        x, y = (common(raw, code, size, shape, dim, keep, start, stop) for raw, code, size, shape in sides)
        delta = np.zeros((stop - start, n))
        with np.errstate(invalid="ignore"):  # Inf − Inf: counted as non-finite
            delta[:, ~only] = np.abs(y - x)
        pool(delta, cell_of_row[start:stop], col_edges, sums, peak, bad)
    # added positions per cell: whole rows past the common ones, or the columns `only` marks
    per_row = np.add.reduceat(only.astype(np.int64), col_edges[:-1])
    added = np.outer(np.diff(row_edges), per_row)
    if along == "rows":
        added[np.searchsorted(row_edges, keep):] = np.outer(np.diff(row_edges), np.diff(col_edges))[
            np.searchsorted(row_edges, keep):]
    counts = np.outer(np.diff(row_edges), np.diff(col_edges)) - bad - added
    rms = np.sqrt(np.divide(sums, counts, out=np.zeros(grid), where=counts > 0))
    boundary = None
    if along is not None:
        boundary = (along, int(np.searchsorted(row_edges if along == "rows" else col_edges, keep)))
    return ChangeMap((m, n), tuple(row_edges.tolist()), tuple(col_edges.tolist()), rms, peak, bad, added, boundary,
                     "B" if big is shape_b else "A")


def common(raw, code: int, size: int, shape: tuple[int, ...], dim: int, keep: int, start: int, stop: int) -> np.ndarray:
    """Matrix rows [start, stop) of one side of a resized pair, decoded, with only the common
    part's positions (flattened as the common part's own rows)."""
    n = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    values = decoded(raw.window(start * n * size, stop * n * size), code)
    if len(shape) == 1:
        return values.reshape(1, -1)[:, :keep]
    if dim == 0:
        return values.reshape(stop - start, -1)
    block = values.reshape(stop - start, *shape[1:])
    return block[(slice(None),) * dim + (slice(0, keep),)].reshape(stop - start, -1)
