"""From the command line's paths to a training run: a reference and its checkpoints, in order.

`weightscope diff BASE RUN_DIR/`, `weightscope diff RUN_DIR/` or `weightscope diff a b c d`.
A run directory is a directory without weights of its own that holds checkpoint directories
named as training frameworks name them (`checkpoint-500`, `step_3`, `global_step1200`, ...);
they are taken in the order of their numbers, compared as numbers (`checkpoint-1000` after
`checkpoint-500`). Two paths that are both checkpoints are a pair, as before: no run.

Opening a run skips checkpoints that are not complete (an index naming a missing shard, a
file shorter than its header says, a zip without its directory: a save still under way),
each with a note that names it; the reference must open whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from weightscope.sources.checkpoint import Checkpoint, TensorTable
from weightscope.sources.errors import CheckpointError

# HF Trainer's checkpoint-<n>, DeepSpeed's global_step<n>, and the usual step/epoch/iteration folders.
STEP_NAME = re.compile(r"(?:checkpoint-|step_|step-|global_step|epoch_|iter_)(\d+)")


@dataclass(frozen=True)
class RunPoint:
    """One checkpoint of a run: what the user named (or the run directory held), and its step
    number where its name gives one."""

    path: str
    step: int | None


@dataclass(frozen=True)
class RunSpec:
    """A run before it is opened: the reference, then the checkpoints in order."""

    reference: RunPoint
    steps: tuple[RunPoint, ...]


def step_number(path: str) -> int | None:
    found = STEP_NAME.fullmatch(os.path.basename(os.path.normpath(path)))
    return int(found[1]) if found else None


def step_directories(path: str) -> list[RunPoint] | None:
    """The checkpoints of a run directory in step order; None when `path` is no run directory
    (not a directory, weights of its own, or no step-named directory inside)."""
    if not os.path.isdir(path):
        return None
    found = []
    try:
        entries = os.listdir(path)
    except OSError:
        return None
    for name in entries:
        number = step_number(name)
        full = os.path.join(path, name)
        if number is not None and os.path.isdir(full):
            found.append(RunPoint(full, number))
        elif name.endswith((".safetensors", ".bin", ".gguf", ".index.json")) and os.path.isfile(full):
            return None  # weights of its own: a checkpoint, opened as before
    return sorted(found, key=lambda p: (p.step, p.path)) or None


def plan_run(paths: list[str]) -> RunSpec | None:
    """The run these paths name; None for a pair of checkpoints (today's comparison).

    Raises:
        CheckpointError: a run with fewer than two checkpoints.
    """
    expanded: list[RunPoint] = []
    runs = 0
    for path in paths:
        inside = step_directories(path)
        if inside is None:
            expanded.append(RunPoint(path, step_number(path)))
        else:
            runs += 1
            expanded += inside
    if runs == 0 and len(paths) <= 2:
        return None
    if len(expanded) < 2:
        raise CheckpointError(paths[-1], "a run needs two checkpoints at least (a reference and a step)")
    return RunSpec(expanded[0], tuple(expanded[1:]))


@dataclass
class OpenedRun:
    """The checkpoints of a run that opened whole: the reference first."""

    points: list[RunPoint]
    checkpoints: list[Checkpoint]
    notes: list[str]


def incomplete(checkpoint: Checkpoint) -> str | None:
    """Why an opened checkpoint is not whole (tensors the index names but cannot be read)."""
    if isinstance(checkpoint.tensors, TensorTable):  # columns of plain tensors: none has an error
        return None
    return next((info.error for info in checkpoint.tensors.values() if info.error is not None), None)


def open_run(spec: RunSpec) -> OpenedRun:
    """Open every checkpoint of a run, skipping (with a note) those not complete.

    Raises:
        CheckpointError: the reference cannot be opened whole, or no step can.
    """
    from weightscope.sources.discover import open_checkpoint

    reference = open_checkpoint(spec.reference.path)
    why = incomplete(reference)
    if why is not None:
        reference.close()
        raise CheckpointError(spec.reference.path, f"the reference is not complete: {why}")
    points, checkpoints, notes = [spec.reference], [reference], []
    for point in spec.steps:
        try:
            checkpoint = open_checkpoint(point.path)
        except CheckpointError as exc:
            notes.append(f"skipped {point.path}: not complete or not readable ({exc.problem})")
            continue
        why = incomplete(checkpoint)
        if why is not None:
            checkpoint.close()
            notes.append(f"skipped {point.path}: not complete ({why})")
            continue
        points.append(point)
        checkpoints.append(checkpoint)
    if len(checkpoints) < 2:
        for checkpoint in checkpoints:
            checkpoint.close()
        raise CheckpointError(spec.steps[-1].path if spec.steps else spec.reference.path,
                              "no checkpoint of the run besides the reference could be opened")
    return OpenedRun(points, checkpoints, notes)
