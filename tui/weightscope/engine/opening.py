"""What an engine opens for a job: both checkpoints, their alignment and its catalog."""

from __future__ import annotations

from weightscope.compare import catalog as cat
from weightscope.compare.align import Alignment, align
from weightscope.compare.scan import single_alignment
from weightscope.engine.protocol import Job
from weightscope.sources.checkpoint import Checkpoint


def open_job(job: Job) -> tuple[Checkpoint, Checkpoint | None, Alignment, cat.Catalog]:
    """(A, B or None when A is browsed alone, the alignment, the catalog).

    Raises:
        CheckpointError: a side cannot be opened at all.
    """
    from weightscope.sources.discover import open_checkpoint
    from weightscope.sources.pair import open_merge_check, open_pair

    if job.path_b is None:
        a = open_checkpoint(job.path_a)
        alignment = single_alignment(a)
        return a, None, alignment, cat.build(a, None, alignment)
    if job.adapter is not None:
        a, b = open_merge_check(job.path_a, job.path_b, job.adapter)
    else:
        a, b = open_pair(job.path_a, job.path_b, job.lora_alpha, job.lora_scaling)
    alignment = align(a, b)
    return a, b, alignment, cat.build(a, b, alignment)
