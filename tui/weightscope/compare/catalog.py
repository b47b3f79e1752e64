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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from operator import is_, itemgetter, ne

import numpy as np

from weightscope.compare.align import Alignment, Pair, SameNames
from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorTable
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
    present: np.ndarray  # bool: which pairs have this side (read-only)
    quant: dict[int, str] = field(default_factory=dict)
    error: dict[int, str] = field(default_factory=dict)
    tied_to: dict[int, str] = field(default_factory=dict)
    origin: dict[int, str] = field(default_factory=dict)
    stored_name: dict[int, str] = field(default_factory=dict)

    @property
    def readable(self) -> np.ndarray:
        """Present and without an error from the headers."""
        mask = self.present.copy()
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

    def named(self, names: tuple[str, ...] | None) -> Catalog:
        """This catalog with `names` as its pairs' names, and as each side's that had the same
        ones; None leaves them out (to be sent where they are known already)."""
        a, b = (replace(side, name=names) if side.name is self.names else side for side in (self.a, self.b))
        return replace(self, names=names, a=a, b=b, _index=None)

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
    """One side's columns from its `TensorInfo`s (None where a pair lacks this side), transposed
    by `zip`: no round of Python per tensor and field (100,000 tensors are the normal case)."""
    n = len(infos)
    at = [i for i, info in enumerate(infos) if info is not None] if infos.count(None) else None
    got = [infos[i] for i in at] if at is not None else infos
    fields = dict(zip(TensorInfo._fields, zip(*got) if got else repeat((), len(TensorInfo._fields))))
    spans = fields.pop("span")
    if None in spans:
        spans = [span or (-1, -1) for span in spans]
    bounds = np.fromiter(chain.from_iterable(spans), np.int64, 2 * len(spans)).reshape(-1, 2)
    fields["start"], fields["end"] = bounds[:, 0], bounds[:, 1]
    return side_of(fields, plain(checkpoint, fields, lambda: got), n, at, files)


def table_column(table: TensorTable, names: list[str], files: dict[str, int], checkpoint: Checkpoint,
                 like: Side | None = None) -> Side:
    """One side's columns from a `TensorTable` holding every name of `names`, in that order;
    the columns it has equal to `like`'s (the other side's) are `like`'s own."""
    rows = None if table.names == names else list(map(table.index.__getitem__, names))

    def column(values: list | np.ndarray) -> list | np.ndarray:
        return values if rows is None else values[rows] if isinstance(values, np.ndarray) else list(map(values.__getitem__, rows))

    fields = {field: column(getattr(table, field)) for field in ("dtype", "shape", "file", "start", "end")}
    fields["name"] = table.names if rows is None else names
    return side_of(fields, plain(checkpoint, fields, lambda: list(map(table.__getitem__, names))), len(names), None,
                   files, like)


def side_of(fields: dict[str, tuple | list], plain: np.ndarray | list[bool], n: int, at: list[int] | None,
            files: dict[str, int], like: Side | None = None) -> Side:
    """A `Side` from its columns (`fields`: TensorInfo's, with `start` and `end` for `span`), for
    the rows `at` of `n` pairs (None: all of them); the optional fields may be absent. Shapes and
    dtypes equal to those of `like` (a side of every pair, without quantized tensors) are taken
    from it with what follows from them: one object for both sides, worked out and sent once."""

    def column(values, missing=None) -> list | tuple:
        if at is None:
            return values
        out = [missing] * n
        for i, value in zip(at, values):
            out[i] = value
        return out

    def sparse(name: str) -> dict[int, str]:
        values = fields.get(name, ())
        if values.count(None) == len(values):  # (nearly always)
            return {}
        rows = at if at is not None else range(n)
        return {i: value for i, value in zip(rows, values) if value is not None}

    def array(values, dtype, missing) -> np.ndarray:
        values = np.asarray(values, dtype)
        if at is None:
            return values
        out = np.full(n, missing, dtype)
        out[at] = values
        return out

    quant = sparse("quant")
    same = like is not None and at is None and not quant and not like.quant and like.shape == tuple(fields["shape"])
    if same:
        shapes, numel = like.shape, like.numel
    else:
        # A model has few shapes: each made one object (smaller to send and to keep), its size worked out once.
        kinds = list(dict.fromkeys(fields["shape"]))
        code = dict(zip(kinds, range(len(kinds))))
        which = np.fromiter(map(code.__getitem__, fields["shape"]), np.intp, len(fields["shape"]))
        shapes = tuple(map(kinds.__getitem__, which.tolist()))
        numel = np.array([math.prod(s) if s is not None else 0 for s in kinds], np.int64)[which]
    dtypes = fields["dtype"]
    if same and like.dtype == tuple(dtypes):
        dtypes, nbytes = like.dtype, like.nbytes
    else:
        nbytes = np.fromiter(map(ITEMSIZE.get, dtypes, repeat(0)), np.int64, len(dtypes)) * numel
    for path in dict.fromkeys(fields["file"]):
        files.setdefault(path, len(files))
    file = np.fromiter(map(files.__getitem__, fields["file"]), np.int32, len(fields["file"]))
    present = array(np.ones(len(fields["name"]), bool), bool, False)
    present.flags.writeable = False
    side = Side(tuple(column(fields["name"])), tuple(column(dtypes)), tuple(column(shapes)), array(file, np.int32, -1),
                array(fields["start"], np.int64, -1), array(fields["end"], np.int64, -1), array(numel, np.int64, 0),
                array(nbytes, np.int64, 0), array(plain, bool, False), present, quant, sparse("error"),
                sparse("tied_to"), sparse("origin"), sparse("stored_name"))
    for i in quant:  # a quantized tensor's stored bytes are its span (its decoded size would overstate them)
        if side.start[i] >= 0:
            side.nbytes[i] = side.end[i] - side.start[i]
    return side


def plain(checkpoint: Checkpoint, fields: dict, tensors: Callable[[], list[TensorInfo]]) -> np.ndarray | list[bool]:
    """Whether the scan may read each tensor's bytes straight from its file (see `Side.plain`):
    asked of each of `tensors()` of its source, unless every source says that its rule is the
    usual one (`MappedFile.PLAIN_BY_SPAN`), which is then applied to the columns (`fields`; a
    column left out holds None for every tensor)."""
    sources = checkpoint.sources
    if all(getattr(sources.get(path), "PLAIN_BY_SPAN", False) for path in dict.fromkeys(fields["file"])):
        mask = np.asarray(fields["start"]) >= 0
        for column in ("error", "quant", "origin"):
            values = fields.get(column, ())
            if values.count(None) < len(values):
                mask &= np.fromiter(map(is_, values, repeat(None)), bool, len(values))
        return mask
    infos = tensors()
    return [info.span is not None and info.error is None and info.quant is None and info.origin is None
            and (source := sources.get(info.file)) is not None and source.plain(info) for info in infos]


def build(a: Checkpoint, b: Checkpoint | None, alignment: Alignment) -> Catalog:
    """The catalog of an alignment of A and B (B None: A browsed alone, each tensor paired with itself)."""
    pairs = alignment.pairs
    files: dict[str, int] = {}
    b_or_a = b if b is not None else a
    if isinstance(pairs, SameNames) and isinstance(pairs.a, TensorTable) and isinstance(pairs.b, TensorTable):
        names = pairs.names
        side_a = table_column(pairs.a, names, files, a)
        side_b = table_column(pairs.b, names, files, b_or_a, like=side_a)
    else:
        side_a = side_column(list(map(itemgetter(1), pairs)), files, a)
        side_b = side_column(list(map(itemgetter(2), pairs)), files, b_or_a)
        names = list(map(itemgetter(0), pairs))
    names = side_a.name if side_a.name == tuple(names) else tuple(names)
    # Equal columns as one object: sent once to the app, and kept once there.
    for column in ("name", "dtype", "shape"):
        if getattr(side_b, column) == getattr(side_a, column):
            setattr(side_b, column, getattr(side_a, column))
    notes = [] if isinstance(pairs, SameNames) else list(map(itemgetter(3), pairs))
    pair_notes = {i: note for i, note in enumerate(notes) if note} if any(notes) else {}
    factors = adapter_parameters(a) | (adapter_parameters(b) if b is not None else set())
    factor = np.array([name in factors for name in names], bool) if factors else np.zeros(len(names), bool)
    return Catalog(names, side_a, side_b, list(files), known_column(side_a, side_b), factor,
                   SideSummary.of(a, side_a), SideSummary.of(b, side_b) if b is not None else None, list(alignment.notes),
                   pair_notes, b is None)


def known_column(a: Side, b: Side) -> np.ndarray:
    """What the headers alone say of each pair (`KNOWN`): a final status, or PENDING until its data is read.

    A computed tensor (W + ΔW) is float32 because it is computed in float32, not because
    anything stored changed type: only stored types count as a dtype change."""
    n = len(a.name)
    known = np.full(n, PENDING, np.int8)
    stored_change = np.fromiter(map(ne, a.dtype, b.dtype), bool, n) if a.dtype is not b.dtype else np.zeros(n, bool)
    for i in set(a.quant) | set(b.quant):
        stored_change[i] = a.stored_dtype(i) != b.stored_dtype(i)
    stored_change[list(set(a.origin) | set(b.origin))] = False
    known[stored_change] = DTYPE
    if a.shape is not b.shape:
        known[np.fromiter(map(ne, a.shape, b.shape), bool, n)] = SHAPE_MISMATCH
    present_a, present_b = a.present, b.present
    known[~present_a] = ONLY_B
    known[~present_b] = ONLY_A
    known[list(a.error) + list(b.error)] = ERROR
    return known
