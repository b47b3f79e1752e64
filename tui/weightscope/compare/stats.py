"""Statistics of one tensor and of a pair, in bounded chunks, on the CPU or a torch device.

Chunks are decoded to float32 (float64 where the data is wider), every figure is
accumulated in float64 per chunk, and chunk rows are merged with the parallel-variance
formula, so results agree with a float64 reference without a full-size float copy.
Definitions are in the README.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from weightscope.compare import columns as c

CHUNK = 1 << 18  # elements per chunk: a chunk and its temporaries stay in a core's L2 cache
HISTOGRAM_BINS = 64
SAMPLE = 1 << 20  # elements sampled to find a histogram's range
QUANTILES = (0.001, 0.999)
EXACT_RANGE = 10_000

# torch.testing.assert_close's defaults (rtol, atol); other dtypes compare exactly.
TOLERANCES = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
              "float64": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5), "complex128": (1e-7, 1e-7)}
NUMPY_TYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
               "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
               "uint64": np.uint64, "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8,
               "bool": np.bool_}


T = TypeVar("T")


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


def tolerance(dtype_a: str, dtype_b: str, atol: float | None = None, rtol: float | None = None) -> tuple[float, float]:
    """(atol, rtol): the looser of the two dtypes' assert_close defaults, unless given."""
    rt = max(TOLERANCES.get(dtype_a, (0.0, 0.0))[0], TOLERANCES.get(dtype_b, (0.0, 0.0))[0])
    at = max(TOLERANCES.get(dtype_a, (0.0, 0.0))[1], TOLERANCES.get(dtype_b, (0.0, 0.0))[1])
    return (at if atol is None else atol), (rt if rtol is None else rtol)


def itemsize(dtype: str) -> int:
    from weightscope.sources.dtypes import ITEMSIZE

    return ITEMSIZE[dtype]


def to_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw bytes of `dtype` as float32 values (float64 for float64 and integers); no copy for float32."""
    from weightscope.compare import kernels

    if dtype.startswith("complex"):
        raise Unsupported("statistics of complex tensors are not computed")
    if dtype in ("float32", "float64"):
        return raw.view(NUMPY_TYPES[dtype])
    if dtype == "bfloat16":
        return kernels.bfloat16_to_float32(raw.view(np.uint16))
    if dtype == "float16":
        return raw.view(np.float16).astype(np.float32)
    if dtype in NUMPY_TYPES:
        return raw.view(NUMPY_TYPES[dtype]).astype(np.float64)
    import torch  # float8 and other types numpy lacks

    from weightscope.sources.dtypes import torch_dtype

    return torch.from_numpy(raw).view(torch_dtype(dtype)).float().numpy()


_pools: dict[bool, ThreadPoolExecutor] = {}
_lock = threading.Lock()
_waiting_users = 0
_no_user_waits = threading.Event()
_no_user_waits.set()
_thread = threading.local()


@contextmanager
def foreground():
    """Mark work a person is waiting for (the detail pane): in this thread it runs on a pool of
    its own, and background work (the scan) pauses between chunks until it is done."""
    global _waiting_users
    with _lock:
        _waiting_users += 1
        _no_user_waits.clear()
    _thread.foreground = True
    try:
        yield
    finally:
        _thread.foreground = False
        with _lock:
            _waiting_users -= 1
            if _waiting_users == 0:
                _no_user_waits.set()


def pool() -> ThreadPoolExecutor:
    """The pool for this thread's work: one worker per core (the kernels release the GIL);
    foreground work has its own, so it never queues behind background chunks."""
    foreground_work = getattr(_thread, "foreground", False)
    with _lock:
        if foreground_work not in _pools:
            name = "weightscope-foreground" if foreground_work else "weightscope-stats"
            _pools[foreground_work] = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix=name)
        return _pools[foreground_work]


BEAT = 0.005  # seconds between an interactive loop's heartbeats
LATE = 1.5 * BEAT  # a beat this overdue: the loop is busy
LONGEST_PAUSE = 0.2  # a loop that stays busy longer still lets background work move on
GONE = 1.0  # a loop silent this long has stopped: nothing to step aside for
_last_beat: float | None = None  # None: no loop beats, background work never waits for one


def heartbeat() -> None:
    """Called every `BEAT` seconds from an interactive event loop. A late beat means the loop is
    busy (drawing, handling a key) and wants the GIL: background work then steps aside."""
    global _last_beat
    _last_beat = time.monotonic()


def heartbeat_stopped() -> None:
    global _last_beat
    _last_beat = None


def yield_to_foreground() -> None:
    """Background work's pause point (a no-op in foreground work)."""
    if not getattr(_thread, "foreground", False):
        step_aside()


def paced(items: Iterable[T], every: int = 1000) -> Iterator[T]:
    """`items`, with background work's pause point before every `every`-th: for long loops of
    small Python steps (reading 100,000 cached results, say)."""
    for i, item in enumerate(items):
        if i % every == 0:
            yield_to_foreground()
        yield item


def step_aside() -> None:
    """Wait while a person waits for foreground work, and while the interactive loop is busy."""
    _no_user_waits.wait()
    start = time.monotonic()
    while _last_beat is not None and LATE < time.monotonic() - _last_beat < GONE \
            and time.monotonic() - start < LONGEST_PAUSE:
        time.sleep(0.001)


def chunk_guard(should_cancel: Callable[[], bool]) -> Callable[[], None]:
    """What each chunk checks first (in whichever thread runs it): cancellation and, for
    background work, `step_aside`."""
    background = not getattr(_thread, "foreground", False)

    def check() -> None:
        if background:
            step_aside()
        if should_cancel():
            raise Cancelled

    return check


def chunked(numel: int, task: Callable[[int, int], np.ndarray], should_cancel: Callable[[], bool]) -> np.ndarray:
    """Rows of `task(start, stop)` over element chunks, run in parallel; stops when cancelled."""
    check = chunk_guard(should_cancel)

    def guarded(start: int) -> np.ndarray:
        check()
        return task(start, min(start + CHUNK, numel))

    starts = range(0, numel, CHUNK)
    rows = [guarded(0)] if len(starts) == 1 else list(pool().map(guarded, starts))
    return np.stack(rows)


def extremes(x: np.ndarray, row: np.ndarray, base: int) -> None:
    """Min and max of the finite values, by numpy's SIMD reductions."""
    if row[base + c.N] == 0:
        row[base + c.LO], row[base + c.HI] = math.inf, -math.inf
        return
    if row[base + c.N] < x.size:
        x = x[np.isfinite(x)]
    row[base + c.LO], row[base + c.HI] = x.min(), x.max()


def side_row(x: np.ndarray) -> np.ndarray:
    from weightscope.compare import kernels

    row = np.zeros(c.SIDE)
    kernels.side_chunk(x, row)
    extremes(x, row, 0)
    return row


def pair_row(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    from weightscope.compare import kernels

    row = np.zeros(c.PAIR)
    kernels.pair_chunk(a, b, atol, rtol, row)
    extremes(a, row, c.A)
    extremes(b, row, c.B)
    row[c.D + c.MAXABS], row[c.D + c.ARGMAX] = -1.0, -1
    if row[c.D + c.BOTH]:
        row[c.D + c.MAXABS], row[c.D + c.ARGMAX] = largest_change(a, b, row[c.D + c.BOTH] < a.size)
    return row


def largest_change(a: np.ndarray, b: np.ndarray, nonfinite: bool) -> tuple[float, int]:
    """max |b − a| where both are finite, and its first index; in float64 only when the
    chunk's own type overflows (two finite float32 values can be more than float32 apart)."""
    for dtype in (np.result_type(a, b), np.float64):
        with np.errstate(invalid="ignore", over="ignore"):  # Inf − Inf and overflow are masked or redone
            delta = np.abs(np.subtract(b, a, dtype=dtype))
        if nonfinite:
            delta[~(np.isfinite(a) & np.isfinite(b))] = -1.0
        where = int(delta.argmax())
        if delta[where] < np.inf:
            break
    return float(delta[where]), where


def side_rows(raw: np.ndarray, dtype: str, should_cancel: Callable[[], bool] = lambda: False) -> np.ndarray:
    size = itemsize(dtype)
    numel = raw.size // size

    def task(start: int, stop: int) -> np.ndarray:
        return side_row(to_float(raw[start * size:stop * size], dtype))

    return chunked(numel, task, should_cancel) if numel else np.zeros((0, c.SIDE))


def merge_side(rows: np.ndarray) -> SideStats:
    """One side's figures from its chunk rows (`columns.SIDE` wide)."""
    finite, nan, posinf, neginf, zeros = (int(rows[:, k].sum()) for k in (c.N, c.NAN, c.POSINF, c.NEGINF, c.ZEROS))
    if finite == 0:
        return SideStats(None, None, None, None, None, None, nan, posinf, neginf, zeros, 0)
    rows = rows[rows[:, c.N] > 0]
    n = rows[:, c.N]
    means = rows[:, c.SHIFT] + rows[:, c.S1] / n
    m2s = np.maximum(rows[:, c.S2] - rows[:, c.S1] ** 2 / n, 0.0)
    mean = float((n * means).sum() / finite)
    m2 = float((m2s + n * (means - mean) ** 2).sum())
    lo, hi = float(rows[:, c.LO].min()), float(rows[:, c.HI].max())
    l2 = math.sqrt(float((m2s + n * means ** 2).sum()))
    return SideStats(lo, hi, mean, math.sqrt(m2 / finite), max(abs(lo), abs(hi)), l2,
                     nan, posinf, neginf, zeros, finite)


def side_stats(raw: np.ndarray, dtype: str, should_cancel: Callable[[], bool] = lambda: False) -> SideStats:
    """Statistics of one tensor from its raw bytes."""
    return merge_side(side_rows(raw, dtype, should_cancel))


def identical_diff(numel: int, side: SideStats, atol: float, rtol: float) -> DiffStats:
    """The difference of a pair whose bytes are equal: zero, known without decoding the pair."""
    if numel == 0:
        return empty_diff(atol, rtol)
    undefined = {"max_abs_index": "nothing changed", "snr_db": "nothing changed"}
    if side.finite == 0:
        undefined.update(dict.fromkeys(("max_abs", "mean_abs", "rms", "rel_l2", "snr_db", "cosine"),
                                       "no position is finite on both sides"))
        return DiffStats(None, None, None, None, None, None, None, 0.0, 0, 0, atol, rtol, undefined)
    if not side.l2:
        undefined.update(rel_l2="‖A‖ = 0; see max_abs and rms", snr_db="‖A‖ = 0; see max_abs and rms",
                         cosine="one side is all zeros")
    return DiffStats(0.0, None, 0.0, 0.0, 0.0 if side.l2 else None, None, 1.0 if side.l2 else None, 0.0, 0, 0,
                     atol, rtol, undefined)


def empty_diff(atol: float, rtol: float) -> DiffStats:
    why = "the tensor has no elements"
    return DiffStats(None, None, None, None, None, None, None, None, 0, 0, atol, rtol,
                     dict.fromkeys(("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine",
                                    "changed_fraction"), why))


def merge_pair(rows: np.ndarray, starts: np.ndarray, shape: tuple[int, ...], atol: float, rtol: float
               ) -> tuple[SideStats, SideStats, DiffStats]:
    """Both sides' and the difference's figures from a pair's chunk rows (`columns.PAIR` wide)."""
    numel = math.prod(shape)
    side_a, side_b = merge_side(rows[:, c.A:c.A + c.SIDE]), merge_side(rows[:, c.B:c.B + c.SIDE])
    if numel == 0:
        return side_a, side_b, empty_diff(atol, rtol)
    d = rows[:, c.D:]
    both = int(d[:, c.BOTH].sum())
    changed, mismatched = int(d[:, c.CHANGED].sum()), int(d[:, c.MISMATCHED].sum())
    undefined: dict[str, str] = {}
    if both == 0:
        why = "no position is finite on both sides"
        undefined = dict.fromkeys(("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine"),
                                  why)
        diff = DiffStats(None, None, None, None, None, None, None, changed / numel, changed, mismatched,
                         atol, rtol, undefined)
        return side_a, side_b, diff
    best = int(np.argmax(d[:, c.MAXABS]))  # the first chunk holding the largest |Δ|
    max_abs = float(d[best, c.MAXABS])
    index = None
    if max_abs > 0:
        flat = int(starts[best] + d[best, c.ARGMAX])
        index = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
    else:
        undefined["max_abs_index"] = "nothing changed"
    sumsq, aa, bb, ab = (float(d[:, k].sum()) for k in (c.SUMSQ, c.AA, c.BB, c.AB))
    rel_l2 = math.sqrt(sumsq) / math.sqrt(aa) if aa > 0 else None
    snr_db = 10 * math.log10(aa / sumsq) if aa > 0 and sumsq > 0 else None
    if aa == 0:
        undefined["rel_l2"] = undefined["snr_db"] = "‖A‖ = 0; see max_abs and rms"
    elif sumsq == 0:
        undefined["snr_db"] = "nothing changed"
    cosine = ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else None
    if cosine is None:
        undefined["cosine"] = "one side is all zeros"
    else:
        cosine = max(-1.0, min(1.0, cosine))
    diff = DiffStats(max_abs, index, float(d[:, c.SUMABS].sum()) / both, math.sqrt(sumsq / both), rel_l2, snr_db,
                     cosine, changed / numel, changed, mismatched, atol, rtol, undefined)
    return side_a, side_b, diff


def pair_stats(raw_a: np.ndarray, dtype_a: str, raw_b: np.ndarray, dtype_b: str, shape: tuple[int, ...],
               atol: float, rtol: float, should_cancel: Callable[[], bool] = lambda: False
               ) -> tuple[SideStats, SideStats, DiffStats]:
    """Statistics of A, of B and of B − A, in one pass over both (same shape, any dtypes)."""
    size_a, size_b = itemsize(dtype_a), itemsize(dtype_b)
    numel = math.prod(shape)

    def task(start: int, stop: int) -> np.ndarray:
        a = to_float(raw_a[start * size_a:stop * size_a], dtype_a)
        b = to_float(raw_b[start * size_b:stop * size_b], dtype_b)
        if a.dtype != b.dtype:
            a, b = a.astype(np.float64), b.astype(np.float64)
        return pair_row(a, b, atol, rtol)

    rows = chunked(numel, task, should_cancel) if numel else np.zeros((0, c.PAIR))
    return merge_pair(rows, np.arange(0, numel, CHUNK), shape, atol, rtol)


def sample(raw: np.ndarray, dtype: str, count: int = SAMPLE) -> np.ndarray:
    """About `count` evenly spaced finite values as float64 (all of them for small tensors)."""
    values = sample_positions(raw, dtype, count)
    return values[np.isfinite(values)]


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


def histogram_rows(numel: int, count_chunk, should_cancel: Callable[[], bool]) -> np.ndarray:
    """Counts (then below, above) summed over element chunks counted in parallel."""
    return chunked(numel, count_chunk, should_cancel).sum(axis=0)


def as_histogram(lo: float, hi: float, row: np.ndarray) -> Histogram:
    return Histogram(lo, hi, tuple(int(c) for c in row[:-2]), int(row[-2]), int(row[-1]))


def side_histogram(raw: np.ndarray, dtype: str, lo: float, hi: float, bins: int,
                   should_cancel: Callable[[], bool]) -> Histogram:
    from weightscope.compare import kernels

    size = itemsize(dtype)

    def count(start: int, stop: int) -> np.ndarray:
        row = np.zeros(bins + 2, np.int64)
        kernels.histogram_chunk(to_float(raw[start * size:stop * size], dtype), lo, hi, row)
        return row

    return as_histogram(lo, hi, histogram_rows(raw.size // size, count, should_cancel))


def diff_histogram(raw_a: np.ndarray, dtype_a: str, raw_b: np.ndarray, dtype_b: str, lo: float, hi: float,
                   bins: int, should_cancel: Callable[[], bool]) -> Histogram:
    from weightscope.compare import kernels

    size_a, size_b = itemsize(dtype_a), itemsize(dtype_b)

    def count(start: int, stop: int) -> np.ndarray:
        row = np.zeros(bins + 2, np.int64)
        a = to_float(raw_a[start * size_a:stop * size_a], dtype_a)
        b = to_float(raw_b[start * size_b:stop * size_b], dtype_b)
        if a.dtype != b.dtype:
            a, b = a.astype(np.float64), b.astype(np.float64)
        kernels.diff_histogram_chunk(a, b, lo, hi, row)
        return row

    return as_histogram(lo, hi, histogram_rows(raw_a.size // size_a, count, should_cancel))


def histograms(raw_a: np.ndarray | None, dtype_a: str | None, raw_b: np.ndarray | None, dtype_b: str | None,
               bins: int = HISTOGRAM_BINS, should_cancel: Callable[[], bool] = lambda: False,
               identical: bool = False) -> dict[str, Histogram]:
    """Histograms of A and B on one shared range and, for a same-shape pair, of B − A.

    Args:
        identical: the two sides' bytes are equal: B's histogram is A's, and there is no Δ to draw.

    Returns:
        {"a": ..., "b": ..., "diff": ...}, each present when its side has finite values.
    """
    sides = {k: (raw, dtype) for k, raw, dtype in (("a", raw_a, dtype_a), ("b", raw_b, dtype_b)) if raw is not None}
    if identical:
        sides.pop("b")
    samples = {k: sample(raw, dtype) for k, (raw, dtype) in sides.items()}
    out: dict[str, Histogram] = {}
    shared = value_range(*samples.values())
    if shared is not None:
        for k, (raw, dtype) in sides.items():
            out[k] = side_histogram(raw, dtype, *shared, bins, should_cancel)
        if identical:
            out["b"] = out["a"]
    if len(sides) == 2 and raw_a.size // itemsize(dtype_a) == raw_b.size // itemsize(dtype_b):
        a, b = sample_positions(raw_a, dtype_a, SAMPLE), sample_positions(raw_b, dtype_b, SAMPLE)
        with np.errstate(invalid="ignore"):  # Inf − Inf: dropped, not worth a warning
            deltas = b - a
        spread = value_range(deltas[np.isfinite(deltas)])
        if spread is not None:
            out["diff"] = diff_histogram(raw_a, dtype_a, raw_b, dtype_b, *spread, bins, should_cancel)
    return out


def sample_positions(raw: np.ndarray, dtype: str, count: int) -> np.ndarray:
    """Values at evenly spaced positions (non-finite included, so two sides stay aligned)."""
    size = itemsize(dtype)
    numel = raw.size // size
    step = max(1, numel // count)
    if dtype == "bfloat16" or dtype in NUMPY_TYPES:
        typed = raw.view(np.uint16 if dtype == "bfloat16" else NUMPY_TYPES[dtype])
        return to_float(np.ascontiguousarray(typed[::step]).view(np.uint8), dtype).astype(np.float64)
    return to_float(raw, dtype)[::step].astype(np.float64)
