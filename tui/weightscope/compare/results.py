"""What a scan found, as columns: a status and a row of figures per pair.

The scan hands results on in batches of rows (`Batch`), never as an object per tensor; a
`ResultTable` collects them in alignment order. `result(i)` gives one pair's `PairResult`
(its `SideStats` and `DiffStats`) when a view or a report needs the objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare.align import Pair
from weightscope.compare.stats import DiffStats, Histogram, SideStats, diff_of, side_of

if TYPE_CHECKING:
    from weightscope.compare.overlap import Resized

STATUSES = ("identical", "value_equal", "close", "changed", "shape_mismatch", "only_a", "only_b", "error")
CODE = {status: code for code, status in enumerate(STATUSES)}
IDENTICAL, VALUE_EQUAL, CLOSE, CHANGED, SHAPE_MISMATCH, ONLY_A, ONLY_B, ERROR = range(len(STATUSES))
UNREAD = -1


@dataclass(frozen=True)
class PairResult:
    """What the scan found for one pair.

    Attributes:
        status: one of `STATUSES`.
        error: why a side could not be read, for status `error`.
        a, b: each side's statistics, where that side exists and could be read.
        diff: statistics of B − A, for pairs of the same shape.
        notes: what else the user should know (unsupported dtypes, ...).
        resized: a pair resized in one dimension: its common part and its added rows.
    """

    pair: Pair
    status: str
    error: str | None = None
    a: SideStats | None = None
    b: SideStats | None = None
    diff: DiffStats | None = None
    histograms: dict[str, Histogram] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    resized: Resized | None = None


@dataclass
class Batch:
    """Results of some pairs: their indices, status codes and figure rows, and the rare extras."""

    index: np.ndarray  # int64
    status: np.ndarray  # int8
    values: np.ndarray  # float64, (len, columns.FIGURES)
    errors: dict[int, str] = field(default_factory=dict)  # by pair index
    notes: dict[int, tuple[str, ...]] = field(default_factory=dict)
    histograms: dict[int, dict[str, Histogram]] = field(default_factory=dict)
    resized: dict[int, Resized] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    @staticmethod
    def empty() -> Batch:
        return Batch(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros((0, c.FIGURES)))

    @staticmethod
    def of(index: int, status: int, values: np.ndarray | None = None, error: str | None = None,
           notes: tuple[str, ...] = ()) -> Batch:
        """The result of one pair (NaN figures unless given)."""
        row = np.full((1, c.FIGURES), np.nan) if values is None else values.reshape(1, c.FIGURES)
        return Batch(np.array([index], np.int64), np.array([status], np.int8), row,
                     {index: error} if error else {}, {index: notes} if notes else {})

    @staticmethod
    def join(batches: list[Batch]) -> Batch:
        batches = [b for b in batches if len(b)]
        if not batches:
            return Batch.empty()
        if len(batches) == 1:
            return batches[0]
        out = Batch(np.concatenate([b.index for b in batches]), np.concatenate([b.status for b in batches]),
                    np.concatenate([b.values for b in batches]))
        for b in batches:
            out.errors.update(b.errors)
            out.notes.update(b.notes)
            out.histograms.update(b.histograms)
            out.resized.update(b.resized)
        return out

    def sorted(self) -> Batch:
        """The same results in pair order."""
        order = np.argsort(self.index, kind="stable")
        return Batch(self.index[order], self.status[order], self.values[order], self.errors, self.notes,
                     self.histograms, self.resized)


class ResultTable:
    """The results of every pair of a catalog so far (status `UNREAD` until a pair is read)."""

    def __init__(self, size: int):
        self.status = np.full(size, UNREAD, np.int8)
        self.values = np.full((size, c.FIGURES), np.nan)
        self.errors: dict[int, str] = {}
        self.notes: dict[int, tuple[str, ...]] = {}
        self.histograms: dict[int, dict[str, Histogram]] = {}
        self.resized: dict[int, Resized] = {}  # pairs resized in one dimension, once their second pass is done

    def __len__(self) -> int:
        return len(self.status)

    def add(self, batch: Batch) -> None:
        self.status[batch.index] = batch.status
        self.values[batch.index] = batch.values
        for extras, new in ((self.errors, batch.errors), (self.notes, batch.notes)):
            if extras:  # a pair read again keeps none of its old extras
                for i in extras.keys() & set(batch.index.tolist()):
                    del extras[i]
        self.errors.update(batch.errors)
        self.notes.update(batch.notes)
        self.histograms.update(batch.histograms)
        self.resized.update(batch.resized)

    @property
    def read(self) -> int:
        """How many pairs have a result."""
        return int(np.count_nonzero(self.status != UNREAD))

    @property
    def complete(self) -> bool:
        return self.read == len(self)

    def batch(self, index: np.ndarray | None = None) -> Batch:
        """The results of these pairs (all read ones by default) as one batch."""
        if index is None:
            index = np.flatnonzero(self.status != UNREAD)
        wanted = set(index.tolist()) if len(index) < len(self) else None

        def keep(d: dict) -> dict:
            return {i: v for i, v in d.items() if wanted is None or i in wanted}

        return Batch(index.astype(np.int64), self.status[index], self.values[index], keep(self.errors),
                     keep(self.notes), keep(self.histograms), keep(self.resized))

    def result(self, i: int, pair: Pair) -> PairResult | None:
        """Pair `i`'s result as objects; None when it has not been read."""
        if self.status[i] == UNREAD:
            return None
        row = self.values[i]
        shape = (pair.a or pair.b).shape or ()
        return PairResult(pair, STATUSES[self.status[i]], self.errors.get(i), side_of(row, c.FA), side_of(row, c.FB),
                          diff_of(row, shape), self.histograms.get(i, {}), self.notes.get(i, ()), self.resized.get(i))
