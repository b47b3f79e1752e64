"""Where the statistics get their bytes: an array in memory, or a file read by `pread`.

Tensor data is read with `pread` into buffers this process reuses, never through a memory
map: mapped pages count in the resident set that `top` and cgroups show (a 2 × 13.5 GB pair
scanned through maps showed 17 GB), while pages read this way stay in the page cache, which
is the kernel's to reclaim.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

OPEN_FILES = 64  # descriptors kept open per process (a sharded model has dozens of files)


class ShortRead(Exception):
    """A file ended before the bytes its header promised (it shrank, or is still being written)."""


class Descriptors:
    """Open read-only descriptors by path, the least recently used closed beyond `OPEN_FILES`."""

    def __init__(self):
        self._open: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        fd = self._open.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if len(self._open) >= OPEN_FILES:
                os.close(self._open.popitem(last=False)[1])
        self._open[path] = fd
        return fd

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


descriptors = Descriptors()


def read_into(path: str, offset: int, out: np.ndarray) -> None:
    """Fill `out` (uint8) with the file's bytes from `offset`.

    Raises:
        ShortRead: the file ends first.
        OSError: it cannot be read.
    """
    fd = descriptors.get(path)
    view = memoryview(out)
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise ShortRead(f"{path}: data ends at byte {offset + len(view)} but the file is shorter now")
        done += got


class Bytes:
    """A tensor's bytes as the statistics read them: `size`, and `window(start, stop)`."""

    size: int

    def window(self, start: int, stop: int) -> np.ndarray:
        """Bytes [start, stop), as uint8 (valid until the next call)."""
        raise NotImplementedError


@dataclass
class InMemory(Bytes):
    data: np.ndarray

    def __post_init__(self):
        self.size = self.data.size

    def window(self, start: int, stop: int) -> np.ndarray:
        return self.data[start:stop]


class InFile(Bytes):
    """`size` bytes of a file from `offset`, read a window at a time into one reused buffer."""

    def __init__(self, path: str, offset: int, size: int):
        self.path, self.offset, self.size = path, offset, size
        self._buffer = np.empty(0, np.uint8)

    def window(self, start: int, stop: int) -> np.ndarray:
        if self._buffer.size < stop - start:
            self._buffer = np.empty(stop - start, np.uint8)
        out = self._buffer[:stop - start]
        read_into(self.path, self.offset + start, out)
        return out


def as_bytes(data) -> Bytes | None:
    """`Bytes` for a uint8 array (or None for a missing side)."""
    if data is None or isinstance(data, Bytes):
        return data
    return InMemory(np.asarray(data))
