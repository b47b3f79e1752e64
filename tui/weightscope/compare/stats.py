"""Statistics of one tensor and of a pair: piece sums merged into figures, many tensors at once.

The kernels (`kernels.py`) sum pieces of at most `pieces.PIECE` elements into rows of
`columns.PAIR` float64 sums. `merge` combines each tensor's rows (the parallel-variance
formula), `figures` turns merged rows into the figures the README defines, in numpy for a
whole batch of tensors, and `side_of`/`diff_of` read one pair's figures back as `SideStats`
and `DiffStats`. Every sum is float64, so figures agree with a float64 reference without a
full-size float copy of any tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare import pieces
from weightscope.compare.reading import Bytes
from weightscope.sources.dtypes import ITEMSIZE

HISTOGRAM_BINS = 64
SAMPLE = 1 << 20  # elements sampled to find a histogram's range
QUANTILES = (0.001, 0.999)
EXACT_RANGE = 10_000

# torch.testing.assert_close's defaults (rtol, atol); other dtypes compare exactly.
TOLERANCES = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
              "float64": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5), "complex128": (1e-7, 1e-7)}


class Cancelled(Exception):
    """The caller's `should_cancel` said stop."""


class Unsupported(Exception):
    """Statistics are not defined for this dtype (complex)."""


@dataclass(frozen=True)
class SideStats:
    """One tensor. min/max/mean/std/absmax/l2 are over finite values; None when there are none."""

    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    absmax: float | None
    l2: float | None
    nan: int
    posinf: int
    neginf: int
    zeros: int
    finite: int

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf


@dataclass(frozen=True)
class DiffStats:
    """B − A where both are finite. A figure that is undefined is None, and `undefined` says why.

    `snr_db` is 10·log10(‖A‖² / ‖B − A‖²): how far the signal stands above the change, the
    usual measure of quantization error (undefined when nothing changed: it would be infinite).
    """

    max_abs: float | None
    max_abs_index: tuple[int, ...] | None
    mean_abs: float | None
    rms: float | None
    rel_l2: float | None
    snr_db: float | None
    cosine: float | None
    changed_fraction: float | None
    changed: int
    mismatched: int
    atol: float
    rtol: float
    undefined: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Histogram:
    """Counts of finite values in equal bins over [lo, hi], and how many fell outside."""

    lo: float
    hi: float
    counts: tuple[int, ...]
    below: int
    above: int


def tolerance(dtype_a: str | None, dtype_b: str | None, atol: float | None = None,
              rtol: float | None = None) -> tuple[float, float]:
    """(atol, rtol): the looser of the two dtypes' assert_close defaults, unless given."""
    rt = max(TOLERANCES.get(dtype_a or "", (0.0, 0.0))[0], TOLERANCES.get(dtype_b or "", (0.0, 0.0))[0])
    at = max(TOLERANCES.get(dtype_a or "", (0.0, 0.0))[1], TOLERANCES.get(dtype_b or "", (0.0, 0.0))[1])
    return (at if atol is None else atol), (rt if rtol is None else rtol)


def itemsize(dtype: str) -> int:
    return ITEMSIZE[dtype]


# From piece rows to figures


def merge(rows: np.ndarray, flags: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per owner from the rows of its pieces (owners ascending, each owner's pieces together).

    A merged side has SHIFT = its mean, S1 = 0 and S2 = its sum of squared deviations, so a
    merged row reads like the row of one piece.

    Returns:
        (the owners, their rows, their flags: HAS_* of any piece, EQUAL of all pieces).
    """
    from weightscope.compare.pieces import EQUAL

    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    if len(starts) == len(owners):  # one piece each: nothing to merge
        return owners, rows, flags
    out = np.zeros((len(starts), c.PAIR))
    for base in (c.A, c.B):
        side = rows[:, base:base + c.SIDE]
        n = side[:, c.N]
        counted = n > 0
        mean = side[:, c.SHIFT] + np.divide(side[:, c.S1], n, out=np.zeros_like(n), where=counted)
        m2 = np.maximum(side[:, c.S2] - np.divide(side[:, c.S1] ** 2, n, out=np.zeros_like(n), where=counted), 0.0)
        total = np.add.reduceat(n, starts)
        group_mean = np.divide(np.add.reduceat(n * mean, starts), total, out=np.zeros_like(total), where=total > 0)
        spread = n * (mean - np.repeat(group_mean, np.diff(np.r_[starts, len(owners)]))) ** 2
        merged = out[:, base:base + c.SIDE]
        merged[:, c.N], merged[:, c.SHIFT] = total, group_mean
        merged[:, c.S2] = np.add.reduceat(np.where(counted, m2 + spread, 0.0), starts)
        for k in (c.ZEROS, c.NAN, c.POSINF, c.NEGINF):
            merged[:, k] = np.add.reduceat(side[:, k], starts)
        merged[:, c.LO] = np.minimum.reduceat(np.where(counted, side[:, c.LO], np.inf), starts)
        merged[:, c.HI] = np.maximum.reduceat(np.where(counted, side[:, c.HI], -np.inf), starts)
    d, merged = rows[:, c.D:], out[:, c.D:]
    for k in (c.BOTH, c.SUMABS, c.SUMSQ, c.AA, c.BB, c.AB, c.CHANGED, c.MISMATCHED):
        merged[:, k] = np.add.reduceat(d[:, k], starts)
    largest = np.maximum.reduceat(d[:, c.MAXABS], starts)
    merged[:, c.MAXABS] = largest
    # the first piece holding the largest |Δ| gives its position (pieces are in element order)
    sizes = np.diff(np.r_[starts, len(owners)])
    first = np.minimum.reduceat(np.where(d[:, c.MAXABS] == np.repeat(largest, sizes), np.arange(len(owners)),
                                         len(owners)), starts)
    merged[:, c.ARGMAX] = d[np.minimum(first, len(owners) - 1), c.ARGMAX]
    any_flags = np.bitwise_or.reduceat(flags, starts)
    all_equal = np.bitwise_and.reduceat(flags & EQUAL, starts)
    return owners[starts], out, ((any_flags & np.uint8(0xFF ^ EQUAL)) | all_equal).astype(np.uint8)


def figures(rows: np.ndarray, flags: np.ndarray, numel: np.ndarray, tolerances: np.ndarray) -> np.ndarray:
    """The figures (`columns.FIGURES` wide, NaN where undefined) of merged rows.

    Args:
        numel: elements per tensor (for the changed fraction).
        tolerances: (atol, rtol) per tensor.
    """
    from weightscope.compare.pieces import HAS_A, HAS_B, HAS_D

    out = np.full((len(rows), c.FIGURES), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for base, at, has in ((c.A, c.FA, HAS_A), (c.B, c.FB, HAS_B)):
            side, fig = rows[:, base:base + c.SIDE], out[:, at:at + 11]
            present = (flags & has) != 0
            n = side[:, c.N]
            for src, dst in ((c.N, c.FINITE), (c.NAN, c.FNAN), (c.POSINF, c.FPOSINF), (c.NEGINF, c.FNEGINF),
                             (c.ZEROS, c.FZEROS)):
                fig[:, dst] = np.where(present, side[:, src], np.nan)
            valued = present & (n > 0)
            mean = side[:, c.SHIFT] + side[:, c.S1] / n
            m2 = np.maximum(side[:, c.S2] - side[:, c.S1] ** 2 / n, 0.0)
            fig[:, c.MIN] = np.where(valued, side[:, c.LO], np.nan)
            fig[:, c.MAX] = np.where(valued, side[:, c.HI], np.nan)
            fig[:, c.MEAN] = np.where(valued, mean, np.nan)
            fig[:, c.STD] = np.where(valued, np.sqrt(m2 / n), np.nan)
            fig[:, c.ABSMAX] = np.where(valued, np.maximum(np.abs(side[:, c.LO]), np.abs(side[:, c.HI])), np.nan)
            fig[:, c.L2] = np.where(valued, np.sqrt(m2 + n * mean ** 2), np.nan)
        d, fig = rows[:, c.D:], out[:, c.FD:]
        diffed = (flags & HAS_D) != 0
        both = d[:, c.BOTH]
        valued = diffed & (both > 0) & (numel > 0)
        aa, bb, sumsq = d[:, c.AA], d[:, c.BB], d[:, c.SUMSQ]
        fig[:, c.FCHANGED] = np.where(diffed, d[:, c.CHANGED], np.nan)
        fig[:, c.FMISMATCHED] = np.where(diffed, d[:, c.MISMATCHED], np.nan)
        fig[:, c.CHANGED_FRACTION] = np.where(diffed & (numel > 0), d[:, c.CHANGED] / numel, np.nan)
        fig[:, c.ATOL] = np.where(diffed, tolerances[:, 0], np.nan)
        fig[:, c.RTOL] = np.where(diffed, tolerances[:, 1], np.nan)
        fig[:, c.MAX_ABS] = np.where(valued, d[:, c.MAXABS], np.nan)
        fig[:, c.MAX_ABS_AT] = np.where(valued & (d[:, c.MAXABS] > 0), d[:, c.ARGMAX], np.nan)
        fig[:, c.MEAN_ABS] = np.where(valued, d[:, c.SUMABS] / both, np.nan)
        fig[:, c.RMS] = np.where(valued, np.sqrt(sumsq / both), np.nan)
        fig[:, c.REL_L2] = np.where(valued & (aa > 0), np.sqrt(sumsq) / np.sqrt(aa), np.nan)
        fig[:, c.SNR_DB] = np.where(valued & (aa > 0) & (sumsq > 0), 10 * np.log10(aa / sumsq), np.nan)
        fig[:, c.COSINE] = np.where(valued & (aa > 0) & (bb > 0), np.clip(d[:, c.AB] / np.sqrt(aa * bb), -1, 1),
                                    np.nan)
    return out


def number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def count(value: float) -> int:
    return int(value)


def side_of(values: np.ndarray, base: int) -> SideStats | None:
    """One side's statistics from a row of figures (`columns.FA` or `FB`); None where the side is missing."""
    fig = values[base:base + 11]
    if math.isnan(fig[c.FINITE]):
        return None
    return SideStats(*(number(fig[k]) for k in (c.MIN, c.MAX, c.MEAN, c.STD, c.ABSMAX, c.L2)),
                     *(count(fig[k]) for k in (c.FNAN, c.FPOSINF, c.FNEGINF, c.FZEROS, c.FINITE)))


def diff_of(values: np.ndarray, shape: tuple[int, ...]) -> DiffStats | None:
    """The difference's statistics from a row of figures, each undefined figure with its reason."""
    fig = values[c.FD:]
    if math.isnan(fig[c.FCHANGED]):
        return None
    keys = ("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine")
    undefined: dict[str, str] = {}
    numel = math.prod(shape)
    if numel == 0:
        undefined = dict.fromkeys((*keys, "changed_fraction"), "the tensor has no elements")
    elif math.isnan(fig[c.MAX_ABS]):
        undefined = dict.fromkeys(keys, "no position is finite on both sides")
    else:
        if math.isnan(fig[c.MAX_ABS_AT]):
            undefined["max_abs_index"] = "nothing changed"
        if math.isnan(fig[c.REL_L2]):
            undefined["rel_l2"] = undefined["snr_db"] = "‖A‖ = 0; see max_abs and rms"
        elif math.isnan(fig[c.SNR_DB]):
            undefined["snr_db"] = "nothing changed"
        if math.isnan(fig[c.COSINE]):
            undefined["cosine"] = "one side is all zeros"
    at = fig[c.MAX_ABS_AT]
    index = None if math.isnan(at) else tuple(int(i) for i in np.unravel_index(int(at), shape)) if shape else ()
    return DiffStats(number(fig[c.MAX_ABS]), index, number(fig[c.MEAN_ABS]), number(fig[c.RMS]), number(fig[c.REL_L2]),
                     number(fig[c.SNR_DB]), number(fig[c.COSINE]), number(fig[c.CHANGED_FRACTION]),
                     count(fig[c.FCHANGED]), count(fig[c.FMISMATCHED]), float(fig[c.ATOL]), float(fig[c.RTOL]),
                     undefined)


# One tensor or one pair, read a window at a time


def code_of(dtype: str) -> int:
    """The kernels' code for a dtype.

    Raises:
        Unsupported: a type without statistics (complex).
    """
    from weightscope.compare.pieces import CODES

    if dtype not in CODES:
        raise Unsupported(f"statistics of {dtype} tensors are not computed")
    return CODES[dtype]


def pieces_over(numel: int, kind: int, code_a: int, code_b: int, size_a: int, size_b: int, start: int = 0,
                offset_a: int = 0, offset_b: int = 0) -> np.ndarray:
    """The piece table covering elements [start, start + numel) of a tensor whose bytes begin
    at `offset_a`/`offset_b` of the buffers."""
    starts = np.arange(0, numel, pieces.PIECE, dtype=np.int64)
    table = np.empty((len(starts), pieces.PIECE_COLUMNS), np.int64)
    table[:, pieces.KIND], table[:, pieces.CODE_A], table[:, pieces.CODE_B] = kind, code_a, code_b
    table[:, pieces.OFF_A], table[:, pieces.OFF_B] = offset_a + starts * size_a, offset_b + starts * size_b
    table[:, pieces.COUNT] = np.minimum(pieces.PIECE, numel - starts)
    table[:, pieces.START] = start + starts
    return table


WINDOW = 1 << 21  # elements read and summed between two looks at `should_cancel` (a few ms)
EMPTY = np.zeros(0, np.uint8)


class Sides:
    """One tensor (a side None) or a pair of one shape, as the windows the kernels read."""

    def __init__(self, a, dtype_a: str | None, b, dtype_b: str | None):

        self.a, self.b = as_bytes(a), as_bytes(b)
        self.kind = pieces.PAIRED if self.a is not None and self.b is not None else pieces.SIDE_A if self.a is not None \
            else pieces.SIDE_B
        self.code_a = code_of(dtype_a) if self.a is not None else 0
        self.code_b = code_of(dtype_b) if self.b is not None else 0
        self.size_a = itemsize(dtype_a) if self.a is not None else 1
        self.size_b = itemsize(dtype_b) if self.b is not None else 1
        self.numel = self.a.size // self.size_a if self.a is not None else self.b.size // self.size_b

    def windows(self, should_cancel: Callable[[], bool]):
        """(first element, bytes of A, bytes of B, piece table) per window; missing sides read as empty."""
        for start in range(0, self.numel, WINDOW):
            if should_cancel():
                raise Cancelled
            stop = min(start + WINDOW, self.numel)
            a = self.a.window(start * self.size_a, stop * self.size_a) if self.a is not None else EMPTY
            b = self.b.window(start * self.size_b, stop * self.size_b) if self.b is not None else EMPTY
            yield start, a, b, pieces_over(stop - start, self.kind, self.code_a, self.code_b, self.size_a,
                                           self.size_b, start)

    def sample(self, count: int = SAMPLE) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Each side's values at the same evenly spaced positions, about `count` of them (float64,
        non-finite included so that the sides stay aligned)."""
        step = max(1, self.numel // count)
        parts_a, parts_b = [], []
        for start, a, b, _ in self.windows(lambda: False):
            first = -start % step
            if self.a is not None:
                parts_a.append(decoded(a.reshape(-1, self.size_a)[first::step].reshape(-1), self.code_a))
            if self.b is not None:
                parts_b.append(decoded(b.reshape(-1, self.size_b)[first::step].reshape(-1), self.code_b))
        joined = [np.concatenate(parts) if parts else np.empty(0) for parts in (parts_a, parts_b)]
        return (joined[0] if self.a is not None else None), (joined[1] if self.b is not None else None)


def as_bytes(data) -> Bytes | None:
    from weightscope.compare.reading import as_bytes as wrap

    return wrap(data)


def summed(sides: Sides, atol: float, rtol: float, should_cancel: Callable[[], bool]) -> tuple[np.ndarray, int]:
    """The merged row and flags of one tensor or pair."""

    rows, flags = [], []
    for _, a, b, table in sides.windows(should_cancel):
        r, f = run_pieces(a, b, table, np.tile([atol, rtol], (len(table), 1)))
        rows.append(r)
        flags.append(f)
    if not rows:  # no elements: an empty row that says which sides there are (and, of one type, equal)
        has = {pieces.PAIRED: pieces.HAS_A | pieces.HAS_B | pieces.HAS_D, pieces.SIDE_A: pieces.HAS_A,
               pieces.SIDE_B: pieces.HAS_B}[sides.kind]
        if sides.kind == pieces.PAIRED and sides.code_a == sides.code_b:
            has |= pieces.EQUAL
        return np.zeros(c.PAIR), has
    rows_, flags_ = np.concatenate(rows), np.concatenate(flags)
    _, merged, merged_flags = merge(rows_, flags_, np.zeros(len(rows_), np.int64))
    return merged[0], int(merged_flags[0])


_scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This process's scratch buffers for the kernels (callers take turns: one thread computes)."""
    from weightscope.compare import kernels as k

    global _scratch
    if _scratch is None or _scratch[0].shape[1] < pieces.PIECE:
        _scratch = k.scratch()
    return _scratch


def run_pieces(buf_a: np.ndarray, buf_b: np.ndarray, pieces: np.ndarray, tolerances: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """`kernels.scan_pieces` with this process's scratch buffers."""
    from weightscope.compare import kernels as k

    rows, flags = np.empty((len(pieces), c.PAIR)), np.empty(len(pieces), np.uint8)
    k.scan_pieces(buf_a, buf_b, pieces, tolerances, rows, flags, *scratch()[:2], k.TABLES)
    return rows, flags


def side_stats(raw, dtype: str, should_cancel: Callable[[], bool] = lambda: False) -> SideStats:
    """Statistics of one tensor from its raw bytes (a uint8 array or `reading.Bytes`)."""
    sides = Sides(raw, dtype, None, None)
    row, flags = summed(sides, 0.0, 0.0, should_cancel)
    return side_of(figures(row[None], np.array([flags]), np.array([sides.numel]), np.zeros((1, 2)))[0], c.FA)


def pair_stats(raw_a, dtype_a: str, raw_b, dtype_b: str, shape: tuple[int, ...], atol: float, rtol: float,
               should_cancel: Callable[[], bool] = lambda: False) -> tuple[SideStats, SideStats, DiffStats]:
    """Statistics of A, of B and of B − A, in one pass over both (same shape, any dtypes)."""
    row, flags = summed(Sides(raw_a, dtype_a, raw_b, dtype_b), atol, rtol, should_cancel)
    values = figures(row[None], np.array([flags]), np.array([math.prod(shape)]), np.array([[atol, rtol]]))[0]
    return side_of(values, c.FA), side_of(values, c.FB), diff_of(values, shape)


# Histograms


def decoded(raw: np.ndarray, code: int) -> np.ndarray:
    """Raw bytes of the type `code` as float64 values (for samples: small arrays)."""
    from weightscope.compare import kernels as k

    count = raw.size // int(pieces.ITEMSIZES[code])
    out, narrow = np.empty(count), np.empty(count, np.float32)
    k.decode_wide(np.ascontiguousarray(raw), 0, count, code, out, narrow, k.TABLES)
    return out


def value_range(*samples: np.ndarray) -> tuple[float, float] | None:
    """A range robust to outliers: the 0.1% and 99.9% quantiles of the samples together
    (the exact min and max for fewer than `EXACT_RANGE` values, where quantiles would only
    cut the extremes off)."""
    values = np.concatenate(samples) if samples else np.empty(0)
    if values.size == 0:
        return None
    if values.size < EXACT_RANGE:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(q) for q in np.quantile(values, QUANTILES))
    if hi <= lo:  # a constant tensor: one bin's width around it
        lo, hi = lo - 0.5 * max(abs(lo), 1e-12), hi + 0.5 * max(abs(hi), 1e-12)
    return lo, hi


def counted(sides: Sides, side: int, lo: float, hi: float, bins: int,
            should_cancel: Callable[[], bool]) -> Histogram:
    """A histogram over [lo, hi] of A's values (`side` 0) or B's (1)."""
    from weightscope.compare import kernels as k

    row = np.zeros(bins + 3, np.int64)  # (laid out as `kernels.slot` says)
    for _, a, b, table in sides.windows(should_cancel):
        k.histogram_pieces(b if side else a, table, side, lo, hi, row, *scratch(), k.TABLES)
    return histogram_of(lo, hi, row)


def counted_pair(sides: Sides, shared: tuple[float, float], spread: tuple[float, float], bins: int,
                 should_cancel: Callable[[], bool]) -> dict[str, Histogram]:
    """Histograms of A and B over `shared` and of b − a over `spread`, in one pass."""
    from weightscope.compare import kernels as k

    rows = np.zeros((3, bins + 3), np.int64)
    for _, a, b, table in sides.windows(should_cancel):
        k.pair_histogram_pieces(a, b, table, *shared, *spread, *rows, *scratch(), k.TABLES)
    return {key: histogram_of(lo, hi, row) for key, (lo, hi), row in zip(("a", "b", "diff"), (shared, shared, spread), rows)}


def histogram_of(lo: float, hi: float, row: np.ndarray) -> Histogram:
    """A histogram from a row the kernels filled: [below, bins…, above, not finite]."""
    return Histogram(lo, hi, tuple(row[1:-2].tolist()), int(row[0]), int(row[-2]))


def histograms(raw_a, dtype_a: str | None, raw_b, dtype_b: str | None, bins: int = HISTOGRAM_BINS,
               should_cancel: Callable[[], bool] = lambda: False, identical: bool = False) -> dict[str, Histogram]:
    """Histograms of A and B on one shared range and, for a same-shape pair, of B − A.

    Args:
        raw_a, raw_b: each side's bytes (uint8 arrays or `reading.Bytes`); None for a missing side.
        identical: the two sides' bytes are equal: B's histogram is A's, and there is no Δ to draw.

    Returns:
        {"a": ..., "b": ..., "diff": ...}, each present when its side has finite values.
    """
    paired = raw_a is not None and raw_b is not None and \
        as_bytes(raw_a).size // itemsize(dtype_a) == as_bytes(raw_b).size // itemsize(dtype_b)
    if identical:
        raw_b = None
    if paired and not identical:
        sides = Sides(raw_a, dtype_a, raw_b, dtype_b)
        samples = sides.sample()
        alone = {"a": (sides, 0), "b": (sides, 1)}
    else:
        alone = {key: (Sides(raw, dtype, None, None), 0) if key == "a" else (Sides(None, None, raw, dtype), 1)
                 for key, raw, dtype in (("a", raw_a, dtype_a), ("b", raw_b, dtype_b)) if raw is not None}
        samples = tuple(s.sample()[side] for s, side in alone.values())
    shared = value_range(*(x[np.isfinite(x)] for x in samples if x is not None))
    if shared is None:
        return {}
    if paired and not identical:
        with np.errstate(invalid="ignore"):  # Inf − Inf: dropped, not worth a warning
            deltas = samples[1] - samples[0]
        spread = value_range(deltas[np.isfinite(deltas)])
        if spread is not None:
            return counted_pair(sides, shared, spread, bins, should_cancel)
    out = {key: counted(sides_of_key, side, *shared, bins, should_cancel) for key, (sides_of_key, side) in alone.items()}
    if identical and "a" in out:
        out["b"] = out["a"]
    return out
