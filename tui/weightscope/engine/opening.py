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
    found = headers(weights)
    if found is None or sum(map(len, found)) < LARGE_HEADERS or found == headers(job.path_a):
        return None
    return weights


def headers(path: str) -> list[bytes] | None:
    """The safetensors headers of `path` (a file, or a directory's files in name order, after
    its index), read cheaply; None where there are none or they cannot be read (only regular
    files are read: a FIFO would never answer)."""
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.files import read_head, read_small
    from weightscope.sources.formats.safetensors import MAX_HEADER

    try:
        if os.path.isdir(path):
            files = [os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(".safetensors")]
            index = os.path.join(path, "model.safetensors.index.json")
            found = [read_small(index, MAX_HEADER)] if os.path.lexists(index) else []
        else:
            files, found = [path], []
        for file in files:
            length = int.from_bytes(read_head(file, 8), "little")
            if length > MAX_HEADER:
                return None
            found.append(read_head(file, 8 + length))
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
