"""A training run's tensors as columns, and its scan cut into units for the engine's workers.

A `RunCatalog` lines up the names of every checkpoint of a run (the reference's first, then
names that appear later, in the order they appear) and holds, per checkpoint and tensor,
where its bytes lie and in what type. A tensor's *shape* is the reference's (or that of the
first checkpoint that has it); a checkpoint holding it in another shape has nothing
comparable there.

A `RunUnit` is one kernel call (`run_kernels.run_pieces`): pieces of tensors, every
checkpoint's bytes of each piece read once into one buffer, about `UNIT_BYTES` in all, a run
of small tensors or a stretch of a large one. Planned in numpy: no step of Python per tensor
and checkpoint but the lining up of names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightscope.compare import catalog as cat
from weightscope.compare import pieces
from weightscope.compare.catalog import SideSummary
from weightscope.compare.plan import Read, lay_out
from weightscope.compare.run_columns import ABSENT, ADDED, ERROR, PENDING, REMOVED, SHAPE_MISMATCH
from weightscope.sources.runs import OpenedRun, RunPoint

UNIT_BYTES = 32 << 20  # bytes of every checkpoint together per unit: a few tens of ms of work


@dataclass
class RunCatalog:
    """Every tensor of a run and where each checkpoint holds it.

    Attributes:
        names: each tensor's name (its index everywhere).
        points: the checkpoints, the reference first, then the steps in order.
        shape, numel: each tensor's shape (see the module's note) and its elements.
        dtype: per checkpoint, each tensor's stored type (None where it is absent).
        present, comparable: [checkpoint, tensor]: held at all; held in the tensor's shape as a
            plain span of its file in a type the loops decode (else not read).
        code, file, start: [checkpoint, tensor]: the loops' type code, the file (an index into
            `files`) and the byte offset of its data.
        known: [step, tensor] (steps only, not the reference): the status the headers give
            (`run_columns.STATUSES`), PENDING where the data decides.
        notes: how the run was opened (checkpoints skipped) and read.
    """

    names: tuple[str, ...]
    points: tuple[RunPoint, ...]
    summaries: tuple[SideSummary, ...]
    files: list[str]
    shape: tuple[tuple[int, ...] | None, ...]
    numel: np.ndarray
    dtype: tuple[tuple[str | None, ...], ...]
    present: np.ndarray
    comparable: np.ndarray
    code: np.ndarray
    file: np.ndarray
    start: np.ndarray
    known: np.ndarray
    errors: dict[tuple[int, int], str]
    notes: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def steps(self) -> int:
        return len(self.points) - 1

    def gaps(self) -> np.ndarray:
        """Each step's distance in steps from its predecessor (the reference counts as step 0
        when its name gives no number); NaN where a number is unknown."""
        numbers = [p.step for p in self.points]
        if numbers[0] is None and all(n is not None for n in numbers[1:]):
            numbers[0] = 0
        return np.array([b - a if a is not None and b is not None and b > a else np.nan
                         for a, b in zip(numbers[:-1], numbers[1:])], np.float64)


def build(run: OpenedRun) -> RunCatalog:
    """The catalog of an opened run."""
    from weightscope.compare.scan import single_alignment

    sides = [cat.build(ck, None, single_alignment(ck)) for ck in run.checkpoints]
    index: dict[str, int] = {}
    rows = []
    for side in sides:  # (a dict lookup per tensor and checkpoint: the one step of Python each)
        rows.append(np.fromiter((index.setdefault(name, len(index)) for name in side.names), np.int64, len(side)))
    names = tuple(index)
    n, count = len(names), len(sides)
    files: list[str] = []
    present = np.zeros((count, n), bool)
    readable = np.zeros((count, n), bool)
    code = np.full((count, n), -1, np.int64)
    file = np.full((count, n), -1, np.int32)
    start = np.full((count, n), -1, np.int64)
    shapes: list[list] = []
    dtypes = []
    errors: dict[tuple[int, int], str] = {}
    for k, (side, at) in enumerate(zip(sides, rows)):
        a = side.a
        present[k, at] = True
        codes = np.array([pieces.CODES.get(d, -1) if d else -1 for d in a.dtype], np.int64)
        ok = a.plain & (codes >= 0)
        ok[list(a.error)] = False
        readable[k, at] = ok
        code[k, at] = codes
        file[k, at] = a.file + len(files)
        start[k, at] = a.start
        files += side.files
        column: list = [None] * n
        for i, shape in zip(at.tolist(), a.shape):
            column[i] = shape
        shapes.append(column)
        dtype_column: list = [None] * n
        for j, (i, dtype) in enumerate(zip(at.tolist(), a.dtype)):
            dtype_column[i] = a.quant.get(j, dtype)
        dtypes.append(tuple(dtype_column))
        for i, error in a.error.items():
            errors[(k, int(at[i]))] = error
        for i in np.flatnonzero(a.present & ~ok & ~np.isin(np.arange(len(side)), list(a.error))).tolist():
            errors[(k, int(at[i]))] = f"{a.dtype[i]}: not a plain span of its file in a type a run's scan decodes"
    shape = tuple(next((column[i] for column in shapes if column[i] is not None), None) for i in range(n))
    same_shape = np.array([[column[i] == shape[i] for i in range(n)] for column in shapes], bool).reshape(count, n)
    comparable = readable & same_shape
    numel = np.array([int(np.prod(s)) if s is not None else 0 for s in shape], np.int64)

    known = np.full((count - 1, n), PENDING, np.int8)
    ref = present[0]
    for t in range(1, count):
        here = present[t]
        status = np.where(ref & here, PENDING, np.where(here, ADDED, np.where(ref, REMOVED, ABSENT)))
        status = np.where(ref & here & ~same_shape[t], SHAPE_MISMATCH, status)
        broken = here & same_shape[t] & (~readable[t] | (ref & ~comparable[0]))
        known[t - 1] = np.where(broken, ERROR, status)
    notes = list(run.notes)
    unread = int((present & ~readable).any(axis=0).sum())
    if unread:
        notes.append(f"{unread:,} tensors are not plain spans in a type the run's scan decodes "
                     "(quantized, computed or unpickled): not read, status error")
    return RunCatalog(names, tuple(run.points), tuple(side.summary_a for side in sides), files, shape, numel,
                      tuple(dtypes), present, comparable, code, file, start, known, errors, notes)


@dataclass
class RunUnit:
    """Pieces of tensors and where each checkpoint's bytes of them lie in one buffer.

    Attributes:
        reads: the file ranges to read into the buffer (`Read.at`).
        count, codes, offs, decoded: the kernel's tables (see `run_kernels.run_pieces`), over
            the plan's checkpoints (`RunPlan.members`).
        owners: the tensor each piece belongs to.
    """

    number: int
    reads: list[Read]
    size: int
    count: np.ndarray
    codes: np.ndarray
    offs: np.ndarray
    decoded: np.ndarray
    wanted: np.ndarray
    owners: np.ndarray
    nbytes: int


@dataclass
class RunPlan:
    """A run's scan: which checkpoints it reads (`members`, the reference first, each step it
    works out with its predecessor before it), which steps it works out (`wanted`), its units."""

    members: list[int]
    wanted: np.ndarray
    units: list[RunUnit]
    pieces: np.ndarray  # per tensor, how many pieces its units hold
    read_bytes: np.ndarray  # per member, the bytes read of it

    @property
    def nbytes(self) -> int:
        return int(self.read_bytes.sum())


def members_for(steps: list[int]) -> list[int]:
    """The checkpoints a scan of these steps reads: the reference, each step and its predecessor."""
    return sorted({0} | {t for step in steps for t in (step - 1, step)})


def plan(catalog: RunCatalog, steps: list[int]) -> RunPlan:
    """The units that work out `steps` (run indices, 1 for the first step after the reference)."""
    members = members_for(steps) if steps else []
    wanted = np.array([m in steps for m in members], bool)
    if not steps:
        return RunPlan([], wanted, [], np.zeros(len(catalog), np.int64), np.zeros(0, np.int64))
    m = np.array(members)
    comparable = catalog.comparable[m]
    rows = np.flatnonzero(comparable[wanted].any(axis=0))
    codes = np.where(comparable[:, rows], catalog.code[m][:, rows], 0)
    itemsize = np.where(comparable[:, rows], pieces.ITEMSIZES[codes], 0)
    decoded = (np.where(comparable[:, rows], codes, 0) < pieces.NARROW).all(axis=0)
    # in the order the reference's (else the first member's) data lies
    lead = np.argmax(comparable[:, rows], axis=0)
    order = np.lexsort((catalog.start[m][lead, rows], catalog.file[m][lead, rows]))
    rows, codes, itemsize, decoded = rows[order], codes[:, order], itemsize[:, order], decoded[order]

    numel = catalog.numel[rows]
    entry, element, length = pieces.cut(numel)
    owners = rows[entry]
    per_tensor = np.bincount(owners, minlength=len(catalog))
    nbytes = length[None, :] * itemsize[:, entry]  # [member, piece]
    total = nbytes.sum(axis=0)
    unit_of = (np.cumsum(total) - total) // UNIT_BYTES

    offs = np.full((len(members), len(entry)), -1, np.int64)
    reads_of: list[dict[int, list[Read]]] = []
    for j, member in enumerate(members):
        used = comparable[j, owners]
        reads, at = lay_out(unit_of, catalog.file[member, owners], catalog.start[member, owners]
                            + element * itemsize[j, entry], nbytes[j], used, catalog.files)
        offs[j] = np.where(used, at, -1)
        reads_of.append(reads)
    bounds = np.flatnonzero(np.r_[True, unit_of[1:] != unit_of[:-1], True])
    units = []
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        u = int(unit_of[lo])
        reads, base = [], 0
        unit_offs = offs[:, lo:hi].copy()
        for j in range(len(members)):  # each member's bytes after the one before's in the buffer
            mine = reads_of[j].get(u, [])
            reads += [Read(r.path, r.offset, r.length, r.at + base) for r in mine]
            unit_offs[j] = np.where(unit_offs[j] >= 0, unit_offs[j] + base, -1)
            base += sum(r.length for r in mine)
        units.append(RunUnit(number, reads, base, length[lo:hi], np.ascontiguousarray(codes[:, entry[lo:hi]].T),
                             np.ascontiguousarray(unit_offs.T), decoded[entry[lo:hi]], wanted, owners[lo:hi],
                             int(total[lo:hi].sum())))
    return RunPlan(members, wanted, units, per_tensor, nbytes.sum(axis=1))
