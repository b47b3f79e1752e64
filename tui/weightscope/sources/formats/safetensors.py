"""safetensors: an 8-byte little-endian header length, a JSON header, then the data.

The header is checked before anything is trusted (docs/reading-untrusted-files.md). Nearly
every header is well formed, and msgspec parses it into typed entries, checking types, signs
and ranks in compiled code; any other is read the careful way, entry by entry, where a bad
entry spoils only its own tensor and a header that cannot be parsed spoils the file. What the safetensors library itself refuses but can be
read safely (bytes no tensor owns, `__metadata__` values that are not strings) is read, with
a note that says so: another tool will fail on the file.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorTable
from weightscope.sources.dtypes import ITEMSIZE, SAFETENSORS
from weightscope.sources.errors import CheckpointError
from weightscope.sources.files import parse_json, regular_size
from weightscope.sources.formats.mapped import MappedFile

MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
MAX_DIMS = 64


def is_int(value) -> bool:
    return type(value) is int  # not bool, a subclass of int


class SafetensorsFile(MappedFile):
    """One .safetensors file: its tensors, its `__metadata__` and its map.

    Attributes:
        table: the tensors as a `TensorTable` in data order, where the header is well formed;
            else None.
        metadata: the `__metadata__` strings.
    """

    def __init__(self, path: str):
        super().__init__(path)
        self.metadata: dict[str, str] = {}
        self.table: TensorTable | None = None
        self._tensors: list[TensorInfo] | None = None
        self.notes: list[str] = []
        self.extras: list[str] = []
        self._read_header()

    @property
    def tensors(self) -> list[TensorInfo]:
        """`TensorInfo` per entry, in data order; bad entries carry `error`."""
        if self._tensors is None:
            self._tensors = self.table.values()
        return self._tensors

    def _read_header(self) -> None:
        size = regular_size(self.path)
        if size < 8:
            raise CheckpointError(self.path, "too short for a safetensors header")
        with open(self.path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length > size - 8:
                raise CheckpointError(self.path, f"header length {length} exceeds the file size {size}")
            if length > MAX_HEADER:
                raise CheckpointError(self.path, f"header length {length} exceeds the {MAX_HEADER}-byte limit")
            text = f.read(length)
        data_start, data_size = 8 + length, size - 8 - length
        quick = read_well_formed(text, self.path, data_start, data_size)
        if quick is not None:
            self.table, self.metadata = quick
            return
        names, offsets, problems = self._read_carefully(text, data_start, data_size)
        self._tensors = mark_overlaps(self._tensors)
        problems += unowned_bytes(names, offsets, data_size)
        if problems:
            self.notes.append(f"{self.path}: the safetensors library would refuse this file: {'; '.join(problems)}; "
                              "read anyway")

    def _read_carefully(self, text: bytes, data_start: int, data_size: int) -> tuple[list[str], list, list[str]]:
        """A header with anything unusual in it, every entry checked on its own (the standard
        library names a duplicate key). Sets the tensors and `metadata`.

        Returns:
            (names, data_offsets) of the entries whose offsets are usable, and what the
            safetensors library would refuse in the header.
        """
        try:
            header = parse_json(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CheckpointError(self.path, f"invalid JSON header: {exc}") from None
        if not isinstance(header, dict):
            raise CheckpointError(self.path, "header is not a JSON object")
        meta = header.pop("__metadata__", None)
        problems = []
        if isinstance(meta, dict):
            self.metadata = {k: v for k, v in meta.items() if isinstance(v, str)}
            problems += [f"__metadata__ value {k!r} is {type(v).__name__}, not a string"
                         for k, v in meta.items() if not isinstance(v, str)]
        elif meta is not None:
            problems.append("__metadata__ is not an object (ignored)")
        names, entries = list(header), list(header.values())
        offsets = [e.get("data_offsets") if type(e) is dict else None for e in entries]
        usable = [type(o) is list and len(o) == 2 and type(o[0]) is int and type(o[1]) is int
                  and 0 <= o[0] <= o[1] <= data_size for o in offsets]
        self._tensors = self._entries(names, entries, offsets, usable, data_start, data_size)
        return [n for n, ok in zip(names, usable) if ok], [o for o, ok in zip(offsets, usable) if ok], problems

    def _entries(self, names: list[str], entries: list, offsets: list, usable: list[bool], data_start: int,
                 data_size: int) -> list[TensorInfo]:
        """Every entry checked, the whole header at once: a model of 100,000 tensors is a few
        passes over lists, not 100,000 rounds of checks. An entry that fails a check goes
        through `_entry`, which says what is wrong with it.

        Args:
            usable: whether each entry's data_offsets are two integers within the data.
        """
        shapes = [e.get("shape") if type(e) is dict else None for e in entries]
        dtypes = [SAFETENSORS.get(e.get("dtype")) if type(e) is dict and type(e.get("dtype")) is str else None
                  for e in entries]
        well_formed = [ok and dtype is not None and type(shape) is list and len(shape) <= MAX_DIMS
                       for ok, dtype, shape in zip(usable, dtypes, shapes)]
        dims = [d for ok, shape in zip(well_formed, shapes) if ok for d in shape]
        if dims and not (set(map(type, dims)) == {int} and min(dims) >= 0):
            well_formed = [ok and all(type(d) is int and d >= 0 for d in shape) for ok, shape in zip(well_formed, shapes)]
        path = self.path
        return [TensorInfo(name, dtype, tuple(shape), path, (data_start + o[0], data_start + o[1]))
                if ok and o[1] - o[0] == math.prod(shape) * ITEMSIZE[dtype]
                else self._entry(name, entry, data_start, data_size)
                for ok, name, entry, dtype, shape, o in zip(well_formed, names, entries, dtypes, shapes, offsets)]

    def _entry(self, name: str, entry, data_start: int, data_size: int) -> TensorInfo:
        def bad(problem: str) -> TensorInfo:
            return TensorInfo(name, None, None, self.path, error=f"{self.path}: {problem}")

        if not isinstance(entry, dict):
            return bad("header entry is not an object")
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        dtype = SAFETENSORS.get(code) if isinstance(code, str) else None
        if dtype is None:
            return bad(f"unsupported dtype {code!r}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(is_int(d) and d >= 0 for d in shape):
            return bad(f"invalid shape {str(shape)[:60]}")
        shape = tuple(shape)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
            return bad("data_offsets must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end:
            return bad(f"invalid data_offsets [{begin}, {end}]")
        if end > data_size:
            return bad(f"data ends at byte {data_start + end} but the file has {data_start + data_size}")
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected:
            return bad(f"{end - begin} bytes of data for {dtype} {list(shape)}, which needs {expected}")
        return TensorInfo(name, dtype, shape, self.path, span=(data_start + begin, data_start + end))


NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Entry(msgspec.Struct, gc=False):
    """A header entry as the format defines it (a field it lacks is None; others are ignored)."""

    dtype: str | None = None
    shape: Annotated[tuple[NonNegative, ...], msgspec.Meta(max_length=MAX_DIMS)] | None = None
    data_offsets: tuple[NonNegative, NonNegative] | None = None


class Metadata(msgspec.Struct):
    strings: dict[str, str] | None = msgspec.field(name="__metadata__", default=None)


ENTRIES = msgspec.json.Decoder(dict[str, Entry])  # (`__metadata__` reads as an Entry of Nones)
METADATA = msgspec.json.Decoder(Metadata)
def read_well_formed(text: bytes, path: str, data_start: int, data_size: int) -> tuple[TensorTable, dict[str, str]] | None:
    """The tensors of a header whose every entry is well formed and whose data the tensors tile
    exactly, as in nearly every file; None for any other header.

    Returns:
        (tensors in data order, metadata).
    """
    parsed = well_formed_columns(text, data_size)
    if parsed is None:
        return None
    names, dtypes, shapes, begin, end, metadata = parsed
    return TensorTable(names, dtypes, shapes, [path] * len(names), begin + data_start, end + data_start), dict(metadata)


@lru_cache(maxsize=16)
def well_formed_columns(text: bytes, data_size: int) -> tuple | None:
    """`read_well_formed`'s columns, spans relative to the data (None for any other header).

    Types, signs and ranks are checked in compiled code while the header is parsed, sizes and
    offsets as arrays, and the columns are gathered by `map`: a 100,000-entry header with no
    round of Python per entry. Kept for the last few headers: B's shards nearly always hold
    the very bytes of A's (a fine-tune saved by the same writer), and are then not parsed
    again. The columns are shared, never changed in place.
    """
    if b"\\" in text:
        return None  # an escape could hide a quote from the count below
    try:
        header = ENTRIES.decode(text)
        metadata = METADATA.decode(text).strings if b'"__metadata__"' in text else None
    except msgspec.DecodeError:  # (ValidationError is one)
        return None
    metadata = metadata or {}
    has_metadata = header.pop("__metadata__", None) is not None
    # A key given twice keeps only its last value: fewer strings parsed than quoted in the text.
    # Each entry has five (its name, three keys, its dtype); extra fields would make more.
    if text.count(b'"') != 2 * (5 * len(header) + has_metadata + 2 * len(metadata)):
        return None
    n = len(header)
    names, entries = list(header), list(header.values())
    dtypes = list(map(SAFETENSORS.get, map(attrgetter("dtype"), entries)))
    shapes = list(map(attrgetter("shape"), entries))
    offsets = list(map(attrgetter("data_offsets"), entries))
    if None in dtypes or None in shapes or None in offsets:
        return None
    try:
        bounds = np.fromiter(chain.from_iterable(offsets), np.int64, 2 * n).reshape(n, 2)
        numel = np.fromiter(map(math.prod, shapes), np.int64, n)
    except OverflowError:  # beyond 64 bits: no file holds that much
        return None
    itemsize = np.fromiter(map(ITEMSIZE.__getitem__, dtypes), np.int64, n)
    begin, end = bounds[:, 0], bounds[:, 1]
    # (numel ≤ data_size first: the product cannot overflow then)
    if not ((numel <= data_size) & (begin <= end) & (end - begin == numel * itemsize)).all():
        return None
    order = np.lexsort((end, begin))
    begin, end = begin[order], end[order]
    if n and not (begin[0] == 0 and end[-1] == data_size and (begin[1:] == end[:-1]).all()):
        return None  # a hole, an overlap or bytes no tensor owns: the careful way says which
    if not n and data_size:
        return None
    if (order[1:] < order[:-1]).any():  # (a writer nearly always lists the tensors in data order)
        take = order.tolist()
        names, dtypes, shapes = (list(map(column.__getitem__, take)) for column in (names, dtypes, shapes))
    return names, dtypes, shapes, begin, end, metadata


def unowned_bytes(names: list[str], offsets: list[list[int]], data_size: int) -> list[str]:
    """Where the data holds bytes that no tensor owns. The safetensors library requires the
    tensors, in offset order, to tile the data exactly, and refuses a file with a hole between
    two tensors or bytes after the last one.

    Args:
        names, offsets: the entries whose data_offsets are usable (two integers within the
            data); the others' own errors say what is wrong with them.
    """
    begins = np.array([o[0] for o in offsets], np.int64)
    ends = np.array([o[1] for o in offsets], np.int64)
    order = np.lexsort((ends, begins))
    reach = np.maximum.accumulate(ends[order]) if len(order) else np.zeros(0, np.int64)
    tiled = len(order) and begins[order[0]] == 0 and not (begins[order[1:]] > reach[:-1]).any() \
        and reach[-1] == data_size
    if tiled or (not len(order) and data_size == 0):
        return []  # tiled exactly, as nearly every file is
    problems, reached, last = [], 0, None
    for begin, end, name in sorted((o[0], o[1], name) for name, o in zip(names, offsets)):
        if begin > reached:
            where = f"between {last} and {name}" if last else f"before the first tensor, {name},"
            problems.append(f"{begin - reached} bytes {where} belong to no tensor")
        if end > reached or last is None:
            reached, last = max(reached, end), name
    if data_size > reached:
        problems.append(f"{data_size - reached} bytes after the last tensor belong to no tensor")
    return problems


def mark_overlaps(entries: list[TensorInfo]) -> list[TensorInfo]:
    """Entries in data order, each one whose bytes overlap another's marked as an error."""
    good = sorted((t for t in entries if t.error is None), key=lambda t: t.span)
    starts = np.array([t.span[0] for t in good], np.int64)
    ends = np.array([t.span[1] for t in good], np.int64)
    sized = np.flatnonzero(ends > starts)
    if len(sized) < 2 or not (starts[sized[1:]] < np.maximum.accumulate(ends[sized])[:-1]).any():
        return good + [t for t in entries if t.error is not None]  # no two share a byte, as in nearly every file
    bad_names: dict[str, str] = {}
    reach = None  # the entry whose span reaches furthest so far
    for t in good:
        if t.span[0] == t.span[1]:
            continue
        if reach is not None and t.span[0] < reach.span[1]:
            bad_names[t.name] = f"{t.file}: bytes overlap those of {reach.name}"
            bad_names.setdefault(reach.name, f"{t.file}: bytes overlap those of {t.name}")
        if reach is None or t.span[1] > reach.span[1]:
            reach = t
    marked = [
        t._replace(span=None, error=bad_names[t.name]) if t.name in bad_names else t
        for t in good
    ]
    return marked + [t for t in entries if t.error is not None]
