"""What an engine opens for a job: both checkpoints, their alignment and its catalog.

Opening a 100,000-tensor side takes a few tenths of a second, all of it in one interpreter.
B's headers are nearly always the very bytes of A's (a fine-tune saved by the same writer):
then B opens from what opening A parsed, in a few hundredths. Otherwise the engine opens A
while a worker process opens B's weights (`opens_elsewhere`). Meanwhile the client builds
the name tree of A's names (`protocol.Names`), which is the tree of the pairs whenever both
sides name the same tensors in the same order, as nearly always.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from weightscope.compare import catalog as cat
from weightscope.compare.align import Alignment, align
from weightscope.compare.scan import single_alignment
from weightscope.engine.protocol import Job
from weightscope.sources.checkpoint import Checkpoint, TensorTable

LARGE_HEADERS = 1 << 20  # bytes of header (about 8,000 tensors) from which B opens in a worker
END = 1 << 16  # bytes of each end of a header that tell B's from A's (see `header_ends`)


def open_job(job: Job, stored_b: Callable[[], Checkpoint | None] | None = None,
             meanwhile: Callable[[Checkpoint], object] | None = None
             ) -> tuple[Checkpoint, Checkpoint | None, Alignment, cat.Catalog]:
    """(A, B or None when A is browsed alone, the alignment, the catalog).

    Args:
        stored_b: gives B's weights where another process opened them (None: open them here);
            asked once A is open.
        meanwhile: called with A before B is opened.

    Raises:
        CheckpointError: a side cannot be opened at all.
    """
    from weightscope.sources.discover import open_checkpoint
    from weightscope.sources.pair import open_merge_check, open_pair

    if job.path_b is None:
        a = open_checkpoint(job.path_a)
        if meanwhile:
            meanwhile(a)
        alignment = single_alignment(a)
        return a, None, alignment, cat.build(a, None, alignment)
    if job.adapter is not None:
        a, b = open_merge_check(job.path_a, job.path_b, job.adapter)
        if meanwhile:
            meanwhile(a)
    else:
        a = open_checkpoint(job.path_a)
        try:
            if meanwhile:
                meanwhile(a)
        except BaseException:
            a.close()
            raise
        a, b = open_pair(job.path_a, job.path_b, job.lora_alpha, job.lora_scaling, a, stored_b() if stored_b else None)
    alignment = align(a, b)
    return a, b, alignment, cat.build(a, b, alignment)


def opens_elsewhere(job: Job) -> str | None:
    """The weights of B that a worker process may open while the engine opens A (`open_weights`):
    where their headers are large, and not the very bytes of A's headers (then B opens here
    from what opening A parsed, sooner than a worker could send it); small ones open here
    sooner than a worker starts."""
    from weightscope.sources.lora.adapters import locate

    if job.path_b is None or job.adapter is not None:
        return None
    weights = locate(job.path_b)[0]
    found = header_ends(weights)
    if found is None or sum(size for size, _, _ in found) < LARGE_HEADERS or found == header_ends(job.path_a):
        return None
    return weights


def header_ends(path: str) -> list[tuple[int, bytes, bytes]] | None:
    """The safetensors headers of `path` (a file, or a directory's files in name order, after
    its index) as (size, first and last `END` bytes), read cheaply: another model's headers
    differ there (in names, dtypes or the offsets that follow them), a fine-tune's are the same
    bytes. None where there are none or they cannot be read (only regular files are read: a
    FIFO would never answer)."""
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.files import regular_size
    from weightscope.sources.formats.safetensors import MAX_HEADER

    def ends(file: str, header: bool) -> tuple[int, bytes, bytes]:
        """(size, first and last `END` bytes) of the file, or of the safetensors header it starts with."""
        size = regular_size(file)  # (checked before the file is opened)
        with open(file, "rb") as f:
            start = 8 if header else 0
            if header:
                size, total = int.from_bytes(os.pread(f.fileno(), 8, 0), "little"), size
                if size > min(MAX_HEADER, total - 8):
                    raise CheckpointError(file, "no safetensors header")
            end = min(size, END)
            return size, os.pread(f.fileno(), end, start), os.pread(f.fileno(), end, start + size - end)

    try:
        if os.path.isdir(path):
            files = [os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(".safetensors")]
            index = os.path.join(path, "model.safetensors.index.json")
            found = [ends(index, header=False)] if os.path.lexists(index) else []
        else:
            files, found = [path], []
        found += [ends(file, header=True) for file in files]
        return found or None
    except (CheckpointError, OSError):
        return None


def open_weights(path: str) -> Checkpoint | None:
    """A checkpoint opened to be sent to the engine: well-formed safetensors files only, whose
    `TensorTable` crosses a pipe in a few hundredths of a second (None for any other, which
    the engine opens itself)."""
    from weightscope.sources.discover import open_checkpoint
    from weightscope.sources.formats.safetensors import SafetensorsFile

    checkpoint = open_checkpoint(path)
    if isinstance(checkpoint.tensors, TensorTable) and all(type(s) is SafetensorsFile for s in checkpoint.sources.values()):
        return checkpoint
    checkpoint.close()
    return None
