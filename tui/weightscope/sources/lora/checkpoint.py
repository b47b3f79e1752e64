"""A checkpoint with LoRA-adapted tensors: what each computed tensor is made of, and how it is read.

`LoraCheckpoint` is a `Checkpoint` whose adapted tensors carry an `origin` and are computed
on demand by `LoraSource` as W + scaling · B@A in float32 (`addmm`, no second full-size
temporary), one tensor at a time; the last one is kept, since a scan reads a pair's bytes
for statistics and again for histograms. Everything else is read from its file as stored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorSource
from weightscope.sources.lora.config import LoraConfig


@dataclass(frozen=True)
class LoraModule:
    """One tensor the adapter changes: W + scaling · B@A, or (B@A)ᵀ for embeddings and fan_in_fan_out.

    Attributes:
        name: the computed tensor's name (the base's name for it).
        module: the module's name as PEFT saw it, which rank_pattern and alpha_pattern match.
        weight, lora_a, lora_b: W and the factors as stored (in the base's or the adapter's files).
    """

    name: str
    module: str
    weight: TensorInfo
    lora_a: TensorInfo
    lora_b: TensorInfo
    r: int
    alpha: float
    scaling: float
    transpose: bool

    @property
    def origin(self) -> str:
        turn = ", ΔW = scaling · (B@A)ᵀ" if self.transpose else ""
        return f"W + ΔW, LoRA r={self.r}, alpha {self.alpha:g}, scaling {self.scaling:g}{turn}"


@dataclass
class LoraCheckpoint(Checkpoint):
    """A checkpoint whose adapted tensors are computed as W + ΔW.

    Attributes:
        modules: the computed tensors' recipes by tensor name.
        roles: one line for every tensor the adapter computes, replaces or adds (factors,
            magnitude vectors, modules it could not place), and alarms about it.
        config: the adapter's settings; None when no adapter_config.json was found.
        adapter_parameters: the tensors shown that are the adapter's own parameters (its factors, DoRA
            magnitudes), not model weights: browsable, but no difference between the models.
    """

    modules: dict[str, LoraModule] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    config: LoraConfig | None = None
    adapter_parameters: set[str] = field(default_factory=set)

    @property
    def alarms(self) -> list[str]:
        return [n for n in self.notes if n.startswith("ALARM")]

    def factors(self, name: str):
        """(B, A) of a computed tensor in float32, as stored (before scaling or transposing);
        float32 factors are views of their file's map: do not write to them."""
        module = self.modules[name]
        source = self.sources[self.tensors[name].file]
        return source.read(module.lora_b).float(), source.read(module.lora_a).float()

    def delta(self, name: str):
        """ΔW of a computed tensor alone, float32, in W's shape."""
        module = self.modules[name]
        b, a = self.factors(name)
        out = (b @ a).mul_(module.scaling)
        return out.T if module.transpose else out


class LoraSource:
    """Reads a LoRA checkpoint's tensors: stored ones through their own files (under the name
    the file gives them), computed ones as W + ΔW."""

    def __init__(self, path: str, readers: dict[str, TensorSource], stored: dict[str, TensorInfo],
                 modules: dict[str, LoraModule], own: list[TensorSource]):
        self.path = path
        self.readers, self.stored, self.modules, self.own = readers, stored, modules, own
        self.computed = functools.lru_cache(maxsize=1)(self._compute)

    def read(self, info: TensorInfo):
        return self.readers[info.file].load(info)

    def _compute(self, name: str):
        import torch

        module = self.modules[name]
        w = self.read(module.weight).to(torch.float32, copy=True)  # never in place on a file's map
        b, a = self.read(module.lora_b).float(), self.read(module.lora_a).float()
        if module.transpose:
            return w.addmm_(a.T, b.T, alpha=module.scaling)
        return w.addmm_(b, a, alpha=module.scaling)

    def plain(self, info: TensorInfo) -> bool:
        if info.origin is not None and info.name in self.modules:
            return False
        original = self.stored.get(info.name, info)
        return original.span == info.span and self.readers[original.file].plain(original)

    def load(self, info: TensorInfo):
        if info.origin is not None and info.name in self.modules:
            return self.computed(info.name)
        original = self.stored.get(info.name, info)
        return self.readers[original.file].load(original)

    def raw(self, info: TensorInfo) -> np.ndarray:
        if info.origin is not None and info.name in self.modules:
            from weightscope.sources.formats.pytorch import as_bytes

            return as_bytes(self.computed(info.name))
        original = self.stored.get(info.name, info)
        return self.readers[original.file].raw(original)

    def close(self) -> None:
        self.computed.cache_clear()
        for source in self.own:
            source.close()


def adapter_parameters(checkpoint: Checkpoint) -> set[str]:
    """The adapter parameters a checkpoint shows beside its weights (none for a plain checkpoint)."""
    return checkpoint.adapter_parameters if isinstance(checkpoint, LoraCheckpoint) else set()


def role(checkpoint: Checkpoint, name: str) -> str | None:
    """What the adapter did to or added as this tensor; None for a plain checkpoint's tensors."""
    return checkpoint.roles.get(name) if isinstance(checkpoint, LoraCheckpoint) else None
