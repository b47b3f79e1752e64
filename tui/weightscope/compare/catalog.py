"""The pairs of a comparison as columns, for everything above the engine.

`Pair` and `TensorInfo` objects are what the sources and the alignment produce, one per
tensor: right for reading files, wrong for 100,000 tensors in the app's process, where
building, moving and garbage-collecting them costs seconds. A `Catalog` holds the same facts
as lists and arrays (one entry per pair, in alignment order), crosses a process boundary in
one message, and gives back a `Pair` for the one pair a view needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weightscope.compare.align import Alignment, Pair
from weightscope.sources.checkpoint import Checkpoint, TensorInfo

# What the headers alone say about a pair (`known`): a final status, or PENDING until its data is read.
KNOWN = ("pending", "error", "only_a", "only_b", "shape_mismatch", "dtype")
PENDING, ERROR, ONLY_A, ONLY_B, SHAPE_MISMATCH, DTYPE = range(len(KNOWN))


@dataclass(frozen=True)
class SideSummary:
    """One checkpoint as a whole (what `diff`'s JSON says of each side)."""

    path: str
    format: str
    files: list[str]
    tensors: int
    parameters: int
    nbytes: int
    notes: list[str]
    extras: list[str]
    metadata: dict[str, str]

    @staticmethod
    def of(checkpoint: Checkpoint) -> SideSummary:
        return SideSummary(checkpoint.path, checkpoint.format, list(checkpoint.files), len(checkpoint.tensors),
                           checkpoint.parameters, checkpoint.nbytes, list(checkpoint.notes), list(checkpoint.extras),
                           dict(checkpoint.metadata))


@dataclass
class Side:
    """One side's tensors, a column per field, an entry per pair (None/-1 where the pair lacks this side).

    Attributes:
        plain: the tensor's bytes are `span` of `file` exactly, in row-major order of `dtype`,
            so the scan may read them itself; otherwise its source computes them
            (dequantized, reordered, W + ΔW, unpickled).
        sparse fields: only the pairs that have one.
    """

    name: list[str | None]
    dtype: list[str | None]
    shape: list[tuple[int, ...] | None]
    file: np.ndarray  # int32 index into `Catalog.files`
    start: np.ndarray  # int64 byte offset of the data (-1 without a span)
    end: np.ndarray
    numel: np.ndarray  # int64
    nbytes: np.ndarray  # int64, as stored
    plain: np.ndarray  # bool
    quant: dict[int, str] = field(default_factory=dict)
    error: dict[int, str] = field(default_factory=dict)
    tied_to: dict[int, str] = field(default_factory=dict)
    origin: dict[int, str] = field(default_factory=dict)
    stored_name: dict[int, str] = field(default_factory=dict)

    @property
    def present(self) -> np.ndarray:
        return np.array([n is not None for n in self.name], bool)

    @property
    def readable(self) -> np.ndarray:
        """Present and without an error from the headers."""
        mask = self.present
        mask[list(self.error)] = False
        return mask

    def stored_dtype(self, i: int) -> str | None:
        return self.quant.get(i) or self.dtype[i]

    def info(self, i: int, files: list[str]) -> TensorInfo | None:
        if self.name[i] is None:
            return None
        span = (int(self.start[i]), int(self.end[i])) if self.start[i] >= 0 else None
        return TensorInfo(self.name[i], self.dtype[i], self.shape[i], files[self.file[i]], span, self.tied_to.get(i),
                          self.error.get(i), self.origin.get(i), self.quant.get(i), self.stored_name.get(i))

    def file_names(self) -> list[str | None]:
        """Each tensor's name as its file stores it (a script can look it up there)."""
        if not self.stored_name:
            return self.name
        return [self.stored_name.get(i, name) for i, name in enumerate(self.name)]


@dataclass
class Catalog:
    """Every pair of a comparison (or every tensor of one checkpoint browsed alone, paired with itself).

    Attributes:
        names: each pair's name, in alignment order (the index of a pair everywhere).
        files: every file either side reads (`Side.file` indexes it).
        known: what the headers alone say of each pair (`KNOWN` codes).
        pair_notes: notes on a pair (ties), by index.
        notes: how names were paired (mappings applied).
        single: one checkpoint browsed alone.
    """

    names: list[str]
    a: Side
    b: Side
    files: list[str]
    known: np.ndarray
    summary_a: SideSummary
    summary_b: SideSummary | None
    notes: list[str]
    pair_notes: dict[int, tuple[str, ...]]
    single: bool = False
    _index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int) -> Pair:
        """Pair `i` as the sources gave it."""
        return Pair(self.names[i], self.a.info(i, self.files), self.b.info(i, self.files), self.pair_notes.get(i, ()))

    def index(self, name: str) -> int | None:
        """The pair of this name, if there is one."""
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        return self._index.get(name)

    def tied_elsewhere(self, i: int) -> bool:
        """On one side only, but tied to a tensor both sides have: not a real absence."""
        return any(note.startswith("tied to ") for note in self.pair_notes.get(i, ()))

    @property
    def numel(self) -> np.ndarray:
        """Elements of each pair (A's where there is an A)."""
        return np.where(self.a.present, self.a.numel, self.b.numel)

    @property
    def data_bytes(self) -> np.ndarray:
        """Bytes a scan reads for each pair (both sides, readable ones only; once alone)."""
        a = np.where(self.a.readable, self.a.nbytes, 0)
        return a if self.single else a + np.where(self.b.readable, self.b.nbytes, 0)


def side_column(infos: list[TensorInfo | None], files: dict[str, int], plain: list[bool]) -> Side:
    n = len(infos)
    side = Side([None] * n, [None] * n, [None] * n, np.full(n, -1, np.int32), np.full(n, -1, np.int64),
                np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.array(plain, bool))
    for i, info in enumerate(infos):
        if info is None:
            continue
        side.name[i], side.dtype[i], side.shape[i] = info.name, info.dtype, info.shape
        side.file[i] = files.setdefault(info.file, len(files))
        if info.span is not None:
            side.start[i], side.end[i] = info.span
        side.numel[i], side.nbytes[i] = info.numel, info.nbytes
        if info.quant is not None:
            side.quant[i] = info.quant
        if info.error is not None:
            side.error[i] = info.error
        if info.tied_to is not None:
            side.tied_to[i] = info.tied_to
        if info.origin is not None:
            side.origin[i] = info.origin
        if info.stored_name is not None:
            side.stored_name[i] = info.stored_name
    return side


def known_status(pair: Pair) -> int:
    """What the headers alone say about a pair: a final status, or PENDING until its data is read."""
    a, b = pair.a, pair.b
    if (a and a.error) or (b and b.error):
        return ERROR
    if b is None:
        return ONLY_A
    if a is None:
        return ONLY_B
    if a.shape != b.shape:
        return SHAPE_MISMATCH
    # A computed tensor (W + ΔW) is float32 because it is computed in float32, not because
    # anything stored changed type: only stored types count as a dtype change.
    stored_change = a.stored_dtype != b.stored_dtype and a.origin is None and b.origin is None
    return DTYPE if stored_change else PENDING


def plain(checkpoint: Checkpoint, info: TensorInfo | None) -> bool:
    """Whether the scan may read a tensor's bytes straight from its file (see `Side.plain`)."""
    if info is None or info.span is None or info.error is not None or info.quant is not None \
            or info.origin is not None:
        return False
    source = checkpoint.sources.get(info.file)
    return source is not None and source.plain(info)


def build(a: Checkpoint, b: Checkpoint | None, alignment: Alignment) -> Catalog:
    """The catalog of an alignment of A and B (B None: A browsed alone, each tensor paired with itself)."""
    pairs = alignment.pairs
    files: dict[str, int] = {}
    side_a = side_column([p.a for p in pairs], files, [plain(a, p.a) for p in pairs])
    other = b if b is not None else a
    side_b = side_column([p.b for p in pairs], files, [plain(other, p.b) for p in pairs])
    known = np.array([known_status(p) for p in pairs], np.int8)
    pair_notes = {i: p.notes for i, p in enumerate(pairs) if p.notes}
    return Catalog([p.name for p in pairs], side_a, side_b, list(files), known, SideSummary.of(a),
                   SideSummary.of(b) if b is not None else None, list(alignment.notes), pair_notes, b is None)
