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
from dataclasses import dataclass, field

import numpy as np

from weightscope.compare import catalog as cat
from weightscope.compare import columns as c
from weightscope.compare import kernels as k
from weightscope.compare import plan as plans
from weightscope.compare import results, stats
from weightscope.compare.align import Alignment, Pair
from weightscope.compare.catalog import Catalog
from weightscope.compare.reading import InFile, ShortRead, read_into
from weightscope.compare.results import Batch, PairResult, ResultTable
from weightscope.compare.stats import Cancelled, Unsupported
from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorUnreadable


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


def run_unit(unit: plans.Unit | plans.ObjectUnit,
             opened: Callable[[], tuple[Checkpoint, Checkpoint, Catalog]] | None = None,
             options: ScanOptions = ScanOptions(), should_cancel: Callable[[], bool] = lambda: False) -> UnitOutput:
    """Do one unit.

    Args:
        opened: for object units, a function giving the open checkpoints and their catalog
            (A, B, catalog; B is A when browsing one checkpoint).
    """
    if isinstance(unit, plans.ObjectUnit):
        a, b, catalog = opened()
        found = []
        for i in unit.pairs:
            if should_cancel():
                raise Cancelled
            found.append(compare_pair(catalog, i, a, b, options, should_cancel))
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
        starts = unit.pieces[:, k.START]
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
    out = np.where((flags & k.EQUAL) != 0, results.IDENTICAL,
                   np.where(changed == 0, results.VALUE_EQUAL,
                            np.where(mismatched == 0, results.CLOSE, results.CHANGED)))
    out = np.where(known == cat.ONLY_A, results.ONLY_A, out)
    out = np.where(known == cat.ONLY_B, results.ONLY_B, out)
    out = np.where(known == cat.SHAPE_MISMATCH, results.SHAPE_MISMATCH, out)
    return out.astype(np.int8)


# One pair through its checkpoints' sources (object units, and the detail pane)


def side_bytes(checkpoint: Checkpoint, info: TensorInfo, plain: bool):
    """A side's bytes: read from its file where they are a plain span, else from its source."""
    if plain:
        return InFile(info.file, info.span[0], info.span[1] - info.span[0])
    return checkpoint.raw(info.name)


def summed_pair(catalog: Catalog, i: int, a: Checkpoint, b: Checkpoint, options: ScanOptions,
                should_cancel: Callable[[], bool]) -> tuple[np.ndarray, int, stats.Sides | None]:
    """The merged row and flags of pair i, and the sides it was read from."""
    pair = catalog.pair(i)
    same_shape = pair.a is not None and pair.b is not None and pair.a.shape == pair.b.shape
    raw_a = side_bytes(a, pair.a, bool(catalog.a.plain[i])) if pair.a is not None else None
    raw_b = side_bytes(b, pair.b, bool(catalog.b.plain[i])) if pair.b is not None else None
    atol, rtol = stats.tolerance(pair.a and pair.a.dtype, pair.b and pair.b.dtype, options.atol, options.rtol)
    if options.device != "cpu":
        from weightscope.compare import device

        equal = same_shape and pair.a.dtype == pair.b.dtype and \
            np.array_equal(a.raw(pair.a.name), b.raw(pair.b.name))
        tensors = [side.load(info.name) if info is not None else None for side, info in ((a, pair.a), (b, pair.b))]
        if equal:  # summed once, as on the CPU: B is A and the difference is zero
            row, flags = device.summed(tensors[0], None, False, atol, rtol, options.device, should_cancel)
            k.equal_piece(row)
            return row, flags | k.HAS_B | k.HAS_D | k.EQUAL, None
        row, flags = device.summed(*tensors, same_shape, atol, rtol, options.device, should_cancel)
        return row, flags, None
    if same_shape:
        sides = stats.Sides(raw_a, pair.a.dtype, raw_b, pair.b.dtype)
        row, flags = stats.summed(sides, atol, rtol, should_cancel)
        return row, flags, sides
    rows, flags = [], 0  # each side alone
    for raw, info, key in ((raw_a, pair.a, "a"), (raw_b, pair.b, "b")):
        if raw is not None:
            sides = stats.Sides(raw, info.dtype, None, None) if key == "a" else stats.Sides(None, None, raw, info.dtype)
            row, f = stats.summed(sides, atol, rtol, should_cancel)
            rows.append(row)
            flags |= f
    row = np.zeros(c.PAIR)
    if pair.a is not None:
        row[c.A:c.A + c.SIDE] = rows[0][c.A:c.A + c.SIDE]
    if pair.b is not None:
        row[c.B:c.B + c.SIDE] = rows[-1][c.B:c.B + c.SIDE]
    return row, flags, None


def compare_pair(catalog: Catalog, i: int, a: Checkpoint, b: Checkpoint, options: ScanOptions = ScanOptions(),
                 should_cancel: Callable[[], bool] = lambda: False, histograms: bool = False) -> Batch:
    """The result of pair i, read through its checkpoints' sources (and with histograms).

    Raises:
        Cancelled: `should_cancel()` turned true.
    """
    try:
        row, flags, sides = summed_pair(catalog, i, a, b, options, should_cancel)
    except TensorUnreadable as exc:
        return Batch.of(i, results.ERROR, error=str(exc))
    except ShortRead as exc:
        return Batch.of(i, results.ERROR, error=str(exc))
    except Unsupported as exc:
        return unsupported(catalog, i, a, b, str(exc))
    pair_atol, pair_rtol = stats.tolerance(catalog.a.dtype[i], catalog.b.dtype[i], options.atol, options.rtol)
    values = stats.figures(row[None], np.array([flags], np.uint8), catalog.numel[i:i + 1],
                           np.array([[pair_atol, pair_rtol]]))
    batch = Batch(np.array([i], np.int64), statuses(catalog.known[i:i + 1], np.array([flags]), values), values)
    if histograms:
        batch.histograms[i] = pair_histograms(catalog, i, a, b, int(batch.status[0]), should_cancel)
    return batch


def unsupported(catalog: Catalog, i: int, a: Checkpoint, b: Checkpoint, why: str) -> Batch:
    """A pair of a type without statistics: its status from its bytes alone."""
    pair = catalog.pair(i)
    known = int(catalog.known[i])
    if known in (cat.ONLY_A, cat.ONLY_B, cat.SHAPE_MISMATCH):
        status = {cat.ONLY_A: results.ONLY_A, cat.ONLY_B: results.ONLY_B}.get(known, results.SHAPE_MISMATCH)
    else:
        try:
            equal = pair.a.dtype == pair.b.dtype and np.array_equal(a.raw(pair.a.name), b.raw(pair.b.name))
        except TensorUnreadable as exc:
            return Batch.of(i, results.ERROR, error=str(exc))
        status = results.IDENTICAL if equal else results.CHANGED
    return Batch.of(i, status, notes=(why,))


def pair_histograms(catalog: Catalog, i: int, a: Checkpoint, b: Checkpoint, status: int,
                    should_cancel: Callable[[], bool] = lambda: False) -> dict:
    """Histograms of A, B and B − A of pair i (the sides that exist and have statistics)."""
    pair = catalog.pair(i)
    if status == results.ERROR:
        return {}
    raw_a = side_bytes(a, pair.a, bool(catalog.a.plain[i])) if pair.a is not None else None
    raw_b = side_bytes(b, pair.b, bool(catalog.b.plain[i])) if pair.b is not None else None
    try:
        found = stats.histograms(raw_a, pair.a and pair.a.dtype, raw_b, pair.b and pair.b.dtype,
                                 should_cancel=should_cancel,
                                 identical=status == results.IDENTICAL or catalog.single)
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
            table.add(assembler.add(run_unit(unit, lambda: (a, b, catalog), options, should_cancel)))
            done += unit.nbytes
            if progress:
                progress(done, total)
    except Cancelled:
        pass
    if options.histograms:
        for i in np.flatnonzero(table.status != results.UNREAD).tolist():
            table.histograms[i] = pair_histograms(catalog, i, a, b, int(table.status[i]), should_cancel)
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
    return Alignment([Pair(name, info, info) for name, info in checkpoint.tensors.items()], [])


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
