"""From a path the user names to a `Checkpoint`: which files hold the weights, and in what format.

A path is a weights file, a sharded directory with an index, or a training output directory
full of other things. Files are told apart by their first bytes; names only decide which
files are training state (optimizer, scheduler, ...) rather than weights.
"""

from __future__ import annotations

import json
import os
import re

from weightscope.core.checkpoint import Checkpoint, TensorInfo
from weightscope.core.errors import CheckpointError, one_line
from weightscope.core.files import inside, regular_size, sniff
from weightscope.core.formats.pytorch import TorchLegacyFile, TorchZipFile
from weightscope.core.formats.safetensors import SafetensorsFile, reject_duplicates

READERS = {"safetensors": SafetensorsFile, "torch-zip": TorchZipFile, "torch-legacy": TorchLegacyFile}
FORMAT_NAMES = {"safetensors": "safetensors", "torch-zip": "pytorch", "torch-legacy": "pytorch-legacy"}
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_INDEX = 64 * 1024 * 1024
# What training loops write beside the weights (Hugging Face Trainer, accelerate, Lightning).
TRAINING_STATE = [
    (re.compile(r"training_args\.bin$"), "training arguments"),
    (re.compile(r"optimizer(_\d+)?\.(pt|bin|pth)$"), "optimizer state"),
    (re.compile(r"scheduler\.(pt|bin|pth)$"), "learning-rate scheduler state"),
    (re.compile(r"scaler\.(pt|bin|pth)$"), "gradient scaler state"),
    (re.compile(r"rng_state(_\d+)?\.(pt|pth)$"), "random number generator state"),
]


def training_state(name: str) -> str | None:
    """What a training-state file holds, by its conventional name; None for other files."""
    return next((why for pattern, why in TRAINING_STATE if pattern.match(name)), None)


def training_state_notes(entries: list[str]) -> list[str]:
    return [f"skipped {name}: {training_state(name)}" for name in entries if training_state(name)]


def open_checkpoint(path: str) -> Checkpoint:
    """Open a checkpoint by its headers alone.

    Raises:
        CheckpointError: nothing readable as weights at `path`.
    """
    if os.path.isdir(path):
        return open_directory(path)
    kind = sniff(path)
    if kind not in READERS:
        raise CheckpointError(path, f"not a checkpoint format weightscope reads ({describe_kind(kind)})")
    source = READERS[kind](path)
    return assemble(path, FORMAT_NAMES[kind], [source], [])


def describe_kind(kind: str) -> str:
    return "GGUF is not supported yet" if kind == "gguf" else "unrecognised first bytes"


def assemble(path: str, format: str, sources: list, notes: list[str], indexed: dict[str, str] | None = None) -> Checkpoint:
    """A `Checkpoint` from opened files; with an index, only the names it assigns to each file."""
    tensors: dict[str, TensorInfo] = {}
    notes = list(notes)
    extras: list[str] = []
    for source in sources:
        notes += source.notes
        extras += source.extras
        unlisted = 0
        for info in source.tensors:
            if indexed is not None and indexed.get(info.name) != source.path:
                unlisted += 1
            elif info.name in tensors:
                notes.append(f"{source.path}: {info.name} also in {tensors[info.name].file}; the first is used")
            else:
                tensors[info.name] = info
        if unlisted:
            notes.append(f"{source.path}: ignored {unlisted} tensors the index does not assign to this file")
    for name, file in (indexed or {}).items():
        if name not in tensors and os.path.isfile(file):
            tensors[name] = TensorInfo(name, None, None, file, error=f"{file}: has no {name} although the index says so")
    metadata = sources[0].metadata if sources else {}
    return Checkpoint(path, format, [s.path for s in sources], tensors, notes, extras, metadata,
                      {s.path: s for s in sources})


def open_directory(path: str) -> Checkpoint:
    entries = sorted(os.listdir(path))
    for index_name in INDEXES:
        if index_name in entries:
            others = [n for n in INDEXES if n in entries and n != index_name]
            notes = [f"found {', '.join(others)} too; the safetensors weights are used"] if others else []
            return open_indexed(path, os.path.join(path, index_name), entries, notes + training_state_notes(entries))
    weights: dict[str, list[str]] = {}
    notes = training_state_notes(entries)
    not_weights: list[str] = []
    for name in entries:
        file = os.path.join(path, name)
        if training_state(name):
            continue
        try:
            kind = sniff(file, strict=True)
        except CheckpointError:
            kind = "unreadable"
        if kind in READERS:
            weights.setdefault(kind, []).append(file)
        elif not os.path.isdir(file):
            not_weights.append(name)
    if not_weights:
        notes.append(f"skipped {len(not_weights)} files that are not weights: {one_line(', '.join(not_weights), 200)}")
    if not weights:
        raise CheckpointError(path, "no weights files in this directory")
    kind = "safetensors" if "safetensors" in weights else next(iter(weights))
    if len(weights) > 1:
        skipped = [os.path.basename(f) for k, fs in weights.items() if k != kind for f in fs]
        notes.append(f"both safetensors and .bin weights present; using safetensors, skipped {', '.join(skipped)}")
    files = weights[kind]
    if len(files) > 1:
        notes.append(f"no index file; reading all {len(files)} {FORMAT_NAMES[kind]} files")
    sources = [READERS[kind](f) for f in files]
    return assemble(path, FORMAT_NAMES[kind], sources, notes)


def read_index(index_path: str) -> dict[str, str]:
    """The index's `weight_map`: tensor name -> shard file name."""
    size = regular_size(index_path)
    if size > MAX_INDEX:
        raise CheckpointError(index_path, f"index of {size} bytes exceeds the {MAX_INDEX}-byte limit")
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read(), object_pairs_hook=reject_duplicates)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(index_path, f"invalid JSON: {exc}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index_path, "no weight_map of tensor names to file names")
    return weight_map


def open_indexed(path: str, index_path: str, entries: list[str], notes: list[str]) -> Checkpoint:
    """A sharded checkpoint: every shard the index names, each opened on its own."""
    weight_map = read_index(index_path)
    indexed: dict[str, str] = {}
    broken: list[TensorInfo] = []
    sources = []
    kind = None
    for shard in dict.fromkeys(weight_map.values()):  # unique, in order of first mention
        file = os.path.join(path, shard)
        names = [n for n, s in weight_map.items() if s == shard]
        try:
            if not inside(path, file):
                raise CheckpointError(file, "the index names a shard outside the checkpoint directory")
            if not os.path.lexists(file):
                raise CheckpointError(file, "shard named by the index is missing")
            shard_kind = sniff(file)
            if shard_kind not in READERS:
                raise CheckpointError(file, f"shard is not a checkpoint file ({describe_kind(shard_kind)})")
            source = READERS[shard_kind](file)
        except CheckpointError as exc:
            notes.append(str(exc))
            broken += [TensorInfo(n, None, None, file, error=str(exc)) for n in names]
            continue
        kind = kind or shard_kind
        sources.append(source)
        indexed.update((n, file) for n in names)
    suffix = ".safetensors" if index_path.endswith(INDEXES[0]) else ".bin"
    named = set(weight_map.values())
    ignored = [e for e in entries if e.endswith(suffix) and e not in named and not training_state(e)]
    if ignored:
        notes.append(f"ignored {len(ignored)} weights files the index does not name: {one_line(', '.join(ignored), 200)}")
    checkpoint = assemble(path, FORMAT_NAMES.get(kind or "", "safetensors" if "safetensors" in index_path else "pytorch"),
                          sources, notes, indexed)
    for info in broken:
        checkpoint.tensors.setdefault(info.name, info)
    if not sources and broken:
        raise CheckpointError(index_path, "none of the shards it names can be read")
    return checkpoint
