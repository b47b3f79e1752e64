"""Reading tensors that lie in a file as contiguous byte spans, through one private map.

The scan reads plain tensors itself, with `pread` (`compare/reading.py`); a map serves the
tensors a source must decode (GGUF blocks, FP8 with its scales) and the detail pane. Mapped
pages count in the resident set until they are dropped, so a map drops its pages after every
`RESIDENT` bytes it hands out: the data stays in the page cache, and an array still in use
faults its pages back in from the file (the map is never written, so nothing is lost).
"""

from __future__ import annotations

import mmap

import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorUnreadable
from weightscope.sources.dtypes import torch_dtype
from weightscope.sources.errors import CheckpointError
from weightscope.sources.files import map_file


RESIDENT = 256 << 20


class MappedFile:
    """A `TensorSource` for tensors whose `span` is set: bytes come straight from the map."""

    PLAIN_BY_SPAN = True  # `plain` is its rule below for every tensor (a subclass that overrides it says False)

    def __init__(self, path: str):
        self.path = path
        self._map = None
        self._handed = 0  # bytes handed out since the map's pages were last dropped

    def raw(self, info: TensorInfo) -> np.ndarray:
        start, end = info.span
        if end == start:
            return np.empty(0, np.uint8)
        if self._map is None:
            try:
                self._map = map_file(self.path)
            except CheckpointError as exc:
                raise TensorUnreadable(exc.problem) from None
        if self._map is None or end > len(self._map):  # the file shrank since its header was read
            raise TensorUnreadable(f"data ends at byte {end} but {self.path} is shorter now")
        self._handed += end - start
        if self._handed > RESIDENT:
            self._map.madvise(mmap.MADV_DONTNEED)
            self._handed = end - start
        return np.frombuffer(self._map, np.uint8, count=end - start, offset=start)

    def plain(self, info: TensorInfo) -> bool:
        return info.span is not None and info.quant is None and info.origin is None

    def load(self, info: TensorInfo):
        import torch

        if info.span[0] == info.span[1]:  # torch.from_numpy gives an empty array stride 0, which view() refuses
            return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        data = torch.from_numpy(self.raw(info))
        return data.view(torch_dtype(info.dtype)).reshape(info.shape)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # arrays still view it; the map goes when they do
                pass
            self._map = None
