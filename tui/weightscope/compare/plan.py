"""The scan's work, cut into units a worker process can take one at a time.

A *unit* is what one kernel call does: a few file ranges read into two buffers, and the
table of pieces (`kernels.py`) those buffers hold, about `UNIT_BYTES` of data: a run of
small tensors, or a stretch of a large one. Units are independent, so a pool of processes
takes them in any order; the scan hands results on in plan order.

Tensors whose bytes are plain spans of their files (safetensors, torch zip, plain GGUF) are
planned here, in numpy, without a step of Python per tensor. The rest (quantized GGUF,
LoRA's W + ΔW, DCP, legacy pickles, complex numbers) go into *object units*, whose pairs a
worker reads through their checkpoint's own sources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from weightscope.compare import pieces
from weightscope.compare import results, stats
from weightscope.compare.catalog import ERROR, ONLY_A, ONLY_B, SHAPE_MISMATCH, Catalog
from weightscope.compare.results import Batch

UNIT_BYTES = 16 << 20  # data per unit (both sides): a few tens of ms of work
GAP = 64 << 10  # bytes between two tensors read in one go rather than two


@dataclass(frozen=True)
class Read:
    """`length` bytes of `path` from `offset`, into the unit's buffer at `at`."""

    path: str
    offset: int
    length: int
    at: int


@dataclass
class Unit:
    """Pieces read from files by the worker itself.

    Attributes:
        reads: per side, the file ranges to read into that side's buffer.
        sizes: per side, the buffer size.
        pieces, tolerances: the kernel's tables (offsets into the buffers).
        owners: the pair each piece belongs to.
        same_buffer: B's pieces lie in A's buffer (one checkpoint browsed alone).
        nbytes: data bytes covered, for progress.
    """

    number: int
    reads: tuple[list[Read], list[Read]]
    sizes: tuple[int, int]
    pieces: np.ndarray
    tolerances: np.ndarray
    owners: np.ndarray
    nbytes: int
    same_buffer: bool = False


@dataclass
class ObjectUnit:
    """Pairs a worker reads through their checkpoints' sources, one pair at a time."""

    number: int
    pairs: list  # scan.PairJob
    nbytes: int


@dataclass
class Plan:
    """Every unit of a scan, and the results known without reading.

    Attributes:
        ready: results known from headers and file identities alone.
        pieces: per pair, how many pieces its units hold (0 for object pairs and ready ones).
        tolerances: per pair, (atol, rtol).
        ties: a pair whose result other pairs share (names of one tensor in one checkpoint
            browsed alone, read once) -> those pairs.
    """

    units: list[Unit | ObjectUnit]
    ready: Batch
    pieces: np.ndarray
    tolerances: np.ndarray
    notes: list[str] = field(default_factory=list)
    ties: dict[int, list[int]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)


def identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def codes(dtypes: list[str | None]) -> np.ndarray:
    """The kernels' code per dtype, -1 for a type without statistics (or no tensor)."""
    lookup = {dtype: pieces.CODES.get(dtype, -1) for dtype in set(dtypes)}
    return np.array([lookup[d] for d in dtypes], np.int64)


def tolerances(catalog: Catalog, atol: float | None, rtol: float | None) -> np.ndarray:
    """(atol, rtol) per pair, worked out once per pair of dtypes."""
    pairs = list(zip(catalog.a.dtype, catalog.b.dtype))
    kinds = list(dict.fromkeys(pairs))  # a model has a few pairs of dtypes
    kind = {dtypes: k for k, dtypes in enumerate(kinds)}
    table = np.array([stats.tolerance(*dtypes, atol, rtol) for dtypes in kinds], np.float64).reshape(-1, 2)
    return table[np.fromiter(map(kind.__getitem__, pairs), np.int64, len(pairs))]


def build(catalog: Catalog, atol: float | None = None, rtol: float | None = None, device: str = "cpu",
          only: np.ndarray | None = None) -> Plan:
    """The plan of a scan of every pair (or of the pairs in `only`); on a torch device every
    pair goes through its sources, one at a time."""
    n = len(catalog)
    a, b, known = catalog.a, catalog.b, catalog.known
    wanted = np.zeros(n, bool)
    wanted[np.arange(n) if only is None else only] = True
    ties: dict[int, list[int]] = {}
    if catalog.single:  # a tensor with several names is read once, under its first
        first = {name: i for i, name in enumerate(catalog.names)}
        for i, target in catalog.a.tied_to.items():
            if wanted[i] and target in first and wanted[first[target]]:
                ties.setdefault(first[target], []).append(i)
                wanted[i] = False
    code_a, code_b = codes(a.dtype), codes(b.dtype)
    tol = tolerances(catalog, atol, rtol)
    readable_a, readable_b = a.plain & (code_a >= 0), b.plain & (code_b >= 0)
    if device != "cpu":
        readable_a = readable_b = np.zeros(n, bool)
    ready: list[Batch] = []

    errors = wanted & (known == ERROR)
    for i in np.flatnonzero(errors):
        why = "; ".join(f"{side}: {s.error[i]}" for side, s in (("A", a), ("B", b)) if i in s.error)
        ready.append(Batch.of(int(i), results.ERROR, error=why))
    wanted &= ~errors

    same_shape = wanted & ~np.isin(known, (ONLY_A, ONLY_B, SHAPE_MISMATCH))
    notes = []
    if not catalog.single:  # one file on both sides: identical, without reading it
        ids: dict[object, int] = {}
        file_id = np.array([ids.setdefault(identity(path) or path, len(ids)) for path in catalog.files] or [0])
        same = same_shape & readable_a & readable_b & (code_a == code_b) & (a.start == b.start) & \
            (file_id[np.maximum(a.file, 0)] == file_id[np.maximum(b.file, 0)])
        if same.any():
            notes.append(f"{int(same.sum()):,} tensors lie in the same file on both sides (same device and inode): "
                         "identical without reading them, so without statistics")
            for i in np.flatnonzero(same):
                ready.append(Batch.of(int(i), results.IDENTICAL,
                                      notes=("same file on both sides: identical without reading it",)))
            wanted &= ~same
            same_shape &= ~same

    # Pairs whose every side is a plain span are read here; the rest through their sources.
    one_sided = wanted & np.isin(known, (ONLY_A, ONLY_B, SHAPE_MISMATCH))
    on_spans = (same_shape & readable_a & readable_b) | \
        (one_sided & ((known == ONLY_B) | readable_a) & ((known == ONLY_A) | readable_b))
    paired = on_spans & same_shape
    side_a = on_spans & np.isin(known, (ONLY_A, SHAPE_MISMATCH))
    side_b = on_spans & np.isin(known, (ONLY_B, SHAPE_MISMATCH))
    entries = np.concatenate([np.flatnonzero(paired | side_a), np.flatnonzero(side_b)])
    kinds = np.concatenate([np.where(paired, pieces.PAIRED, pieces.SIDE_A)[paired | side_a],
                            np.full(int(side_b.sum()), pieces.SIDE_B)])
    units, pieces_per_pair = span_units(catalog, entries, kinds, code_a, code_b, tol)
    from weightscope.compare.scan import PairJob

    for group in object_groups(catalog, np.flatnonzero(wanted & ~on_spans)):
        units.append(ObjectUnit(len(units), [PairJob.of(catalog, i) for i in group],
                                int(catalog.data_bytes[group].sum())))
    return Plan(units, Batch.join(ready).sorted() if ready else Batch.empty(), pieces_per_pair, tol, notes, ties)


def object_groups(catalog: Catalog, pairs: np.ndarray) -> list[list[int]]:
    """Object pairs in groups of about `UNIT_BYTES`."""
    groups, size = [[]], 0
    nbytes = catalog.data_bytes
    for i in pairs.tolist():
        if groups[-1] and size + nbytes[i] > UNIT_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += int(nbytes[i])
    return [g for g in groups if g]


def span_units(catalog: Catalog, entries: np.ndarray, kinds: np.ndarray, code_a: np.ndarray,
               code_b: np.ndarray, tol: np.ndarray) -> tuple[list[Unit], np.ndarray]:
    """Units for tensors read straight from their files, in the order their data lies."""
    a, b = catalog.a, catalog.b
    pieces_per_pair = np.zeros(len(catalog), np.int64)
    if not len(entries):
        return [], pieces_per_pair
    uses_a, uses_b = kinds != pieces.SIDE_B, kinds != pieces.SIDE_A
    size_a = np.where(uses_a, pieces.ITEMSIZES[np.maximum(code_a[entries], 0)], 0)
    size_b = np.where(uses_b, pieces.ITEMSIZES[np.maximum(code_b[entries], 0)], 0)
    # file order: A's files as they lie, then what only B has
    lead_file = np.where(uses_a, a.file[entries], b.file[entries] + len(catalog.files))
    lead_start = np.where(uses_a, a.start[entries], b.start[entries])
    order = np.lexsort((lead_start, lead_file))
    entries, kinds, size_a, size_b, uses_a, uses_b = (x[order] for x in (entries, kinds, size_a, size_b, uses_a, uses_b))
    numel = np.where(uses_a, a.numel[entries], b.numel[entries])

    # Pieces: every entry cut into runs of at most PIECE elements (one, empty, for an empty tensor).
    entry_of, element, length = pieces.cut(numel)
    owner = entries[entry_of]
    np.add.at(pieces_per_pair, owner, 1)
    bytes_a, bytes_b = length * size_a[entry_of], length * size_b[entry_of]
    if catalog.single:  # B is A: read once
        bytes_b = np.zeros_like(bytes_b)
    done_before = np.cumsum(bytes_a + bytes_b) - (bytes_a + bytes_b)
    unit_of = done_before // UNIT_BYTES

    table = np.zeros((len(owner), pieces.PIECE_COLUMNS), np.int64)
    table[:, pieces.KIND] = kinds[entry_of]
    table[:, pieces.CODE_A] = np.where(uses_a[entry_of], code_a[owner], 0)
    table[:, pieces.CODE_B] = np.where(uses_b[entry_of], code_b[owner], 0)
    table[:, pieces.COUNT] = length
    table[:, pieces.START] = element
    single = catalog.single
    reads_a, table[:, pieces.OFF_A] = lay_out(unit_of, a.file[owner], a.start[owner] + element * size_a[entry_of],
                                          bytes_a, uses_a[entry_of], catalog.files)
    if single:
        reads_b, table[:, pieces.OFF_B] = {}, table[:, pieces.OFF_A]
    else:
        reads_b, table[:, pieces.OFF_B] = lay_out(unit_of, b.file[owner], b.start[owner] + element * size_b[entry_of],
                                              bytes_b, uses_b[entry_of], catalog.files)
    tolerances = tol[owner]
    bounds = np.flatnonzero(np.r_[True, unit_of[1:] != unit_of[:-1], True])
    units = []
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        u = int(unit_of[lo])
        ra, rb = reads_a.get(u, []), reads_b.get(u, [])
        sizes = (sum(r.length for r in ra), sum(r.length for r in rb))
        units.append(Unit(number, (ra, rb), sizes, table[lo:hi], tolerances[lo:hi], owner[lo:hi],
                          int(bytes_a[lo:hi].sum() + bytes_b[lo:hi].sum()), single))
    return units, pieces_per_pair


def lay_out(unit_of: np.ndarray, file: np.ndarray, start: np.ndarray, length: np.ndarray, used: np.ndarray,
            files: list[str]) -> tuple[dict[int, list[Read]], np.ndarray]:
    """One side's reads per unit (neighbouring ranges of a file read in one go) and where
    each piece's bytes land in its unit's buffer."""
    offsets = np.zeros(len(unit_of), np.int64)
    picked = np.flatnonzero(used)
    if not len(picked):
        return {}, offsets
    order = picked[np.lexsort((start[picked], file[picked], unit_of[picked]))]
    u, f, s, e = unit_of[order], file[order], start[order], start[order] + length[order]
    segment = np.cumsum(np.r_[True, (u[1:] != u[:-1]) | (f[1:] != f[:-1])])
    big = np.int64(1) << 46  # past any file offset: ranges of later segments never touch earlier ones
    reach = np.maximum.accumulate(segment * big + e) - segment * big
    new = np.r_[True, (segment[1:] != segment[:-1]) | (s[1:] > reach[:-1] + GAP)]
    read_of = np.cumsum(new) - 1
    heads = np.flatnonzero(new)
    read_start = s[heads]
    read_end = np.maximum.reduceat(e, heads)
    read_len = read_end - read_start
    read_unit = u[heads]
    unit_first = np.flatnonzero(np.r_[True, read_unit[1:] != read_unit[:-1]])
    ends = np.cumsum(read_len)
    at = ends - read_len - np.repeat(ends[unit_first] - read_len[unit_first],
                                     np.diff(np.r_[unit_first, len(heads)]))
    offsets[order] = at[read_of] + (s - read_start[read_of])
    reads: dict[int, list[Read]] = {}
    read_file = f[heads]
    for j in range(len(heads)):
        reads.setdefault(int(read_unit[j]), []).append(
            Read(files[read_file[j]], int(read_start[j]), int(read_len[j]), int(at[j])))
    return reads, offsets
