"""The pairs of a comparison as columns, for everything above the engine.

`Pair` and `TensorInfo` objects are what the sources and the alignment produce, one per
tensor: right for reading files, wrong for 100,000 tensors in the app's process, where
building, moving and garbage-collecting them costs seconds. A `Catalog` holds the same facts
as tuples and arrays (one entry per pair, in alignment order), crosses a process boundary in
one message, and gives back a `Pair` for the one pair a view needs.

Columns of names, dtypes and shapes are tuples, not lists: the cyclic collector stops
looking into a tuple of strings once it has seen it, but walks a list's every item at every
full collection (tens of milliseconds for 100,000 names, time a key would wait for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from weightscope.compare.align import Alignment, Pair
from weightscope.sources.checkpoint import Checkpoint, TensorInfo
from weightscope.sources.dtypes import ITEMSIZE
from weightscope.sources.lora.checkpoint import adapter_parameters

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
    def of(checkpoint: Checkpoint, side: Side) -> SideSummary:
        """`side`: the checkpoint's column of the catalog, which holds each of its tensors once."""
        stored = side.readable  # (tied names counted once: where the data is stored)
        stored[list(side.tied_to)] = False
        return SideSummary(checkpoint.path, checkpoint.format, list(checkpoint.files), len(checkpoint.tensors),
                           int(side.numel[stored].sum()), int(side.nbytes[stored].sum()), list(checkpoint.notes),
                           list(checkpoint.extras), dict(checkpoint.metadata))


@dataclass
class Side:
    """One side's tensors, a column per field, an entry per pair (None/-1 where the pair lacks this side).

    Attributes:
        plain: the tensor's bytes are `span` of `file` exactly, in row-major order of `dtype`,
            so the scan may read them itself; otherwise its source computes them
            (dequantized, reordered, W + ΔW, unpickled).
        sparse fields: only the pairs that have one.
    """

    name: tuple[str | None, ...]
    dtype: tuple[str | None, ...]
    shape: tuple[tuple[int, ...] | None, ...]
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

    def file_names(self) -> tuple[str | None, ...]:
        """Each tensor's name as its file stores it (a script can look it up there)."""
        if not self.stored_name:
            return self.name
        return tuple(self.stored_name.get(i, name) for i, name in enumerate(self.name))


@dataclass
class Catalog:
    """Every pair of a comparison (or every tensor of one checkpoint browsed alone, paired with itself).

    Attributes:
        names: each pair's name, in alignment order (the index of a pair everywhere).
        files: every file either side reads (`Side.file` indexes it).
        known: what the headers alone say of each pair (`KNOWN` codes).
        factor: each pair that is a LoRA adapter's own parameter (a factor, a DoRA magnitude)
            shown beside the weights: browsable, but no difference between the models, so left
            out of counts, `n`/`N`, anomalies and exit statuses.
        pair_notes: notes on a pair (ties), by index.
        notes: how names were paired (mappings applied).
        single: one checkpoint browsed alone.
    """

    names: tuple[str, ...]
    a: Side
    b: Side
    files: list[str]
    known: np.ndarray
    factor: np.ndarray  # bool
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


def side_column(infos: list[TensorInfo | None], files: dict[str, int], checkpoint: Checkpoint) -> Side:
    """One side's columns, filled a column at a time: a comprehension per field, not a round of
    Python per tensor and field (100,000 tensors are the normal case)."""
    n = len(infos)
    at = [i for i, info in enumerate(infos) if info is not None]
    got = [infos[i] for i in at] if len(at) < n else infos

    def column(values: list, missing=None) -> list:
        if len(at) == n:
            return values
        out = [missing] * n
        for i, value in zip(at, values):
            out[i] = value
        return out

    def sparse(values: list) -> dict[int, str]:
        if values.count(None) == len(values):  # (nearly always: a pass in C)
            return {}
        return {i: value for i, value in zip(at, values) if value is not None}

    shapes = [info.shape for info in got]
    dtypes = [info.dtype for info in got]
    spans = [info.span or (-1, -1) for info in got]
    numel = [math.prod(shape) if shape is not None else 0 for shape in shapes]
    quant = sparse([info.quant for info in got])
    nbytes = [count * ITEMSIZE.get(dtype or "", 0) for count, dtype in zip(numel, dtypes)]
    side = Side(tuple(column([info.name for info in got])), tuple(column(dtypes)), tuple(column(shapes)),
                np.array(column([files.setdefault(info.file, len(files)) for info in got], -1), np.int32),
                np.array(column([s for s, _ in spans], -1), np.int64), np.array(column([e for _, e in spans], -1), np.int64),
                np.array(column(numel, 0), np.int64), np.array(column(nbytes, 0), np.int64),
                np.array(column(plain(checkpoint, got), False), bool), quant, sparse([info.error for info in got]),
                sparse([info.tied_to for info in got]), sparse([info.origin for info in got]),
                sparse([info.stored_name for info in got]))
    for i in quant:  # a quantized tensor's stored bytes are its span (its decoded size would overstate them)
        if side.start[i] >= 0:
            side.nbytes[i] = side.end[i] - side.start[i]
    return side


def plain(checkpoint: Checkpoint, infos: list[TensorInfo]) -> list[bool]:
    """Whether the scan may read each tensor's bytes straight from its file (see `Side.plain`)."""
    sources = checkpoint.sources
    return [info.span is not None and info.error is None and info.quant is None and info.origin is None
            and (source := sources.get(info.file)) is not None and source.plain(info) for info in infos]


def build(a: Checkpoint, b: Checkpoint | None, alignment: Alignment) -> Catalog:
    """The catalog of an alignment of A and B (B None: A browsed alone, each tensor paired with itself)."""
    pairs = alignment.pairs
    files: dict[str, int] = {}
    side_a = side_column([p.a for p in pairs], files, a)
    side_b = side_column([p.b for p in pairs], files, b if b is not None else a)
    pair_notes = {i: p.notes for i, p in enumerate(pairs) if p.notes}
    factors = adapter_parameters(a) | (adapter_parameters(b) if b is not None else set())
    factor = np.array([p.name in factors for p in pairs], bool) if factors else np.zeros(len(pairs), bool)
    return Catalog(tuple(p.name for p in pairs), side_a, side_b, list(files), known_column(side_a, side_b), factor,
                   SideSummary.of(a, side_a), SideSummary.of(b, side_b) if b is not None else None, list(alignment.notes),
                   pair_notes, b is None)


def known_column(a: Side, b: Side) -> np.ndarray:
    """What the headers alone say of each pair (`KNOWN`): a final status, or PENDING until its data is read.

    A computed tensor (W + ΔW) is float32 because it is computed in float32, not because
    anything stored changed type: only stored types count as a dtype change."""
    known = np.full(len(a.name), PENDING, np.int8)
    computed = set(a.origin) | set(b.origin)
    stored_change = [da != db for da, db in zip(a.dtype, b.dtype)]
    for side in (a, b):
        for i in side.quant:
            stored_change[i] = a.stored_dtype(i) != b.stored_dtype(i)
    known[[i for i, changed in enumerate(stored_change) if changed and i not in computed]] = DTYPE
    known[[i for i, (sa, sb) in enumerate(zip(a.shape, b.shape)) if sa != sb]] = SHAPE_MISMATCH
    present_a, present_b = a.present, b.present
    known[~present_a] = ONLY_B
    known[~present_b] = ONLY_A
    known[list(a.error) + list(b.error)] = ERROR
    return known
