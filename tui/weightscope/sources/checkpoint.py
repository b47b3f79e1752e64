"""What every layer above the formats sees: a `Checkpoint` of `TensorInfo`s.

A `Checkpoint` knows its tensors from headers alone; `raw()` and `load()` read one
tensor's bytes on demand through a memory map, never a whole file. Its tensors are a dict,
or, where every one is a plain stored tensor (well-formed safetensors files, nearly always),
a `TensorTable` of columns that makes a `TensorInfo` only for the name asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress, repeat
from typing import TYPE_CHECKING, NamedTuple, Protocol

from weightscope.sources.dtypes import ITEMSIZE

if TYPE_CHECKING:
    import numpy as np
    import torch


class TensorInfo(NamedTuple):
    """One tensor as its header describes it.

    A named tuple: opening a 100,000-tensor pair makes 200,000 of them, and a tuple is made
    in a third of the time of a frozen dataclass. Change one with `_replace`.

    Attributes:
        name: the full dotted name.
        dtype: torch spelling (`bfloat16`); None when the header could not be read.
        shape: dimensions; None when unknown.
        file: the file that holds the data.
        span: absolute byte range `[start, end)` of the data in `file`, for tensors stored
            contiguously; None otherwise.
        tied_to: for a name that shares its storage with an earlier name, that name.
        error: why the tensor cannot be read, in one line; None when it can.
        origin: for a tensor computed rather than stored (a LoRA-adapted weight), how it is
            computed, e.g. "W + ΔW, LoRA r=8, scaling 2"; `dtype` is then the computation's
            (float32), not a stored type. None for stored tensors.
        quant: for a quantized tensor (GGUF `Q4_0`, ...), its quantization type; `dtype` is
            then what it decodes to (`float32`), which statistics read, and `span` holds the
            quantized bytes. None for tensors stored as `dtype`.
        stored_name: the name the file stores the tensor under, where the name shown differs
            (a GGUF name mapped to its Hugging Face name, an adapter's key under PEFT's
            prefixes, an MXFP4 weight's `_blocks`); None when they are the same.
    """

    name: str
    dtype: str | None
    shape: tuple[int, ...] | None
    file: str
    span: tuple[int, int] | None = None
    tied_to: str | None = None
    error: str | None = None
    origin: str | None = None
    quant: str | None = None
    stored_name: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape is not None else 0

    @property
    def nbytes(self) -> int:
        """Bytes as stored in the file (a quantized tensor's decoded size would overstate it)."""
        if self.quant is not None and self.span is not None:
            return self.span[1] - self.span[0]
        return self.numel * ITEMSIZE.get(self.dtype or "", 0)

    @property
    def stored_dtype(self) -> str | None:
        """The type to show the user: the quantization type where there is one, else `dtype`."""
        return self.quant or self.dtype

    def shown_as(self, name: str) -> TensorInfo:
        """This tensor under another name, keeping the name its file stores it under."""
        stored = self.stored_name or self.name
        return self._replace(name=name, stored_name=None if stored == name else stored)


NO_FIELDS = (None,) * 5  # TensorInfo's fields after `span`: a plain stored tensor has none of them
make_info = partial(tuple.__new__, TensorInfo)  # a TensorInfo from all its fields, with no Python call


class TensorTable(Mapping[str, TensorInfo]):
    """Plain stored tensors by name, as columns: a name, dtype, shape, file and byte span each,
    and nothing else to say of any of them (no error, tie, origin or quantization).

    Opening a 100,000-tensor pair made 200,000 `TensorInfo`s and dicts of them, a second of
    work: the columns are what the catalog needs, and a `TensorInfo` is made for the one name a
    reader asks for. A table lists each name once.
    """

    def __init__(self, names: list[str], dtype: list[str], shape: list[tuple[int, ...]], file: list[str],
                 start: np.ndarray, end: np.ndarray):
        """`start`, `end`: int64 arrays of each tensor's absolute byte span in its file."""
        self.names, self.dtype, self.shape, self.file, self.start, self.end = names, dtype, shape, file, start, end
        self._index: dict[str, int] | None = None

    @property
    def index(self) -> dict[str, int]:
        """Each name's row (made when first asked: a file's own table is seldom asked)."""
        if self._index is None:
            self._index = dict(zip(self.names, range(len(self.names))))
        return self._index

    @staticmethod
    def concat(tables: list[TensorTable]) -> TensorTable:
        import numpy as np

        def joined(column: str) -> list:
            return list(chain.from_iterable(getattr(table, column) for table in tables))

        return TensorTable(joined("names"), joined("dtype"), joined("shape"), joined("file"),
                           np.concatenate([t.start for t in tables]), np.concatenate([t.end for t in tables]))

    def keep(self, kept: list[bool]) -> TensorTable:
        """The rows where `kept` is true."""
        import numpy as np

        mask = np.array(kept, bool)
        return TensorTable(*(list(compress(column, kept)) for column in (self.names, self.dtype, self.shape, self.file)),
                           self.start[mask], self.end[mask])

    def __getitem__(self, name: str) -> TensorInfo:
        i = self.index[name]
        return TensorInfo(name, self.dtype[i], self.shape[i], self.file[i], (int(self.start[i]), int(self.end[i])))

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self):
        return self.index.keys()

    def values(self) -> list[TensorInfo]:
        """Every tensor, made at once (in C: `map` over the columns)."""
        spans = zip(self.start.tolist(), self.end.tolist())
        return list(map(make_info, zip(self.names, self.dtype, self.shape, self.file, spans, *map(repeat, NO_FIELDS))))

    def items(self):
        return zip(self.names, self.values())


class TensorSource(Protocol):
    """One opened file of a checkpoint (a format module's reader)."""

    path: str

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes in row-major order as `info.dtype`, as a uint8 array (a view
        where possible); a quantized tensor's bytes are its decoded values."""

    def load(self, info: TensorInfo) -> torch.Tensor:
        """The tensor itself, on the CPU, backed by the file's map where possible."""

    def plain(self, info: TensorInfo) -> bool:
        """Whether the tensor's bytes are exactly `info.span` of `info.file`, in row-major order of
        `info.dtype`, so that a reader may take them from the file itself."""

    def close(self) -> None: ...


class TensorUnreadable(Exception):
    """Raised by `raw`/`load` for a tensor whose `error` is set, or whose bytes fail to read."""


@dataclass
class Checkpoint:
    """A model checkpoint: one file, a sharded directory or a training output directory.

    Attributes:
        path: what the user named.
        format: "safetensors", "pytorch", "pytorch-legacy", "gguf" or "dcp".
        files: the files the weights come from, in order.
        tensors: every model tensor by name, in file order (a dict, or a `TensorTable`: read it as a mapping).
        notes: what the user should know about how it was read (skipped files, mappings).
        extras: entries that are not model weights (optimizer state, arguments), one line each.
        metadata: the safetensors `__metadata__` (or GGUF key-value pairs) of the first file, for display.
    """

    path: str
    format: str
    files: list[str]
    tensors: Mapping[str, TensorInfo]
    notes: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    sources: dict[str, TensorSource] = field(default_factory=dict, repr=False)

    @property
    def parameters(self) -> int:
        """Elements over all readable tensors, tied names counted once."""
        return sum(t.numel for t in self._stored())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._stored())

    def _stored(self):
        return (t for t in self.tensors.values() if t.tied_to is None and t.error is None)

    def raw(self, name: str) -> np.ndarray:
        info = self._readable(name)
        return self.sources[info.file].raw(info)

    def load(self, name: str) -> torch.Tensor:
        info = self._readable(name)
        return self.sources[info.file].load(info)

    def _readable(self, name: str) -> TensorInfo:
        info = self.tensors[name]
        if info.error is not None:
            raise TensorUnreadable(info.error)
        return info

    def close(self) -> None:
        for source in self.sources.values():
            source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
