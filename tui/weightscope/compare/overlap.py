"""A resized pair compared where its sides overlap, and an audit of the part one side adds.

A pair qualifies when both sides exist with as many dimensions, exactly one dimension
differs (`dim`), both dtypes have statistics and the common part holds values. "Rows" are
the slices along `dim`: the common part is the leading min(…) rows of each side, summed
by the scan's own kernels (`stats.summed`) into the figures of a pair, so every figure means
what it means for a pair of one shape; the added part is the bigger side's other rows.
The audit reads the bigger side once, in file order, a chunk at a time: a fingerprint of
each row's bytes (duplicates), its L2 norm, whether it is all zeros or holds NaN/Inf, and
whether it equals the old rows' mean within rounding. Nothing holds a whole tensor as float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightscope.compare import catalog as cat
from weightscope.compare import columns as c
from weightscope.compare import results, stats
from weightscope.compare.pieces import CODES
from weightscope.compare.reading import Bytes, InFile, InMemory, ShortRead, as_bytes
from weightscope.compare.stats import Cancelled, DiffStats, SideStats, code_of, decoded, diff_of, itemsize, side_of
from weightscope.sources.checkpoint import TensorUnreadable

CHUNK = 1 << 21  # values decoded at a time
READ = 16 << 20  # bytes read in one go when gathering slices that lie close together
MEAN_LIMIT = 1 << 22  # the old rows' mean is kept (float64) for rows of at most this many values
SCALE = 2.0  # "random at init scale": the added rows' mean norm within this factor of the old rows'

# The guesses of how the added rows were made, in the order they are tried (README: resized tensors).
NONFINITE, ZEROS, MEAN, COPIES, RANDOM, FAR = ("holds NaN/Inf", "zeros", "mean of old rows", "copies of old rows",
                                               "random at init scale", "norm far from old rows'")


@dataclass(frozen=True)
class Added:
    """The rows only the bigger side has.

    Attributes:
        side: "a" or "b", the side that has them.
        dim: the dimension the sides differ in.
        rows: [first, end) along `dim`.
        shape: the added part's shape.
        zero_rows: rows all exactly 0.
        nonfinite_rows: rows holding NaN or ±Inf.
        duplicate_rows: rows bit-identical to another added row or to an old row.
        far_rows: rows without NaN/Inf whose L2 norm is not within a factor `SCALE` of the old
            rows' mean norm (zero rows among them).
        old_copies: rows bit-identical to an old row (of the same side).
        mean_rows: rows within rounding of the old rows' mean (the dtype's assert_close
            tolerance); None where rows are too long to keep their mean (`MEAN_LIMIT`).
        norm_mean: the mean L2 norm of the added rows without NaN/Inf; None when there are none.
        norm_mean_old: the same of the side's old rows (those in the common part).
        init: how they were probably made (one of the guesses above).
    """

    side: str
    dim: int
    rows: tuple[int, int]
    shape: tuple[int, ...]
    zero_rows: int
    nonfinite_rows: int
    duplicate_rows: int
    far_rows: int
    old_copies: int
    mean_rows: int | None
    norm_mean: float | None
    norm_mean_old: float | None
    init: str

    @property
    def count(self) -> int:
        return self.rows[1] - self.rows[0]


@dataclass(frozen=True, eq=False)
class Resized:
    """A resized pair: the figures of its common part, and the audit of its added part.

    Attributes:
        dim: the dimension the sides differ in.
        shape: the common part's shape.
        status: the common part's, by the rules of a pair (`results.STATUSES`); "error"
            when it could not be read, and `error` says why.
        values: the common part's figures (`columns.FIGURES`, NaN where undefined).
        added: the audit; None on error.
    """

    dim: int
    shape: tuple[int, ...]
    status: str
    values: np.ndarray | None = None
    added: Added | None = None
    error: str | None = None

    @property
    def a(self) -> SideStats | None:
        """A's statistics over the common part."""
        return None if self.values is None else side_of(self.values, c.FA)

    @property
    def b(self) -> SideStats | None:
        return None if self.values is None else side_of(self.values, c.FB)

    @property
    def diff(self) -> DiffStats | None:
        """B − A over the common part (`max_abs_index` in the common part's shape)."""
        return None if self.values is None else diff_of(self.values, self.shape)


def dimension(shape_a, shape_b, dtype_a: str | None, dtype_b: str | None) -> int | None:
    """The one dimension a resized pair differs in; None when the pair does not qualify."""
    if shape_a is None or shape_b is None or len(shape_a) != len(shape_b) or \
            dtype_a not in CODES or dtype_b not in CODES:
        return None
    differ = [k for k, (x, y) in enumerate(zip(shape_a, shape_b)) if x != y]
    if len(differ) != 1 or math.prod(map(min, shape_a, shape_b)) == 0:
        return None
    return differ[0]


def qualifying(catalog: cat.Catalog, status: np.ndarray) -> list[int]:
    """The pairs read as shape_mismatch that qualify (a model has a few)."""
    a, b = catalog.a, catalog.b
    return [i for i in np.flatnonzero(status == results.SHAPE_MISMATCH).tolist()
            if dimension(a.shape[i], b.shape[i], a.dtype[i], b.dtype[i]) is not None]


@dataclass(frozen=True)
class Layout:
    """A tensor as (outer, length, inner): `length` rows along the dimension, each outer × inner values."""

    outer: int
    length: int
    inner: int

    @staticmethod
    def of(shape: tuple[int, ...], dim: int) -> Layout:
        return Layout(math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:]))

    @property
    def row(self) -> int:
        """Values per row."""
        return self.outer * self.inner


class Slices(Bytes):
    """Rows [lo, hi) of a tensor's bytes, as one stream in the part's own row-major order:
    for each outer index, its run of rows. Reads stay bounded whatever the tensor's size."""

    def __init__(self, raw: Bytes, layout: Layout, size: int, lo: int, hi: int):
        self.raw = raw
        self.stride = layout.length * layout.inner * size  # from one outer index to the next
        self.offset = lo * layout.inner * size
        self.run = (hi - lo) * layout.inner * size  # the part's bytes per outer index
        self.size = layout.outer * self.run
        self.whole = layout.outer == 1 or self.run == self.stride
        self._buffer = np.empty(0, np.uint8)

    def window(self, start: int, stop: int) -> np.ndarray:
        if self.whole:  # one stretch of the tensor
            return self.raw.window(self.offset + start, self.offset + stop)
        if self._buffer.size < stop - start:
            self._buffer = np.empty(stop - start, np.uint8)
        out = self._buffer[:stop - start]
        at = start
        while at < stop:
            outer, within = divmod(at, self.run)
            base = outer * self.stride + self.offset
            if within == 0 and stop - at >= 2 * self.run and self.stride <= READ and 2 * self.run >= self.stride:
                # several whole runs from one read, the few bytes between them dropped
                count = min((stop - at) // self.run, READ // self.stride)
                block = self.raw.window(base, base + (count - 1) * self.stride + self.run)
                runs = np.lib.stride_tricks.as_strided(block, (count, self.run), (self.stride, 1))
                out[at - start:at - start + count * self.run].reshape(count, self.run)[:] = runs
                at += count * self.run
            else:
                n = min(self.run - within, stop - at)
                out[at - start:at - start + n] = self.raw.window(base + within, base + within + n)
                at += n
        return out


def part(raw: Bytes, layout: Layout, size: int, lo: int, hi: int) -> Bytes:
    """Rows [lo, hi) of a tensor's bytes: along the first dimension a span of the file (or of
    the array) itself, which the kernels read as they read a whole tensor."""
    if layout.outer == 1 and isinstance(raw, InFile):
        return InFile(raw.path, raw.offset + lo * layout.inner * size, (hi - lo) * layout.inner * size)
    if layout.outer == 1 and isinstance(raw, InMemory):
        return InMemory(raw.data[lo * layout.inner * size:hi * layout.inner * size])
    return Slices(raw, layout, size, lo, hi)


def compare(job, opened, options, should_cancel: Callable[[], bool] = lambda: False) -> Resized | None:
    """The common and added parts of a resized pair (`scan.PairJob`); None when it does not qualify.
    A side that cannot be read gives a `Resized` with status "error".

    Raises:
        Cancelled: `should_cancel()` turned true.
    """
    from weightscope.compare.scan import side_bytes, statuses

    pair = job.pair
    if pair.a is None or pair.b is None:
        return None
    dim = dimension(pair.a.shape, pair.b.shape, pair.a.dtype, pair.b.dtype)
    if dim is None:
        return None
    keep = min(pair.a.shape[dim], pair.b.shape[dim])
    shape = tuple(keep if k == dim else n for k, n in enumerate(pair.a.shape))
    try:
        raws = [as_bytes(side_bytes(job, side, opened)) for side in (0, 1)]
        dtypes = (pair.a.dtype, pair.b.dtype)
        layouts = [Layout.of(info.shape, dim) for info in (pair.a, pair.b)]
        common = [part(raw, layout, itemsize(dtype), 0, keep) for raw, layout, dtype in zip(raws, layouts, dtypes)]
        atol, rtol = stats.tolerance(*dtypes, options.atol, options.rtol)
        row, flags = stats.summed(stats.Sides(common[0], dtypes[0], common[1], dtypes[1]), atol, rtol, should_cancel)
        values = stats.figures(row[None], np.array([flags], np.uint8), np.array([math.prod(shape)]),
                               np.array([[atol, rtol]]))[0]
        status = results.STATUSES[statuses(np.array([cat.PENDING]), np.array([flags]), values[None])[0]]
        big = 1 if pair.b.shape[dim] > pair.a.shape[dim] else 0
        added = audit(raws[big], dtypes[big], (pair.a, pair.b)[big].shape, dim, keep, "ab"[big], should_cancel)
    except (TensorUnreadable, ShortRead, OSError) as exc:
        return Resized(dim, shape, "error", error=str(exc))
    return Resized(dim, shape, status, values, added)


def failed(pair, why: str) -> Resized | None:
    """What stands for a resized pair whose work failed (None when the pair does not qualify)."""
    dim = dimension(pair.a and pair.a.shape, pair.b and pair.b.shape, pair.a and pair.a.dtype, pair.b and pair.b.dtype)
    if dim is None:
        return None
    shape = tuple(map(min, pair.a.shape, pair.b.shape))
    return Resized(dim, shape, "error", error=why)


# The audit of the added rows


GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
SHIFTS = tuple(np.uint64(s) for s in (30, 27, 31))


def mixed(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element by element (uint64, wrapping), in place: `z` is spent."""
    for shift, factor in ((SHIFTS[0], MIX1), (SHIFTS[1], MIX2), (SHIFTS[2], None)):
        z ^= z >> shift
        if factor is not None:
            z *= factor
    return z


def word_type(nbytes: int) -> np.dtype:
    """The widest unsigned word that divides `nbytes` (rows are fingerprinted a word at a time)."""
    return np.dtype(next(f"<u{w}" for w in (8, 4, 2, 1) if nbytes % w == 0))


def fingerprints(data: np.ndarray, word: np.dtype, first: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint per row of `data` (uint8, outer × rows × bytes), its words keyed
    by their position in the row (`first`: of each outer index's first word, outer × 1 × 1);
    fingerprints of a row's pieces add up (mod 2⁶⁴)."""
    words = np.ascontiguousarray(data).view(word).astype(np.uint64)
    words ^= mixed((first + np.arange(words.shape[2], dtype=np.uint64)) * GOLDEN)
    return mixed(words).sum(axis=(0, 2), dtype=np.uint64)


@dataclass
class Rows:
    """What the audit gathers per row."""

    sumsq: np.ndarray  # Σ x² over finite values
    nonfinite: np.ndarray  # holds NaN or ±Inf
    nonzero: np.ndarray  # holds a value other than 0
    prints: np.ndarray  # fingerprint of the bytes
    near: np.ndarray  # within rounding of the old rows' mean (all True when not compared)

    @staticmethod
    def empty(n: int) -> Rows:
        return Rows(np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.uint64), np.ones(n, bool))

    def norms(self, rows: slice) -> np.ndarray:
        """L2 norms of these rows, those without NaN/Inf."""
        return np.sqrt(self.sumsq[rows][~self.nonfinite[rows]])


def stretches(layout: Layout, keep: int):
    """(outer, rows, values within a row's outer index) ranges of stretches of about `CHUNK`
    values that cover the tensor in file order, each one span of its bytes and none across
    row `keep`: whole outer indices, or rows of one outer index, or a part of one row's."""
    outer, length, inner = layout.outer, layout.length, layout.inner
    if length * inner <= CHUNK:
        per = CHUNK // max(1, length * inner)
        for o in range(0, outer, per):
            yield (o, min(o + per, outer)), (0, length), (0, inner)
    elif inner <= CHUNK:
        per = CHUNK // max(1, inner)
        for o in range(outer):
            for lo, hi in ((0, keep), (keep, length)):
                for t in range(lo, hi, per):
                    yield (o, o + 1), (t, min(t + per, hi)), (0, inner)
    else:
        for o in range(outer):
            for t in range(length):
                for i in range(0, inner, CHUNK):
                    yield (o, o + 1), (t, t + 1), (i, min(i + CHUNK, inner))


def audit(raw: Bytes, dtype: str, shape: tuple[int, ...], dim: int, keep: int, side: str,
          should_cancel: Callable[[], bool]) -> Added:
    """The added rows [keep, length) of the bigger side (`raw`, of `shape`), against its old
    rows [0, keep): the side read once, in file order. The old rows' mean at a position is
    complete before an added row there is read (stretches run outer index by outer index)."""
    layout = Layout.of(shape, dim)
    size, code = itemsize(dtype), code_of(dtype)
    word = word_type(math.gcd(layout.inner * size, CHUNK * size))  # every stretch holds whole words
    per_inner = layout.inner * size // word.itemsize  # words of a row per outer index
    atol, rtol = stats.tolerance(dtype, dtype)
    keeps_mean = layout.row <= MEAN_LIMIT
    if keeps_mean:  # the old rows' sums and finite counts, per position of a row
        sums, counts = np.zeros((layout.outer, layout.inner)), np.zeros((layout.outer, layout.inner))
    found = Rows.empty(layout.length)
    for (o0, o1), (t0, t1), (i0, i1) in stretches(layout, keep):
        if should_cancel():
            raise Cancelled
        row_bytes = layout.length * layout.inner * size
        start = o0 * row_bytes + (t0 * layout.inner + i0) * size
        data = raw.window(start, start + (o1 - o0) * (t1 - t0) * (i1 - i0) * size)
        x = decoded(data, code).reshape(o1 - o0, t1 - t0, i1 - i0)
        data = data.reshape(o1 - o0, t1 - t0, -1)
        first = np.arange(o0, o1, dtype=np.uint64)[:, None, None] * np.uint64(per_inner) + \
            np.uint64(i0 * size // word.itemsize)
        for lo, hi in ((t0, min(t1, keep)), (max(t0, keep), t1)):  # old rows first, then added ones
            if lo >= hi:
                continue
            rows, part, values = slice(lo, hi), slice(lo - t0, hi - t0), x[:, lo - t0:hi - t0]
            finite = np.isfinite(values)
            clean = np.where(finite, values, 0.0)
            found.nonfinite[rows] |= ~finite.all(axis=(0, 2))
            found.nonzero[rows] |= (values != 0).any(axis=(0, 2))  # NaN is not 0
            found.sumsq[rows] += np.einsum("oti,oti->t", clean, clean)
            found.prints[rows] += fingerprints(data[:, part], word, first)
            if keeps_mean and hi <= keep:
                sums[o0:o1, i0:i1] += clean.sum(axis=1)
                counts[o0:o1, i0:i1] += finite.sum(axis=1)
            elif keeps_mean:
                with np.errstate(invalid="ignore", divide="ignore"):  # no finite old value there: never near
                    mean = (sums[o0:o1, i0:i1] / counts[o0:o1, i0:i1])[:, None, :]
                    found.near[rows] &= (np.abs(values - mean) <= atol + rtol * np.abs(mean)).all(axis=(0, 2))
    old, new = slice(0, keep), slice(keep, layout.length)
    in_old = np.isin(found.prints[new], found.prints[old])
    _, inverse, repeats = np.unique(found.prints[new], return_inverse=True, return_counts=True)
    duplicate = in_old | (repeats[inverse.reshape(-1)] > 1)
    n = layout.length - keep
    norms, old_norms = found.norms(new), found.norms(old)
    norm_mean = float(norms.mean()) if norms.size else None
    norm_mean_old = float(old_norms.mean()) if old_norms.size else None
    near_scale = (norms >= norm_mean_old / SCALE) & (norms <= norm_mean_old * SCALE) if norm_mean_old \
        else np.zeros(norms.size, bool)
    nonfinite, zero = int(found.nonfinite[new].sum()), int((~found.nonzero[new]).sum())
    mean_rows = int(found.near[new].sum()) if keeps_mean else None
    copies = int(in_old.sum())
    return Added(side, dim, (keep, layout.length), tuple(n if k == dim else m for k, m in enumerate(shape)), zero,
                 nonfinite, int(duplicate.sum()), int((~near_scale).sum()), copies, mean_rows, norm_mean, norm_mean_old,
                 guess(n, nonfinite, zero, mean_rows, copies, norm_mean, norm_mean_old))


def guess(n: int, nonfinite: int, zero: int, mean_rows: int | None, copies: int, norm: float | None,
          norm_old: float | None) -> str:
    """How the added rows were made, the first guess that holds (README: resized tensors)."""
    if nonfinite:
        return NONFINITE
    if zero == n:
        return ZEROS
    if mean_rows == n:
        return MEAN
    if copies == n:
        return COPIES
    if norm is not None and norm_old and 1 / SCALE <= norm / norm_old <= SCALE:
        return RANDOM
    return FAR


# In the result cache (JSON beside its arrays)


def stored(found: Resized) -> dict:
    """A `Resized` as plain JSON values (NaN figures as NaN, which `json` reads back)."""
    return {"dim": found.dim, "shape": list(found.shape), "status": found.status, "error": found.error,
            "values": None if found.values is None else found.values.tolist(),
            "added": None if found.added is None else vars(found.added)}


def restored(entry: dict) -> Resized:
    added = entry["added"]
    if added is not None:
        added = Added(**(added | {"rows": tuple(added["rows"]), "shape": tuple(added["shape"])}))
    values = None if entry["values"] is None else np.array(entry["values"], np.float64)
    return Resized(entry["dim"], tuple(entry["shape"]), entry["status"], values, added, entry["error"])
