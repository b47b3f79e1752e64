"""Opening what is compared: A and B (B possibly a LoRA adapter over A), or a merge check.

A LoRA adapter is one kind of source among the others: a path that holds a PEFT adapter (or
a PEFT-wrapped state dict) opens as a virtual checkpoint over A (`lora.adapters.open_over`).
"""

from __future__ import annotations

from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.discover import open_checkpoint
from weightscope.sources.errors import CheckpointError
from weightscope.sources.lora.adapters import apply, locate, open_over
from weightscope.sources.lora.checkpoint import LoraCheckpoint
from weightscope.sources.lora.config import CONFIG, GivenScaling, read_config


def open_pair(path_a: str, path_b: str, lora_alpha: float | None = None, lora_scaling: float | None = None,
              a: Checkpoint | None = None, stored_b: Checkpoint | None = None) -> tuple[Checkpoint, Checkpoint]:
    """A and B as the app and `diff` compare them: B is a LoRA checkpoint over A when it is a
    PEFT adapter directory or a PEFT-wrapped state dict, and opened as stored otherwise.

    Args:
        lora_alpha, lora_scaling: the scaling of an adapter saved without adapter_config.json
            (scaling = lora_alpha / r, or lora_scaling); at most one.
        a, stored_b: A, and the weights `locate(path_b)` names, where they were opened already
            (the engine opens the two sides at once); they are closed with the rest on failure.

    Raises:
        CheckpointError: either side cannot be opened.
        ValueError: both lora_alpha and lora_scaling, or a value that is not finite.
    """
    try:
        given = GivenScaling(lora_alpha, lora_scaling) if (lora_alpha, lora_scaling) != (None, None) else None
        a = a or open_checkpoint(path_a)
    except BaseException:
        for side in (a, stored_b):
            if side is not None:
                side.close()
        raise
    try:
        b = open_over(a, path_b, given, stored_b)
        if given is not None and not isinstance(b, LoraCheckpoint):
            b.notes.append(f"the {given} given is not used: B is not a LoRA adapter")
        return a, b
    except BaseException:
        a.close()
        raise


def open_merge_check(base_path: str, merged_path: str, adapter_path: str) -> tuple[Checkpoint, Checkpoint]:
    """(BASE + ΔW, MERGED): their diff is the merge's residual MERGED − (BASE + ΔW) per tensor,
    zero up to rounding when the adapter was merged right.

    Raises:
        CheckpointError: a side cannot be opened, or `adapter_path` is not a LoRA adapter.
    """
    opened: list[Checkpoint] = []
    try:
        base = open_checkpoint(base_path)
        opened.append(base)
        weights, config_path = locate(adapter_path)
        if config_path is None:
            raise CheckpointError(adapter_path, f"no {CONFIG}: not a PEFT adapter")
        stored = open_checkpoint(weights)
        opened.append(stored)
        config = read_config(config_path)
        if config.peft_type != "LORA":
            raise CheckpointError(config_path, f"PEFT type {config.peft_type} is not supported (LoRA only)")
        applied = apply(base, stored, config, [config_path], f"{base_path} + {adapter_path}", extras=False)
        opened.append(open_checkpoint(merged_path))
        return applied, opened[-1]
    except BaseException:
        for checkpoint in opened:
            checkpoint.close()
        raise
