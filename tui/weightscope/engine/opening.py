"""What an engine opens for a job: both checkpoints, their alignment and its catalog.

Opening a 100,000-tensor side takes a few tenths of a second, all of it in one interpreter:
the engine opens A while a worker process opens B's weights (`open_elsewhere`), and builds
the name tree of A's names meanwhile, which is the tree of the pairs whenever both sides name
the same tensors in the same order, as nearly always.
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
             ) -> tuple[Checkpoint, Checkpoint | None, Alignment, cat.Catalog, object]:
    """(A, B or None when A is browsed alone, the alignment, the catalog, what `meanwhile` made).

    Args:
        stored_b: gives B's weights where another process opened them (None: open them here);
            asked once A is open.
        meanwhile: called with A before B is asked for.

    Raises:
        CheckpointError: a side cannot be opened at all.
    """
    from weightscope.sources.discover import open_checkpoint
    from weightscope.sources.pair import open_merge_check, open_pair

    if job.path_b is None:
        a = open_checkpoint(job.path_a)
        alignment = single_alignment(a)
        return a, None, alignment, cat.build(a, None, alignment), meanwhile(a) if meanwhile else None
    if job.adapter is not None:
        a, b = open_merge_check(job.path_a, job.path_b, job.adapter)
        made = meanwhile(a) if meanwhile else None
    else:
        a = open_checkpoint(job.path_a)
        try:
            made = meanwhile(a) if meanwhile else None
        except BaseException:
            a.close()
            raise
        a, b = open_pair(job.path_a, job.path_b, job.lora_alpha, job.lora_scaling, a, stored_b() if stored_b else None)
    alignment = align(a, b)
    return a, b, alignment, cat.build(a, b, alignment), made


def opens_elsewhere(job: Job) -> str | None:
    """The weights of B that a worker process may open while the engine opens A (`open_weights`):
    where their headers are large; small ones open here sooner than a worker starts."""
    from weightscope.sources.lora.adapters import locate

    if job.path_b is None or job.adapter is not None:
        return None
    weights = locate(job.path_b)[0]
    return weights if header_bytes(weights) >= LARGE_HEADERS else None


def header_bytes(path: str) -> int:
    """About how many bytes of safetensors header `path` holds, found cheaply: a sharded
    directory's index size, else the header lengths its files begin with (0 where unknown;
    only regular files are read: a FIFO would never answer)."""
    from weightscope.sources.errors import CheckpointError
    from weightscope.sources.files import read_head, regular_size

    try:
        if os.path.isdir(path):
            index = os.path.join(path, "model.safetensors.index.json")
            if os.path.lexists(index):
                return regular_size(index)
            files = [os.path.join(path, name) for name in os.listdir(path) if name.endswith(".safetensors")]
        else:
            files = [path]
        return sum(int.from_bytes(read_head(file, 8), "little") for file in files)
    except (CheckpointError, OSError):
        return 0


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
