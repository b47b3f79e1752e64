"""Running the scan's units, and turning what they sum into results.

`run_unit` does one unit of a plan (`plan.py`) in whichever process holds it: a worker of
the engine, or this one for `scan`. A span unit is a few `pread`s into buffers the process
reuses and one kernel call; an object unit reads its pairs through their checkpoints'
sources. `Assembler` takes unit outputs in any order, merges the pieces of each pair once
all have come, and hands on the results as `Batch`es of rows. Nothing here makes an object
per tensor on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from weightscope.compare import catalog as cat
from weightscope.compare import columns as c
from weightscope.compare import pieces
from weightscope.compare import plan as plans
from weightscope.compare import results, stats
from weightscope.compare.align import Alignment, Pair, SameNames
from weightscope.compare.catalog import Catalog
from weightscope.compare.options import ScanOptions
from weightscope.compare.reading import InFile, ShortRead, read_into
from weightscope.compare.results import Batch, PairResult, ResultTable
from weightscope.compare.stats import Cancelled, Unsupported
from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorUnreadable


@dataclass
class UnitOutput:
    """What a unit found: piece rows (a span unit), finished results (an object unit), or why
    its files could not be read."""

    number: int
    rows: np.ndarray | None = None
    flags: np.ndarray | None = None
    batch: Batch | None = None
    error: str | None = None


class Buffers:
    """The two read buffers of a process, grown to the largest unit and reused."""

    def __init__(self):
        self.sides = [np.empty(0, np.uint8), np.empty(0, np.uint8)]

    def get(self, side: int, size: int) -> np.ndarray:
        if self.sides[side].size < size:
            self.sides[side] = np.empty(max(size, plans.UNIT_BYTES), np.uint8)
        return self.sides[side][:size]


buffers = Buffers()


def run_unit(unit: plans.Unit | plans.ObjectUnit, opened: Opener | None = None,
             options: ScanOptions = ScanOptions(), should_cancel: Callable[[], bool] = lambda: False) -> UnitOutput:
    """Do one unit.

    Args:
        opened: for object units, a function giving the open checkpoints (A, B; B is A when
            one checkpoint is browsed alone).
    """
    if isinstance(unit, plans.ObjectUnit):
        found = []
        for job in unit.pairs:
            if should_cancel():
                raise Cancelled
            found.append(compare_pair(job, opened, options, should_cancel))
        return UnitOutput(unit.number, batch=Batch.join(found))
    try:
        buf_a = buffers.get(0, unit.sizes[0])
        for read in unit.reads[0]:
            read_into(read.path, read.offset, buf_a[read.at:read.at + read.length])
        buf_b = buf_a if unit.same_buffer else buffers.get(1, unit.sizes[1])
        for read in unit.reads[1]:
            read_into(read.path, read.offset, buf_b[read.at:read.at + read.length])
    except (ShortRead, OSError) as exc:
        return UnitOutput(unit.number, error=str(exc) if isinstance(exc, ShortRead) else f"{exc.filename}: {exc.strerror}")
    rows, flags = stats.run_pieces(buf_a, buf_b, unit.pieces, unit.tolerances)
    return UnitOutput(unit.number, rows, flags)


class Assembler:
    """Results from unit outputs: a pair's pieces are merged once all of them are in."""

    def __init__(self, catalog: Catalog, plan: plans.Plan):
        self.catalog, self.plan = catalog, plan
        self.expected = plan.pieces
        self.received = np.zeros(len(catalog), np.int64)
        self.waiting: dict[int, tuple[np.ndarray, ...]] = {}  # unit -> (owners, starts, rows, flags) held
        self.failed: set[int] = set()
        self.numel = catalog.numel

    def add(self, output: UnitOutput) -> Batch:
        """The results this output completes (in pair order)."""
        return self.with_ties(self.completed(output)).sorted()

    def with_ties(self, batch: Batch) -> Batch:
        """The batch, and the same results for the names tied to its pairs."""
        ties = self.plan.ties
        if not ties or not len(batch):
            return batch
        found = [(j, row) for row, i in enumerate(batch.index.tolist()) for j in ties.get(i, ())]
        if not found:
            return batch
        tied, rows = (np.array(x, np.int64) for x in zip(*found))
        return Batch.join([batch, Batch(tied, batch.status[rows], batch.values[rows])])

    def completed(self, output: UnitOutput) -> Batch:
        if output.batch is not None:
            return output.batch
        unit = self.plan.units[output.number]
        owners = unit.owners
        if output.error is not None:
            fresh = sorted(set(owners.tolist()) - self.failed)
            self.failed.update(fresh)
            return Batch.join([Batch.of(i, results.ERROR, error=output.error) for i in fresh])
        np.add.at(self.received, owners, 1)
        done = self.received[owners] == self.expected[owners]
        if self.failed:
            done &= ~np.isin(owners, list(self.failed))
        starts = unit.pieces[:, pieces.START]
        if not done.all():  # pieces of pairs that go on in other units wait for them
            self.waiting[output.number] = (owners[~done], starts[~done], output.rows[~done], output.flags[~done])
        if not done.any():
            return Batch.empty()
        parts = [(owners[done], starts[done], output.rows[done], output.flags[done])]
        for number in list(self.waiting):  # earlier pieces of the pairs finished now
            held = self.waiting[number]
            mine = np.isin(held[0], owners[done])
            if mine.any():
                parts.append(tuple(x[mine] for x in held))
                rest = tuple(x[~mine] for x in held)
                if len(rest[0]):
                    self.waiting[number] = rest
                else:
                    del self.waiting[number]
        owner, start, rows, flags = (np.concatenate([p[j] for p in parts]) for j in range(4))
        order = np.lexsort((start, owner))  # a pair's pieces in element order: the first largest |Δ| wins
        pairs, merged, merged_flags = stats.merge(rows[order], flags[order], owner[order])
        return self.finish(pairs, merged, merged_flags)

    def finish(self, pairs: np.ndarray, rows: np.ndarray, flags: np.ndarray) -> Batch:
        values = stats.figures(rows, flags, self.numel[pairs], self.plan.tolerances[pairs])
        return Batch(pairs.astype(np.int64), statuses(self.catalog.known[pairs], flags, values), values)


def statuses(known: np.ndarray, flags: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scan statuses from what the headers said and what the pieces found."""
    changed, mismatched = values[:, c.FD + c.FCHANGED], values[:, c.FD + c.FMISMATCHED]
    out = np.where((flags & pieces.EQUAL) != 0, results.IDENTICAL,
                   np.where(changed == 0, results.VALUE_EQUAL,
                            np.where(mismatched == 0, results.CLOSE, results.CHANGED)))
    out = np.where(known == cat.ONLY_A, results.ONLY_A, out)
    out = np.where(known == cat.ONLY_B, results.ONLY_B, out)
    out = np.where(known == cat.SHAPE_MISMATCH, results.SHAPE_MISMATCH, out)
    return out.astype(np.int8)


# One pair at a time (object units, and what a person asks about one tensor)


@dataclass(frozen=True)
class PairJob:
    """All a worker needs to read one pair without the catalog.

    Attributes:
        plain: per side, whether its bytes are a plain span of its file (then read here,
            without opening the checkpoint), else read through its checkpoint's source.
        known: what the headers said (`catalog.KNOWN` code).
    """

    index: int
    pair: Pair
    plain: tuple[bool, bool]
    known: int

    @staticmethod
    def of(catalog: Catalog, i: int) -> PairJob:
        return PairJob(i, catalog.pair(i), (bool(catalog.a.plain[i]), bool(catalog.b.plain[i])),
                       int(catalog.known[i]))

    @property
    def needs_sources(self) -> bool:
        """Some side must be read through its checkpoint (quantized, computed, unpickled, ...)."""
        return any(info is not None and not plain for info, plain in zip((self.pair.a, self.pair.b), self.plain))

    @property
    def numel(self) -> int:
        return (self.pair.a or self.pair.b).numel


Opener = Callable[[], tuple[Checkpoint, Checkpoint]]


def side_bytes(job: PairJob, side: int, opened: Opener):
    """A side's bytes: read from its file where they are a plain span, else from its source."""
    info = job.pair.a if side == 0 else job.pair.b
    if job.plain[side]:
        return InFile(info.file, info.span[0], info.span[1] - info.span[0])
    return opened()[side].raw(info.name)


def summed_pair(job: PairJob, opened: Opener, options: ScanOptions,
                should_cancel: Callable[[], bool]) -> tuple[np.ndarray, int]:
    """The merged row and flags of a pair."""
    pair = job.pair
    same_shape = pair.a is not None and pair.b is not None and pair.a.shape == pair.b.shape
    raw_a = side_bytes(job, 0, opened) if pair.a is not None else None
    raw_b = side_bytes(job, 1, opened) if pair.b is not None else None
    atol, rtol = stats.tolerance(pair.a and pair.a.dtype, pair.b and pair.b.dtype, options.atol, options.rtol)
    if options.device != "cpu":
        from weightscope.compare import device

        a, b = opened()
        equal = same_shape and pair.a.dtype == pair.b.dtype and \
            np.array_equal(a.raw(pair.a.name), b.raw(pair.b.name))
        tensors = [side.load(info.name) if info is not None else None for side, info in ((a, pair.a), (b, pair.b))]
        if equal:  # summed once, as on the CPU: B is A and the difference is zero
            from weightscope.compare.kernels import equal_piece

            row, flags = device.summed(tensors[0], None, False, atol, rtol, options.device, should_cancel)
            equal_piece(row)
            return row, flags | pieces.HAS_B | pieces.HAS_D | pieces.EQUAL
        return device.summed(*tensors, same_shape, atol, rtol, options.device, should_cancel)
    if same_shape:
        return stats.summed(stats.Sides(raw_a, pair.a.dtype, raw_b, pair.b.dtype), atol, rtol, should_cancel)
    row, flags = np.zeros(c.PAIR), 0  # each side alone
    for raw, info, base in ((raw_a, pair.a, c.A), (raw_b, pair.b, c.B)):
        if raw is not None:
            sides = stats.Sides(raw, info.dtype, None, None) if base == c.A else stats.Sides(None, None, raw, info.dtype)
            side_row, side_flags = stats.summed(sides, atol, rtol, should_cancel)
            row[base:base + c.SIDE] = side_row[base:base + c.SIDE]
            flags |= side_flags
    return row, flags


def compare_pair(job: PairJob, opened: Opener, options: ScanOptions = ScanOptions(),
                 should_cancel: Callable[[], bool] = lambda: False, histograms: bool = False,
                 resized: bool = False) -> Batch:
    """The result of one pair (with its histograms, and the common and added parts of a
    resized pair, when asked).

    Raises:
        Cancelled: `should_cancel()` turned true.
    """
    i = job.index
    try:
        row, flags = summed_pair(job, opened, options, should_cancel)
    except (TensorUnreadable, ShortRead) as exc:
        return Batch.of(i, results.ERROR, error=str(exc))
    except Unsupported as exc:
        return unsupported(job, opened, str(exc))
    pair = job.pair
    tolerance = stats.tolerance(pair.a and pair.a.dtype, pair.b and pair.b.dtype, options.atol, options.rtol)
    values = stats.figures(row[None], np.array([flags], np.uint8), np.array([job.numel]), np.array([tolerance]))
    batch = Batch(np.array([i], np.int64), statuses(np.array([job.known]), np.array([flags]), values), values)
    if histograms:
        batch.histograms[i] = pair_histograms(job, opened, int(batch.status[0]), should_cancel)
    if resized and batch.status[0] == results.SHAPE_MISMATCH:
        from weightscope.compare import overlap

        found = overlap.compare(job, opened, options, should_cancel)
        if found is not None:
            batch.resized[i] = found
    return batch


def unsupported(job: PairJob, opened: Opener, why: str) -> Batch:
    """A pair of a type without statistics: its status from its bytes alone."""
    pair, known = job.pair, job.known
    if known in (cat.ONLY_A, cat.ONLY_B, cat.SHAPE_MISMATCH):
        status = {cat.ONLY_A: results.ONLY_A, cat.ONLY_B: results.ONLY_B}.get(known, results.SHAPE_MISMATCH)
        return Batch.of(job.index, status, notes=(why,))
    try:
        a, b = side_bytes(job, 0, opened), side_bytes(job, 1, opened)
        a, b = stats.as_bytes(a), stats.as_bytes(b)
        equal = pair.a.dtype == pair.b.dtype and a.size == b.size and \
            np.array_equal(a.window(0, a.size), b.window(0, b.size).copy())
    except (TensorUnreadable, ShortRead) as exc:
        return Batch.of(job.index, results.ERROR, error=str(exc))
    return Batch.of(job.index, results.IDENTICAL if equal else results.CHANGED, notes=(why,))


def pair_histograms(job: PairJob, opened: Opener, status: int,
                    should_cancel: Callable[[], bool] = lambda: False) -> dict:
    """Histograms of A, B and B − A of a pair (the sides that exist and have statistics)."""
    pair = job.pair
    if status == results.ERROR:
        return {}
    try:
        raw_a = side_bytes(job, 0, opened) if pair.a is not None else None
        raw_b = side_bytes(job, 1, opened) if pair.b is not None else None
        found = stats.histograms(raw_a, pair.a and pair.a.dtype, raw_b, pair.b and pair.b.dtype,
                                 should_cancel=should_cancel, identical=status == results.IDENTICAL)
    except (Unsupported, TensorUnreadable, ShortRead):
        return {}
    if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape:
        found.pop("diff", None)
    return found


# A whole scan in this process


def scan_catalog(catalog: Catalog, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions(),
                 progress: Callable[[int, int], None] | None = None,
                 should_cancel: Callable[[], bool] = lambda: False) -> ResultTable:
    """Every pair of a catalog, unit by unit, in this process (the engine spreads the same
    units over its workers). Stops quietly, with what it has, when cancelled."""
    plan = plans.build(catalog, options.atol, options.rtol, device=options.device)
    table = ResultTable(len(catalog))
    assembler = Assembler(catalog, plan)
    table.add(assembler.with_ties(plan.ready))
    done, total = 0, plan.nbytes
    try:
        for unit in plan.units:
            if should_cancel():
                break
            table.add(assembler.add(run_unit(unit, lambda: (a, b), options, should_cancel)))
            done += unit.nbytes
            if progress:
                progress(done, total)
    except Cancelled:
        pass
    if options.histograms:
        for i in np.flatnonzero(table.status != results.UNREAD).tolist():
            table.histograms[i] = pair_histograms(PairJob.of(catalog, i), lambda: (a, b), int(table.status[i]),
                                                  should_cancel)
    from weightscope.compare import overlap

    try:  # resized pairs: their common part and their added rows, a second pass each
        for i in overlap.qualifying(catalog, table.status):
            table.resized[i] = overlap.compare(PairJob.of(catalog, i), lambda: (a, b), options, should_cancel)
    except Cancelled:
        pass
    return table


def scan(alignment: Alignment, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions(),
         progress: Callable[[int, int], None] | None = None,
         should_cancel: Callable[[], bool] = lambda: False) -> list[PairResult]:
    """Compare every pair in this process; results in alignment order (only those finished when cancelled).

    Args:
        progress: called with (bytes done, bytes in all) after each unit of work.
    """
    catalog = cat.build(a, b, alignment)
    table = scan_catalog(catalog, a, b, options, progress, should_cancel)
    return [table.result(i, pair) for i, pair in enumerate(alignment.pairs) if table.status[i] != results.UNREAD]


def single_alignment(checkpoint: Checkpoint) -> Alignment:
    """One checkpoint browsed alone, as pairs of each tensor with itself: read once (its two
    sides share a buffer), with NaN and Inf found as in a comparison."""
    return Alignment(SameNames(checkpoint.tensors, checkpoint.tensors), [])


def inspect(checkpoint: Checkpoint, device: str = "cpu", progress: Callable[[int, int], None] | None = None,
            should_cancel: Callable[[], bool] = lambda: False) -> list[tuple[TensorInfo, stats.SideStats | None, str | None]]:
    """Statistics of every tensor of one checkpoint: (info, stats, error) in checkpoint order."""
    alignment = single_alignment(checkpoint)
    catalog = cat.build(checkpoint, None, alignment)
    table = scan_catalog(catalog, checkpoint, checkpoint, ScanOptions(device=device), progress, should_cancel)
    out = []
    for i, pair in enumerate(alignment.pairs):
        if table.status[i] == results.UNREAD:
            continue
        result = table.result(i, pair)
        # no statistics: unreadable (the error), or a type without them (the note says so)
        why = None if result.a is not None else result.error or next(iter(result.notes), None)
        out.append((pair.a, result.a, why))
    return out


def results_of(catalog: Catalog, table: ResultTable) -> Iterator[PairResult]:
    """Every read result as objects, in pair order (for reports on small models and for tests)."""
    for i in np.flatnonzero(table.status != results.UNREAD).tolist():
        yield table.result(i, catalog.pair(i))
