"""safetensors: an 8-byte little-endian header length, a JSON header, then the data.

The header is parsed with the standard library and checked before anything is trusted
(docs/reading-untrusted-files.md). A bad entry spoils only its own tensor; a header that
cannot be parsed spoils the file. What the safetensors library itself refuses but can be
read safely (bytes no tensor owns, `__metadata__` values that are not strings) is read, with
a note that says so: another tool will fail on the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

from weightscope.sources.checkpoint import TensorInfo
from weightscope.sources.dtypes import ITEMSIZE, SAFETENSORS
from weightscope.sources.errors import CheckpointError
from weightscope.sources.files import regular_size, reject_duplicates
from weightscope.sources.formats.mapped import MappedFile

MAX_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
MAX_DIMS = 64


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SafetensorsFile(MappedFile):
    """One .safetensors file: its tensors, its `__metadata__` and its map.

    Attributes:
        tensors: `TensorInfo` per entry, in data order; bad entries carry `error`.
        metadata: the `__metadata__` strings.
    """

    def __init__(self, path: str):
        super().__init__(path)
        self.metadata: dict[str, str] = {}
        self.tensors: list[TensorInfo] = []
        self.notes: list[str] = []
        self.extras: list[str] = []
        self._read_header()

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
        try:
            header = json.loads(text, object_pairs_hook=reject_duplicates)
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
        data_start, data_size = 8 + length, size - 8 - length
        entries = [self._entry(name, entry, data_start, data_size) for name, entry in header.items()]
        self.tensors = mark_overlaps(entries)
        problems += unowned_bytes(header, data_size)
        if problems:
            self.notes.append(f"{self.path}: the safetensors library would refuse this file: {'; '.join(problems)}; "
                              "read anyway")

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


def unowned_bytes(header: dict, data_size: int) -> list[str]:
    """Where the data holds bytes that no tensor owns. The safetensors library requires the
    tensors, in offset order, to tile the data exactly, and refuses a file with a hole between
    two tensors or bytes after the last one. Entries whose offsets are unusable are left out:
    their own errors say why."""
    spans = sorted((entry["data_offsets"][0], entry["data_offsets"][1], name) for name, entry in header.items()
                   if isinstance(entry, dict) and usable_offsets(entry.get("data_offsets"), data_size))
    problems, reach, last = [], 0, None
    for begin, end, name in spans:
        if begin > reach:
            where = f"between {last} and {name}" if last else f"before the first tensor, {name},"
            problems.append(f"{begin - reach} bytes {where} belong to no tensor")
        if end > reach or last is None:
            reach, last = max(reach, end), name
    if data_size > reach:
        problems.append(f"{data_size - reach} bytes after the last tensor belong to no tensor")
    return problems


def usable_offsets(offsets, data_size: int) -> bool:
    return (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size)


def mark_overlaps(entries: list[TensorInfo]) -> list[TensorInfo]:
    """Entries in data order, each one whose bytes overlap another's marked as an error."""
    good = sorted((t for t in entries if t.error is None), key=lambda t: t.span)
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
        replace(t, span=None, error=bad_names[t.name]) if t.name in bad_names else t
        for t in good
    ]
    return marked + [t for t in entries if t.error is not None]
