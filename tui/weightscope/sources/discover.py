"""From a path the user names to a `Checkpoint`: which files hold the weights, and in what format.

A path is a weights file, a sharded directory with an index, a torch.distributed.checkpoint
directory, a training output directory full of other things, or a Hugging Face id found in
the local cache. Files are told apart by their first bytes; names only decide which files
are training state (optimizer, scheduler, ...) rather than weights, and which GGUF files
are the parts of one split model.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from itertools import compress, repeat
from operator import eq, itemgetter

from weightscope.sources import hub
from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorTable
from weightscope.sources.errors import CheckpointError, one_line
from weightscope.sources.files import inside, parse_json, parsed_json, read_small, sniff
from weightscope.sources.formats import dcp, scaled
from weightscope.sources.formats.gguf import GGUFFile
from weightscope.sources.formats.pytorch import TorchLegacyFile, TorchZipFile
from weightscope.sources.formats.safetensors import SafetensorsFile

READERS = {"safetensors": SafetensorsFile, "torch-zip": TorchZipFile, "torch-legacy": TorchLegacyFile,
           "gguf": GGUFFile}
FORMAT_NAMES = {"safetensors": "safetensors", "torch-zip": "pytorch", "torch-legacy": "pytorch-legacy",
                "gguf": "gguf"}
# llama.cpp's gguf-split names the parts of one model `<name>-0000k-of-0000n.gguf`.
GGUF_PART = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf")
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
    if hub.looks_like_id(path):
        snapshot, repository = hub.resolve(path)
        # The snapshot's files are links into the repository folder's blobs: that folder is
        # the one they must stay inside.
        checkpoint = open_directory(snapshot, root=repository)
        checkpoint.path = path
        checkpoint.notes.insert(0, f"{path}: from the Hugging Face cache, {snapshot}")
        return checkpoint
    if os.path.isdir(path):
        return open_directory(path)
    kind = sniff(path)
    if kind not in READERS:
        raise CheckpointError(path, "not a checkpoint format weightscope reads (unrecognised first bytes)")
    source = READERS[kind](path)
    notes = []
    if kind == "gguf" and source.split is not None:
        part, count = source.split
        notes.append(f"{path}: part {part + 1} of {count} of a split GGUF; open its directory for all parts")
    return assemble(path, FORMAT_NAMES[kind], [source], notes)


def assemble(path: str, format: str, sources: list, notes: list[str], indexed: dict[str, str] | None = None,
             unreadable: list[TensorInfo] = ()) -> Checkpoint:
    """A `Checkpoint` from opened files; with an index, only the names it assigns to each file.
    Quantized weights (FP8 with scales, MXFP4) become their decoded values (`formats.scaled`).

    Args:
        unreadable: tensors the index names in files that cannot be read, each with its error.
    """
    notes = list(notes) + [note for source in sources for note in source.notes]
    extras = [extra for source in sources for extra in source.extras]
    table = joined_tables(sources, indexed, notes) if not unreadable else None
    tensors = table if table is not None else joined_tensors(sources, indexed, notes)
    for info in unreadable:
        tensors.setdefault(info.name, info)
    metadata = sources[0].metadata if sources else {}
    tensors, readers, quantized = scaled.wrap(sources, tensors)
    return Checkpoint(path, format, [s.path for s in sources], tensors, notes + quantized, extras, metadata,
                      readers)


def assigned(source, indexed: dict[str, str] | None, names: list[str], notes: list[str]) -> list[bool] | None:
    """Which of a file's tensors the index assigns to it (None: all, or there is no index);
    notes how many it does not."""
    if indexed is None:
        return None
    mine = list(map(eq, map(indexed.get, names), repeat(source.path)))
    if not mine.count(False):
        return None
    notes.append(f"{source.path}: ignored {mine.count(False)} tensors the index does not assign to this file")
    return mine


def joined_tables(sources: list, indexed: dict[str, str] | None, notes: list[str]) -> TensorTable | None:
    """Every file's tensors as one `TensorTable`, where every file has one and nothing is odd:
    no name in two files, none the index names but no file has (else None, and the notes are
    left as they were: `joined_tensors` says what is odd)."""
    tables = [getattr(source, "table", None) for source in sources]
    if not sources or None in tables:
        return None
    table = TensorTable.concat(tables)
    if indexed is not None and len(indexed) == len(table) and list(map(indexed.get, table.names)) == table.file:
        return table  # the index assigns each tensor to the file that has it (nearly always): no name twice
    said = []
    for k, (source, table) in enumerate(zip(sources, tables)):
        kept = assigned(source, indexed, table.names, said)
        if kept is not None:
            tables[k] = table.keep(kept)
    table = TensorTable.concat(tables)
    if len(set(table.names)) < len(table) or (indexed is not None and len(indexed) != len(table)):
        return None
    notes += said
    return table


def joined_tensors(sources: list, indexed: dict[str, str] | None, notes: list[str]) -> dict[str, TensorInfo]:
    """Every file's tensors by name, the first of a name found twice kept; a name the index
    assigns to a file that lacks it is an error."""
    tensors: dict[str, TensorInfo] = {}
    for source in sources:
        infos = source.tensors
        names = list(map(itemgetter(0), infos))
        kept = assigned(source, indexed, names, notes)
        if kept is not None:
            infos, names = list(compress(infos, kept)), list(compress(names, kept))
        mine = dict(zip(names, infos))  # (a file holds each name once)
        for name in mine.keys() & tensors.keys():
            notes.append(f"{source.path}: {name} also in {tensors[name].file}; the first is used")
            del mine[name]
        tensors.update(mine)
    absent = indexed.keys() - tensors.keys() if indexed is not None else ()
    for name in [name for name in indexed if name in absent] if absent else ():
        file = indexed[name]
        if os.path.isfile(file):
            tensors[name] = TensorInfo(name, None, None, file, error=f"{file}: has no {name} although the index says so")
    return tensors


def open_directory(path: str, root: str | None = None) -> Checkpoint:
    """A directory's weights; with `root`, the folder its files may resolve into (default: itself)."""
    if dcp.is_dcp(path):
        return open_dcp(path)
    entries = sorted(os.listdir(path))
    for index_name in INDEXES:
        if index_name in entries:
            others = [n for n in INDEXES if n in entries and n != index_name]
            notes = [f"found {', '.join(others)} too; the safetensors weights are used"] if others else []
            return open_indexed(path, os.path.join(path, index_name), entries, notes + training_state_notes(entries),
                                root or path)
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
    if kind == "gguf":
        return open_gguf_parts(path, files, notes)
    if len(files) > 1:
        notes.append(f"no index file; reading all {len(files)} {FORMAT_NAMES[kind]} files")
    sources = [READERS[kind](f) for f in files]
    return assemble(path, FORMAT_NAMES[kind], sources, notes)


def open_gguf_parts(path: str, files: list[str], notes: list[str]) -> Checkpoint:
    """A directory's GGUF model: its one GGUF file, or every part of one split model.

    Raises:
        CheckpointError: several GGUF files that are not the parts of one model (a repository
            of quantizations, say): which one is meant cannot be guessed.
    """
    names = [os.path.basename(f) for f in files]
    parts = [GGUF_PART.fullmatch(n) for n in names]
    if len(files) > 1 and not (all(parts) and len({(m[1], m[3]) for m in parts}) == 1
                               and int(parts[0][3]) == len(files)):
        raise CheckpointError(path, f"holds {len(files)} GGUF files that are not the parts of one model; "
                                    f"name one: {one_line(', '.join(names), 200)}")
    sources = [GGUFFile(files[0])]
    sources += [GGUFFile(f, inherited=sources[0].kv) for f in files[1:]]
    if len(files) > 1:
        declared = [s.split for s in sources]
        if declared != [(k, len(files)) for k in range(len(files))]:
            for source in sources:
                source.close()
            raise CheckpointError(path, "the GGUF parts' split.no and split.count do not match their names")
        notes.append(f"split GGUF: reading all {len(files)} parts")
    return assemble(path, "gguf", sources, notes)


def open_dcp(path: str) -> Checkpoint:
    """A torch.distributed.checkpoint directory: every tensor from `.metadata`, data on demand."""
    source = dcp.DcpDirectory(path)
    return Checkpoint(path, "dcp", source.files, {t.name: t for t in source.tensors}, source.notes,
                      source.extras, source.metadata, dict.fromkeys(source.files[1:], source))


def read_index(index_path: str) -> dict[str, str]:
    """The index's `weight_map`: tensor name -> shard file name."""
    weight_map = parsed_json(index_path, read_small(index_path, MAX_INDEX), weight_map_of)
    if weight_map is None:
        raise CheckpointError(index_path, "no weight_map of tensor names to file names")
    return dict(weight_map)


@lru_cache(maxsize=4)
def weight_map_of(text: bytes) -> dict[str, str] | None:
    """An index's `weight_map` (None where it has none of names to file names). Kept for the
    last few indexes: B's is nearly always the very bytes of A's, and is then not parsed again."""
    index = parse_json(text)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not set(map(type, weight_map.values())) <= {str}:
        return None
    return weight_map


def open_indexed(path: str, index_path: str, entries: list[str], notes: list[str], root: str) -> Checkpoint:
    """A sharded checkpoint: every shard the index names, each opened on its own, all inside `root`."""
    weight_map = read_index(index_path)
    files = {shard: os.path.join(path, shard) for shard in dict.fromkeys(weight_map.values())}  # first mention first
    indexed: dict[str, str] = dict(zip(weight_map, map(files.__getitem__, weight_map.values())))
    broken: list[TensorInfo] = []
    sources = []
    kind = None
    for shard, file in files.items():
        try:
            if not inside(root, file):
                raise CheckpointError(file, "the index names a shard outside the checkpoint directory")
            if not os.path.lexists(file):
                raise CheckpointError(file, "shard named by the index is missing")
            shard_kind = sniff(file)
            if shard_kind not in READERS:
                raise CheckpointError(file, "shard is not a checkpoint file (unrecognised first bytes)")
            source = READERS[shard_kind](file)
        except CheckpointError as exc:
            notes.append(str(exc))
            names = [name for name, other in weight_map.items() if other == shard]
            broken += [TensorInfo(n, None, None, file, error=str(exc)) for n in names]
            for name in names:
                del indexed[name]
            continue
        kind = kind or shard_kind
        sources.append(source)
    suffix = ".safetensors" if index_path.endswith(INDEXES[0]) else ".bin"
    named = set(weight_map.values())
    ignored = [e for e in entries if e.endswith(suffix) and e not in named and not training_state(e)]
    if ignored:
        notes.append(f"ignored {len(ignored)} weights files the index does not name: {one_line(', '.join(ignored), 200)}")
    checkpoint = assemble(path, FORMAT_NAMES.get(kind or "", "safetensors" if "safetensors" in index_path else "pytorch"),
                          sources, notes, indexed, broken)
    if not sources and broken:
        raise CheckpointError(index_path, "none of the shards it names can be read")
    return checkpoint
