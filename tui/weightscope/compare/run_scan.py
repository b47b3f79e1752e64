"""Running a run's units, and putting their pieces' sums together per tensor.

`run_unit` does one `RunUnit` in whichever process holds it: a few `pread`s into a buffer the
process reuses, and one kernel call. `RunAssembler` adds the pieces' rows into the tensors'
(sums add, the largest |s| is a maximum, bytes are equal where every piece's are) and says
which tensors are complete, so results go on as soon as a tensor's last piece is in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weightscope.compare.reading import ShortRead, read_into
from weightscope.compare.run_columns import ABSMAX, READ, SAME_PREV, SAME_REF, SUMS
from weightscope.compare.run_plan import RunPlan, RunUnit
from weightscope.compare.run_results import RunTable


@dataclass
class RunOutput:
    """A unit's rows of sums and flags per piece and member checkpoint, or why it could not be read."""

    number: int
    sums: np.ndarray | None = None
    same: np.ndarray | None = None
    error: str | None = None


class Buffer:
    """A process's read buffer and decoding scratch, grown to the largest unit and reused."""

    def __init__(self):
        self.data = np.empty(0, np.uint8)
        self.scratch = None

    def get(self, size: int) -> np.ndarray:
        if self.data.size < size:
            self.data = np.empty(size, np.uint8)
        return self.data[:size]


buffer = Buffer()


def run_unit(unit: RunUnit, should_cancel: Callable[[], bool] = lambda: False) -> RunOutput:
    from weightscope.compare import pieces
    from weightscope.compare.kernels import TABLES
    from weightscope.compare.run_kernels import run_pieces

    data = buffer.get(unit.size)
    try:
        for read in unit.reads:
            read_into(read.path, read.offset, data[read.at:read.at + read.length])
    except (ShortRead, OSError) as exc:
        return RunOutput(unit.number, error=str(exc) if isinstance(exc, ShortRead) else f"{exc.filename}: {exc.strerror}")
    if buffer.scratch is None:
        buffer.scratch = np.empty((3, pieces.PIECE), np.float32)
    sums = np.zeros((len(unit.count), unit.codes.shape[1], SUMS))
    same = np.zeros((len(unit.count), unit.codes.shape[1]), np.uint8)
    run_pieces(data, unit.count, unit.codes, unit.offs, unit.decoded, unit.wanted, sums, same, buffer.scratch, TABLES)
    return RunOutput(unit.number, sums, same)


class RunAssembler:
    """The sums of each tensor's pieces, added as units come in any order."""

    def __init__(self, table: RunTable, plan: RunPlan):
        self.table, self.plan = table, plan
        self.members = np.array(plan.members, np.int64)
        self.received = np.zeros(len(plan.pieces), np.int64)
        self.unequal = np.zeros((len(plan.pieces), len(plan.members)), np.uint8)  # bits some piece lacked
        self.failed: dict[int, str] = {}  # tensor -> why a unit of it could not be read

    def add(self, unit: RunUnit, output: RunOutput) -> np.ndarray:
        """The tensors this unit completes."""
        owners = unit.owners
        if output.error is not None:
            for i in set(owners.tolist()) - set(self.failed):
                self.failed[i] = output.error
        else:
            table, m = self.table, self.members
            wanted = m[self.plan.wanted]
            mine = np.isin(m, wanted) | (m == 0)  # the reference's own sums, and the steps worked out
            sums = output.sums[:, mine]
            for j, col in enumerate(m[mine].tolist()):
                block = sums[:, j]
                np.add.at(table.sums[:, col, :ABSMAX], owners, block[:, :ABSMAX])
                np.maximum.at(table.sums[:, col, ABSMAX], owners, block[:, ABSMAX])
                np.add.at(table.sums[:, col, ABSMAX + 1:], owners, block[:, ABSMAX + 1:])
            np.bitwise_or.at(self.unequal, owners, ~output.same & (READ | SAME_REF | SAME_PREV))
        np.add.at(self.received, owners, 1)
        done = np.unique(owners[self.received[owners] == self.plan.pieces[owners]])
        good = done[~np.isin(done, list(self.failed))] if self.failed else done
        for j, col in enumerate(self.members.tolist()):
            if col == 0 or self.plan.wanted[j]:
                self.table.same[good, col] = ~self.unequal[good, j] & (READ | SAME_REF | SAME_PREV)
        steps = self.members[self.plan.wanted]
        self.table.finish(good, steps)
        for i in done[np.isin(done, list(self.failed))].tolist() if self.failed else []:
            self.table.fail(i, steps, self.failed[i])
        return done


def scan_run(catalog, table: RunTable | None = None, steps: list[int] | None = None) -> RunTable:
    """Work out `steps` (all by default) of a run in this process (the engine spreads the same
    units over its workers)."""
    from weightscope.compare.run_plan import plan as plan_run

    table = RunTable(catalog) if table is None else table
    steps = list(range(1, len(catalog.points))) if steps is None else steps
    plan = plan_run(catalog, steps)
    assembler = RunAssembler(table, plan)
    for unit in plan.units:
        assembler.add(unit, run_unit(unit))
    return table
