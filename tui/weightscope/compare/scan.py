"""One pass over every aligned pair: its status and statistics.

Pairs are visited in the order their data lies in A's files, so a shard is read front to
back. Pairs whose bytes are identical are decided by a byte compare and never decoded as a
pair; everything else goes through one fused statistics pass. Memory stays bounded by the
chunk size: tensors are read through file maps, never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from weightscope.compare import stats
from weightscope.compare.align import Alignment, Pair
from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorUnreadable
from weightscope.compare.stats import DiffStats, Histogram, SideStats

STATUSES = ("identical", "value_equal", "close", "changed", "shape_mismatch", "only_a", "only_b", "error")
COMPARE_CHUNK = 1 << 22  # bytes compared at a time: a short step between pause points


@dataclass(frozen=True)
class ScanOptions:
    """How pairs are compared.

    Attributes:
        atol, rtol: the tolerance of the `close` verdict; None for the dtype defaults.
        device: "cpu" (compiled kernels) or a torch device such as "cuda".
        histograms: also compute histograms (a second pass over each tensor).
    """

    atol: float | None = None
    rtol: float | None = None
    device: str = "cpu"
    histograms: bool = False


@dataclass(frozen=True)
class PairResult:
    """What the scan found for one pair.

    Attributes:
        status: one of `STATUSES`.
        error: why a side could not be read, for status `error`.
        a, b: each side's statistics, where that side exists and could be read.
        diff: statistics of B − A, for pairs of the same shape.
        notes: what else the user should know (unsupported dtypes, ...).
    """

    pair: Pair
    status: str
    error: str | None = None
    a: SideStats | None = None
    b: SideStats | None = None
    diff: DiffStats | None = None
    histograms: dict[str, Histogram] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two byte arrays are equal, read in chunks that stop at the first difference."""
    if x.size != y.size:
        return False
    for i in range(0, x.size, COMPARE_CHUNK):
        stats.yield_to_foreground()
        if not np.array_equal(x[i:i + COMPARE_CHUNK], y[i:i + COMPARE_CHUNK]):
            return False
    return True


def side_stats(checkpoint: Checkpoint, info: TensorInfo, device: str = "cpu",
               should_cancel: Callable[[], bool] = lambda: False) -> SideStats:
    """Statistics of one tensor of a checkpoint, on the CPU kernels or a torch device."""
    if device != "cpu":
        from weightscope.compare import device as torch_device

        return torch_device.side_stats(checkpoint.load(info.name), device, should_cancel)
    return stats.side_stats(checkpoint.raw(info.name), info.dtype, should_cancel)


class Comparer:
    """Compares pairs of two open checkpoints with one set of options."""

    def __init__(self, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions()):
        self.a, self.b, self.options = a, b, options

    def compare(self, pair: Pair, should_cancel: Callable[[], bool] = lambda: False) -> PairResult:
        """The status and statistics of one pair.

        Raises:
            stats.Cancelled: `should_cancel()` turned true.
        """
        try:
            return self._compare(pair, should_cancel)
        except TensorUnreadable as exc:
            return PairResult(pair, "error", str(exc))
        except stats.Unsupported as exc:
            return self._without_stats(pair, str(exc))

    def _compare(self, pair: Pair, should_cancel) -> PairResult:
        a, b = pair.a, pair.b
        errors = [f"{side}: {info.error}" for side, info in (("A", a), ("B", b)) if info and info.error]
        if errors:
            return PairResult(pair, "error", "; ".join(errors))
        if b is None or a is None or a.shape != b.shape:
            status = "only_a" if b is None else "only_b" if a is None else "shape_mismatch"
            sides = {side: side_stats(checkpoint, info, self.options.device, should_cancel)
                     for side, checkpoint, info in (("a", self.a, a), ("b", self.b, b)) if info is not None}
            return self._with_histograms(PairResult(pair, status, **sides), should_cancel)
        atol, rtol = stats.tolerance(a.dtype, b.dtype, self.options.atol, self.options.rtol)
        raw_a, raw_b = self.a.raw(a.name), self.b.raw(b.name)
        if a.dtype == b.dtype and same_bytes(raw_a, raw_b):
            side = side_stats(self.a, a, self.options.device, should_cancel)
            return self._with_histograms(PairResult(pair, "identical", a=side, b=side,
                                                    diff=stats.identical_diff(a.numel, side, atol, rtol)), should_cancel)
        if self.options.device != "cpu":
            from weightscope.compare import device

            side_a, side_b, diff = device.pair_stats(self.a.load(a.name), self.b.load(b.name), atol, rtol,
                                                     self.options.device, should_cancel)
        else:
            side_a, side_b, diff = stats.pair_stats(raw_a, a.dtype, raw_b, b.dtype, a.shape, atol, rtol, should_cancel)
        if diff.changed == 0:  # another dtype, or only ±0 and NaN payloads differ
            status = "value_equal"
        else:
            status = "close" if diff.mismatched == 0 else "changed"
        return self._with_histograms(PairResult(pair, status, a=side_a, b=side_b, diff=diff), should_cancel)

    def _with_histograms(self, result: PairResult, should_cancel) -> PairResult:
        if not self.options.histograms:
            return result
        return histograms_for(result, self.a, self.b, should_cancel)

    def _without_stats(self, pair: Pair, why: str) -> PairResult:
        """Status from bytes alone, for dtypes that have no statistics."""
        if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape:
            status = "only_b" if pair.a is None else "only_a" if pair.b is None else "shape_mismatch"
        else:
            equal = pair.a.dtype == pair.b.dtype and same_bytes(self.a.raw(pair.a.name), self.b.raw(pair.b.name))
            status = "identical" if equal else "changed"
        return PairResult(pair, status, notes=(why,))


def histograms_for(result: PairResult, a: Checkpoint, b: Checkpoint,
                   should_cancel: Callable[[], bool] = lambda: False) -> PairResult:
    """The result with histograms of A, B and B − A added (for the sides that exist)."""
    from dataclasses import replace

    pa, pb = result.pair.a, result.pair.b
    if result.status == "error" or (result.a is None and result.b is None):
        return result
    raw_a = a.raw(pa.name) if pa is not None else None
    raw_b = b.raw(pb.name) if pb is not None else None
    same_shape = pa is not None and pb is not None and pa.shape == pb.shape
    hists = stats.histograms(raw_a, pa and pa.dtype, raw_b, pb and pb.dtype, should_cancel=should_cancel,
                             identical=result.status == "identical")
    if not same_shape:
        hists.pop("diff", None)
    return replace(result, histograms=hists)


def file_order(pairs: list[Pair]) -> list[Pair]:
    """Pairs in the order their data lies in A's files (B's for pairs only in B)."""
    def key(pair: Pair):
        info = pair.a or pair.b
        return (info.file, info.span[0] if info.span else 0)

    return sorted(pairs, key=key)


def scan_iter(alignment: Alignment, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions(),
              should_cancel: Callable[[], bool] = lambda: False) -> Iterator[PairResult]:
    """Compare every pair in file order, yielding each result as it is found; stops quietly
    when `should_cancel()` turns true (polled between chunks)."""
    comparer = Comparer(a, b, options)
    for pair in file_order(alignment.pairs):
        stats.yield_to_foreground()  # between pairs too: a model can be 100,000 tiny tensors
        try:
            yield comparer.compare(pair, should_cancel)
        except stats.Cancelled:
            return


def scan(alignment: Alignment, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions(),
         progress: Callable[[int, int], None] | None = None,
         should_cancel: Callable[[], bool] = lambda: False) -> list[PairResult]:
    """Compare every pair; results come back in alignment order (only those finished when cancelled).

    Args:
        progress: called with (bytes done, bytes in all) after each pair.
    """
    total = sum(pair_bytes(p) for p in alignment.pairs)
    done = 0
    found: dict[int, PairResult] = {}
    for result in scan_iter(alignment, a, b, options, should_cancel):
        found[id(result.pair)] = result
        done += pair_bytes(result.pair)
        if progress:
            progress(done, total)
    return [found[id(p)] for p in alignment.pairs if id(p) in found]


def pair_bytes(pair: Pair) -> int:
    return sum(info.nbytes for info in (pair.a, pair.b) if info is not None and info.error is None)


def inspect(checkpoint: Checkpoint, device: str = "cpu", progress: Callable[[int, int], None] | None = None,
            should_cancel: Callable[[], bool] = lambda: False) -> list[tuple[TensorInfo, SideStats | None, str | None]]:
    """Statistics of every tensor of one checkpoint: (info, stats, error) in checkpoint order.

    Tied names share their first name's statistics rather than reading the data twice.
    """
    infos = list(checkpoint.tensors.values())
    total, done = sum(i.nbytes for i in infos if i.tied_to is None), 0
    found: dict[str, tuple[SideStats | None, str | None]] = {}
    for info in sorted(infos, key=lambda i: (i.file, i.span[0] if i.span else 0)):
        if info.error or info.tied_to:
            continue
        try:
            found[info.name] = (side_stats(checkpoint, info, device, should_cancel), None)
        except (TensorUnreadable, stats.Unsupported) as exc:
            found[info.name] = (None, str(exc))
        except stats.Cancelled:
            break
        done += info.nbytes
        if progress:
            progress(done, total)
    out = []
    for info in infos:
        side, error = found.get(info.tied_to or info.name, (None, info.error))
        if info.error or info.name in found or info.tied_to in found:
            out.append((info, side, error))
    return out
