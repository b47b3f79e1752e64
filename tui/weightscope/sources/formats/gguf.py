"""GGUF (llama.cpp): a header of key-value metadata and tensor descriptions, then aligned data.

The header is walked here with `struct`, and every count, length, dimension and offset is
checked against the bytes that remain before anything is read or allocated
(docs/reading-untrusted-files.md): the `gguf` package's own reader trusts them, and a
hostile header makes it hang or allocate without bound. The package is used for what it
knows well: block sizes, dequantization (`gguf.quants.dequantize`) and the tensor name tables.

Tensors are shown as their source checkpoint had them, so that a GGUF pairs with it: names
mapped back to Hugging Face names, shapes in torch order (GGUF lists the innermost dimension
first), llama.cpp's Q/K row permutation undone, and quantized tensors read as float32 values
while `TensorInfo.quant` names their type.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorUnreadable
from weightscope.sources.dtypes import ITEMSIZE
from weightscope.sources.errors import CheckpointError, one_line
from weightscope.sources.files import map_file, physical_memory
from weightscope.sources.formats import gguf_names
from weightscope.sources.formats.mapped import MappedFile
from weightscope.sources.formats.safetensors import mark_overlaps

VERSIONS = (2, 3)  # 1 had 32-bit counts and is long gone
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 18
MAX_KEY = 1 << 16  # the specification's limit on a key
MAX_NAME = 1 << 10  # llama.cpp allows 63 bytes; some slack for other writers
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_STRINGS = 1 << 21  # strings in one array; the largest tokenizers have about 2.6e5
KEPT_ARRAY = 4096  # numeric arrays up to this length are kept (per-layer head counts)
SHOWN = 200  # characters of a metadata string kept for display
DEFAULT_ALIGNMENT = 32
CHUNK_BYTES = 1 << 22  # decoded bytes per step when dequantizing or reordering rows

# GGUFValueType -> struct format, for the fixed-size types
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
VALUE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 10: "uint64", 11: "int64", 12: "float64"}
STRING, ARRAY = 8, 9
# GGML types stored as plain elements -> torch spelling; every other type is quantized
PLAIN = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
         "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}


@dataclass(frozen=True)
class Array:
    """A metadata array too long to keep (a tokenizer's vocabulary): its type and length."""

    kind: str
    count: int

    def __str__(self) -> str:
        return f"[{self.count} × {self.kind}]"


@dataclass(frozen=True)
class Entry:
    """One tensor description as the header gives it (dims innermost first, offset from the data start)."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class Header:
    kv: dict[str, object]
    entries: list[Entry]
    data_start: int
    alignment: int


class Cursor:
    """Little-endian reads from a buffer; any read past its end is a one-line error."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> int:
        """Skip `n` bytes that must be there; returns where they start."""
        if n > self.left:
            raise CheckpointError(self.path, f"{what} needs {n} bytes at byte {self.pos}, "
                                             f"but the file has {self.left} left")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int | None = None) -> str:
        """A length-prefixed UTF-8 string (of at most `limit` bytes), decoded only as far as
        display needs (4·SHOWN bytes): a long value is skipped, never copied."""
        length = self.unpack("<Q", f"{what} length")
        start = self.take(length, what)
        if limit is not None and length > limit:
            raise CheckpointError(self.path, f"{what} of {length} bytes exceeds the {limit}-byte limit")
        return bytes(self.buf[start:start + min(length, 4 * SHOWN)]).decode("utf-8", "replace")


def read_header(buf, path: str) -> Header:
    """Parse and check everything before the tensor data.

    Raises:
        CheckpointError: bad magic or version, or any count or length that the file cannot hold.
    """
    cur = Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise CheckpointError(path, "not a GGUF file (no GGUF magic)")
    cur.take(4, "magic")
    version = cur.unpack("<I", "version")
    if version & 0xFFFF == 0 and version:
        raise CheckpointError(path, "big-endian GGUF files are not supported")
    if version not in VERSIONS:
        raise CheckpointError(path, f"GGUF version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
    tensor_count = cur.unpack("<Q", "tensor count")
    kv_count = cur.unpack("<Q", "key-value count")
    # The smallest possible entries: a key-value pair takes 13 bytes, a tensor description 24.
    for count, limit, least, what in ((tensor_count, MAX_TENSORS, 24, "tensor count"),
                                      (kv_count, MAX_KV, 13, "key-value count")):
        if count * least > cur.left:
            raise CheckpointError(path, f"{what} {count} cannot fit in the {len(buf)}-byte file")
        if count > limit:
            raise CheckpointError(path, f"{what} {count} exceeds the limit of {limit}")
    kv: dict[str, object] = {}
    for _ in range(kv_count):
        key = cur.string("metadata key", MAX_KEY)
        if key in kv:
            raise CheckpointError(path, f"metadata key {key!r} given twice")
        kv[key] = read_value(cur, cur.unpack("<I", f"type of {key}"), key)
    entries: list[Entry] = []
    seen: set[str] = set()
    for _ in range(tensor_count):
        name = cur.string("tensor name", MAX_NAME)
        if name in seen:
            raise CheckpointError(path, f"tensor {name!r} described twice")
        seen.add(name)
        n_dims = cur.unpack("<I", f"dimension count of {name}")
        if n_dims > MAX_DIMS:
            raise CheckpointError(path, f"tensor {name!r} has {n_dims} dimensions; GGUF allows {MAX_DIMS}")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, cur.take(8 * n_dims, f"dimensions of {name}"))
        ggml_type = cur.unpack("<I", f"type of {name}")
        entries.append(Entry(name, dims, ggml_type, cur.unpack("<Q", f"offset of {name}")))
    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not (isinstance(alignment, int) and not isinstance(alignment, bool)
            and 0 < alignment <= 1 << 30 and alignment & (alignment - 1) == 0):
        raise CheckpointError(path, f"general.alignment {one_line(alignment, 40)} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    return Header(kv, entries, data_start, alignment)


def read_value(cur: Cursor, kind: int, key: str):
    """One metadata value: scalars and strings as Python values (strings cut for display),
    numeric arrays as tuples when short, anything longer as an `Array` summary."""
    if kind in SCALARS:
        return cur.unpack(SCALARS[kind], key)
    if kind == STRING:
        return cur.string(key)
    if kind != ARRAY:
        raise CheckpointError(cur.path, f"metadata {key!r} has unknown value type {kind}")
    item = cur.unpack("<I", f"array type of {key}")
    count = cur.unpack("<Q", f"array length of {key}")
    if item in SCALARS:
        code = SCALARS[item][1]
        start = cur.take(count * struct.calcsize(code), f"array {key} of {count} values")
        if count <= KEPT_ARRAY:
            return struct.unpack_from(f"<{count}{code}", cur.buf, start)
        return Array(VALUE_NAMES[item], count)
    if item != STRING:
        raise CheckpointError(cur.path, f"metadata {key!r} is an array of type {item}, which GGUF readers refuse")
    if count * 8 > cur.left:
        raise CheckpointError(cur.path, f"array {key} of {count} strings cannot fit in the file")
    if count > MAX_STRINGS:
        raise CheckpointError(cur.path, f"array {key} of {count} strings exceeds the limit of {MAX_STRINGS}")
    buf, pos, end = cur.buf, cur.pos, len(cur.buf)
    for _ in range(count):  # only the lengths are read: the strings are skipped
        if pos + 8 > end:
            break
        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        if pos > end:
            break
    else:
        cur.pos = pos
        return Array("string", count)
    raise CheckpointError(cur.path, f"array {key} of {count} strings runs past the end of the file")


@dataclass(frozen=True)
class Plan:
    """How `raw` turns a tensor's stored bytes into what it returns.

    Attributes:
        quant: the GGML type to dequantize from; None for plain elements.
        heads: the head count whose Q/K row permutation is undone; None when rows stay.
    """

    quant: str | None
    heads: int | None


class GGUFFile(MappedFile):
    """One .gguf file: tensors listed from its checked header, read through a private map.

    Attributes:
        tensors: `TensorInfo` per tensor, named and shaped as the source checkpoint had them.
        metadata: the header's key-value pairs as display strings.
        split: (part, count) for one part of a model split by gguf-split (part from 0); else None.
        kv: the header's key-value pairs, as read (`Array` for long arrays).
    """

    PLAIN_BY_SPAN = False  # rows to put back make some tensors not plain (`plain`)

    def __init__(self, path: str, inherited: dict | None = None):
        """Args:
            inherited: key-value pairs of the first part of a split model, which only that
                part carries (the architecture, head counts); this file's own take precedence.
        """
        super().__init__(path)
        self._map = map_file(path)
        if self._map is None:
            raise CheckpointError(path, "empty file")
        try:
            header = read_header(self._map, path)
        except CheckpointError:
            self.close()
            raise
        self.kv = {**(inherited or {}), **header.kv}
        self.metadata = {k: one_line(v if isinstance(v, str) else str(v), SHOWN) for k, v in header.kv.items()}
        self.extras: list[str] = []
        self.notes: list[str] = []
        self._plans: dict[str, Plan] = {}
        self._last: tuple[str, np.ndarray] | None = None  # a dequantized tensor is read by stats, then histograms
        part, count = header.kv.get("split.no"), header.kv.get("split.count")
        self.split = (part, count) if all(isinstance(v, int) for v in (part, count)) and count > 1 else None
        arch = self.kv.get("general.architecture")
        arch = arch if isinstance(arch, str) else ""
        mapped = gguf_names.hf_names(arch, [e.name for e in header.entries])
        claims = Counter(mapped.values())
        infos = []
        for entry in header.entries:
            name = mapped.get(entry.name, entry.name)
            if claims[name] > 1:  # two GGUF tensors map to one name: keep what the file says
                name = entry.name
            infos.append(self._info(entry, name, header, gguf_names.permuted_heads(arch, self.kv, entry.name)))
        self.tensors = mark_overlaps(infos)
        self._describe(header, arch, infos)

    def _info(self, entry: Entry, name: str, header: Header, heads: int | None) -> TensorInfo:
        import gguf

        shape = tuple(reversed(entry.dims))
        stored = entry.name if entry.name != name else None

        def bad(problem: str) -> TensorInfo:
            return TensorInfo(name, None, shape, self.path, error=f"{self.path}: {entry.name}: {problem}",
                              stored_name=stored)

        try:
            kind = gguf.GGMLQuantizationType(entry.ggml_type)
        except ValueError:
            return bad(f"unknown GGML type {entry.ggml_type}")
        if kind not in gguf.GGML_QUANT_SIZES:
            return bad(f"gguf {gguf_version()} knows no block size for {kind.name}")
        block, size = gguf.GGML_QUANT_SIZES[kind]
        row = entry.dims[0] if entry.dims else 1
        if row % block:
            return bad(f"rows of {row} elements do not split into {kind.name} blocks of {block}")
        quant = None if kind.name in PLAIN else kind.name
        if quant is not None and not dequantizable(kind):
            return bad(f"gguf {gguf_version()} cannot dequantize {kind.name}")
        numel = 1
        for d in entry.dims:
            numel *= d
        nbytes = numel // block * size
        start = header.data_start + entry.offset
        if entry.offset % header.alignment:
            return bad(f"offset {entry.offset} is not a multiple of the alignment {header.alignment}")
        if start + nbytes > len(self._map):
            return bad(f"data ends at byte {start + nbytes} but the file has {len(self._map)}")
        if heads is not None:
            rows = shape[0] if shape else 0
            if rows % (2 * heads) or (quant and (numel // max(rows, 1)) % block):
                return bad(f"{rows} rows do not split into {heads} heads of Q/K row pairs")
        if quant is not None or heads is not None:
            self._plans[name] = Plan(quant, heads)
        return TensorInfo(name, PLAIN.get(kind.name, "float32"), shape, self.path,
                          span=(start, start + nbytes), quant=quant, stored_name=stored)

    def _describe(self, header: Header, arch: str, infos: list[TensorInfo]) -> None:
        path = self.path
        renamed = [(entry.name, info.name) for entry, info in zip(header.entries, infos) if entry.name != info.name]
        if renamed:
            example = next(((g, h) for g, h in renamed if g.startswith("blk.")), renamed[0])
            kept = len(infos) - len(renamed)
            self.notes.append(f"{path}: GGUF names mapped to Hugging Face names for {one_line(arch, 40)} "
                              f"(e.g. {example[0]} → {example[1]})"
                              + (f"; {kept} kept as in the file" if kept else ""))
        elif infos and not arch:
            self.notes.append(f"{path}: names no architecture; GGUF names kept")
        elif infos:
            self.notes.append(f"{path}: no Hugging Face names known for architecture {one_line(arch, 40)!r}; "
                              "GGUF names kept")
        permuted = sum(1 for p in self._plans.values() if p.heads)
        if permuted:
            self.notes.append(f"{path}: Q/K rows of {permuted} tensors put back in Hugging Face order "
                              "(llama.cpp permutes them for its rotary layout)")
        quants = Counter(info.quant for info in infos if info.quant and info.error is None)
        if quants:
            kinds = ", ".join(f"{k} ×{n}" for k, n in quants.most_common())
            self.notes.append(f"{path}: quantized tensors ({kinds}) are compared as their dequantized float32 values")

    def plain(self, info: TensorInfo) -> bool:
        return super().plain(info) and info.name not in self._plans  # rows to put back are not plain

    def raw(self, info: TensorInfo) -> np.ndarray:
        plan = self._plans.get(info.name)
        if plan is None:
            return super().raw(info)
        last = self._last
        if last is not None and last[0] == info.name:
            return last[1]
        out = self._decode(info, plan)
        self._last = (info.name, out)
        return out

    def _decode(self, info: TensorInfo, plan: Plan) -> np.ndarray:
        """The stored bytes dequantized and/or with rows reordered, a bounded chunk at a time."""
        import gguf

        size = info.numel * ITEMSIZE[info.dtype]
        memory = physical_memory()
        if memory is not None and size > memory // 2:
            raise TensorUnreadable(f"{self.path}: {info.name} needs {size} bytes decoded, "
                                   f"more than half of this machine's memory")
        stored = super().raw(info)
        out = np.empty(size, np.uint8)
        if size == 0:
            return out
        kind = gguf.GGMLQuantizationType[plan.quant] if plan.quant else None
        if plan.heads:  # move whole rows (a row is a whole number of blocks)
            units, order = info.shape[0], gguf_names.hf_row_order(info.shape[0], plan.heads)
        else:  # blocks in file order
            units, order = stored.size // gguf.GGML_QUANT_SIZES[kind][1], None
        table = stored.reshape(units, -1)
        per_unit = size // units
        step = max(1, CHUNK_BYTES // per_unit)
        for first in range(0, units, step):
            last = min(units, first + step)
            part = table[order[first:last]] if order is not None else table[first:last]
            if kind is not None:
                with np.errstate(all="ignore"):  # NaN or Inf scales decode to NaN/Inf, which stats count
                    part = gguf.quants.dequantize(part.reshape(-1), kind).view(np.uint8)
            out[first * per_unit:last * per_unit] = part.reshape(-1)
        return out

    def close(self) -> None:
        self._last = None
        super().close()


_dequantizable: dict[int, bool] = {}


def dequantizable(kind) -> bool:
    """Whether the installed gguf can dequantize `kind` (tried once on one zero block)."""
    import gguf

    if kind not in _dequantizable:
        try:
            gguf.quants.dequantize(np.zeros(gguf.GGML_QUANT_SIZES[kind][1], np.uint8), kind)
            _dequantizable[kind] = True
        except Exception:  # NotImplementedError, or whatever a half-supported type raises
            _dequantizable[kind] = False
    return _dequantizable[kind]


def gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"
