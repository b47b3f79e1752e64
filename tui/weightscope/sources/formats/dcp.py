"""torch.distributed.checkpoint directories: a pickled `.metadata` and the `*.distcp` files it indexes.

torch reads `.metadata` with a plain `pickle.load`, which runs whatever a hostile file asks
(docs/reading-untrusted-files.md, rule 5). Here it is read by an unpickler that admits only
the classes DCP metadata is made of (its dataclasses, `torch.Size`, dtypes, layouts) — the
way `weights_only=True` admits only tensors — and everything used from it is then checked:
types, shapes, chunks that tile their tensor, and byte ranges inside regular files inside
the directory.

A tensor is read on demand by `torch.distributed.checkpoint.load` with a state dict holding
only that tensor: in a single process it needs no process group, and it assembles tensors
saved in several chunks. Its reader is handed the checked metadata rather than unpickling
the file again, and loads each stored blob (a `torch.save` archive) with `weights_only=True`.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections import defaultdict

import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorUnreadable
from weightscope.sources.dtypes import ITEMSIZE, spelling, torch_dtype
from weightscope.sources.errors import CheckpointError, one_line
from weightscope.sources.files import inside, read_head, regular_size
from weightscope.sources.formats.pytorch import WEIGHT_KEYS, as_bytes, refusal

METADATA = ".metadata"
MAX_METADATA = 1 << 30
MAX_DIMS = 64
OPTIMIZER_KEYS = ("optim", "optimizer")
DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},  # a layout by its name, from a fixed table
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
    "collections": {"OrderedDict"},
}


def is_dcp(directory: str) -> bool:
    """Whether a directory holds a DCP checkpoint: a `.metadata` file that is a pickle."""
    path = os.path.join(directory, METADATA)
    try:
        head = read_head(path, 2)
    except CheckpointError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and refuses every other global (`find_class` is the only way a
    pickle reaches code)."""

    def find_class(self, module: str, name: str):
        import torch

        if name in DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: not part of DCP metadata")


def read_metadata(path: str):
    """The checked-type `Metadata` of a `.metadata` file.

    Raises:
        CheckpointError: too large, not unpicklable with the allowed classes, or not DCP metadata.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    size = regular_size(path)
    if size > MAX_METADATA:
        raise CheckpointError(path, f"{size} bytes exceeds the {MAX_METADATA}-byte limit")
    try:
        with open(path, "rb") as f:
            metadata = MetadataUnpickler(f).load()
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from a constructor, ...
        raise CheckpointError(path, f"cannot read DCP metadata: {exc}") from None
    if not (isinstance(metadata, Metadata) and isinstance(metadata.state_dict_metadata, dict)
            and isinstance(metadata.storage_data, dict)
            and all(isinstance(fqn, str) for fqn in metadata.state_dict_metadata)):
        raise CheckpointError(path, "not DCP metadata (no state_dict_metadata of names and storage_data)")
    return metadata


def offset_key(offset) -> tuple | None:
    return tuple(offset) if isinstance(offset, tuple) else None


def is_shape(value) -> bool:
    return (isinstance(value, tuple) and len(value) <= MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value))


class DcpDirectory:
    """A DCP checkpoint directory, listed from its metadata; one tensor loaded at a time.

    Attributes:
        tensors: the model's tensors, nested keys joined with dots.
        files: `.metadata` and the data files the model's tensors lie in.
        extras: optimizer state and other entries that are not model weights, one line each.
    """

    def __init__(self, path: str):
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        self.metadata: dict[str, str] = {}
        self.notes: list[str] = []
        self._metadata = read_metadata(os.path.join(path, METADATA))
        self._reader = None
        self._sizes: dict[str, int | str] = {}  # data file -> size, or why it cannot be read
        self._storage = {(getattr(index, "fqn", None), offset_key(getattr(index, "offset", None))): info
                         for index, info in self._metadata.storage_data.items()}
        # planner_data holds each flattened name's path of keys in the saved (nested) state dict
        planner_data = getattr(self._metadata, "planner_data", None)
        planner_data = planner_data if isinstance(planner_data, dict) else {}
        entries = {}
        for fqn, md in self._metadata.state_dict_metadata.items():
            keys = planner_data.get(fqn)
            keys = tuple(str(k) for k in keys) if isinstance(keys, tuple) and keys else (fqn,)
            entries[fqn] = (keys, isinstance(md, TensorStorageMetadata))
        tops = {keys[0] for keys, is_tensor in entries.values() if is_tensor}
        under = next((k for k in WEIGHT_KEYS if k in tops), None)
        if under is not None:
            self.notes.append(f"{path}: weights found under '{under}'")
        self._fqns: dict[str, str] = {}
        tensors, others = [], defaultdict(lambda: [0, 0])
        for fqn, (keys, is_tensor) in entries.items():
            model = keys[0] == under if under is not None else keys[0] not in OPTIMIZER_KEYS
            if model and is_tensor:
                name = ".".join(keys[1:] if under is not None and len(keys) > 1 else keys)
                self._fqns[name] = fqn
                info = self._info(name, fqn)
                tensors.append(info if fqn == name else info._replace(stored_name=fqn))
            else:
                others[keys[0]][0 if is_tensor else 1] += 1
        self.tensors = tensors
        self.extras = [describe(top, *counts) for top, counts in others.items()]
        data_files = sorted({t.file for t in tensors if t.file != path})
        self.files = [os.path.join(path, METADATA), *data_files]

    def _info(self, name: str, fqn: str) -> TensorInfo:
        import torch

        md = self._metadata.state_dict_metadata[fqn]

        def bad(problem: str, dtype=None, shape=None, file=None) -> TensorInfo:
            return TensorInfo(name, dtype, shape, file or self.path, error=f"{self.path}: {name}: {problem}")

        dtype = getattr(getattr(md, "properties", None), "dtype", None)
        if not isinstance(dtype, torch.dtype) or spelling(dtype) not in ITEMSIZE:
            return bad(f"unsupported dtype {one_line(dtype, 40)}")
        dtype = spelling(dtype)
        shape = getattr(md, "size", None)
        if not is_shape(shape):
            return bad(f"invalid size {one_line(shape, 60)}", dtype)
        shape = tuple(shape)
        chunks = getattr(md, "chunks", None)
        if not isinstance(chunks, list) or not chunks:
            return bad("no chunks listed", dtype, shape)
        volume, first_file = 0, None
        for chunk in chunks:
            offsets, sizes = getattr(chunk, "offsets", None), getattr(chunk, "sizes", None)
            if not (is_shape(offsets) and is_shape(sizes) and len(offsets) == len(sizes) == len(shape)
                    and all(o + s <= d for o, s, d in zip(offsets, sizes, shape))):
                return bad("a chunk lies outside the tensor", dtype, shape)
            problem, file = self._check_storage(fqn, offset_key(offsets), math.prod(sizes) * ITEMSIZE[dtype])
            if problem:
                return bad(problem, dtype, shape, file)
            first_file = first_file or file
            volume += math.prod(sizes)
        if volume != math.prod(shape):
            return bad(f"chunks hold {volume} elements of {math.prod(shape)}", dtype, shape, first_file)
        return TensorInfo(name, dtype, shape, first_file)

    def _check_storage(self, fqn: str, offsets: tuple, least: int) -> tuple[str | None, str | None]:
        """(why a chunk's stored bytes cannot be read, or None; the file holding them)."""
        info = self._storage.get((fqn, offsets))
        relative = getattr(info, "relative_path", None)
        start, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (isinstance(relative, str) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in (start, length))):
            return f"no storage entry for the chunk at {list(offsets)}", None
        if getattr(info, "transform_descriptors", None):
            return f"stored through transforms ({one_line(info.transform_descriptors, 60)}), which are not read", None
        file = os.path.join(self.path, relative)
        if file not in self._sizes:
            try:
                if not inside(self.path, file):
                    raise CheckpointError(file, "named by .metadata but outside the checkpoint directory")
                self._sizes[file] = regular_size(file)
            except CheckpointError as exc:
                self._sizes[file] = str(exc)
        size = self._sizes[file]
        if isinstance(size, str):
            return size, None
        if start + length > size:
            return f"stored bytes end at {start + length} but {file} has {size}", file
        if length < least:  # a torch.save archive holds at least the elements
            return f"{length} stored bytes cannot hold {least} bytes of data", file
        return None, file

    def load(self, info: TensorInfo):
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        target = torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        try:
            with warnings.catch_warnings():  # "no process group, assuming a single process": that is the intent
                warnings.simplefilter("ignore")
                dcp.load({self._fqns[info.name]: target}, storage_reader=self._storage_reader(), no_dist=True)
        except CheckpointException as exc:  # a BaseException wrapping what failed on each rank
            cause = next(iter(exc.failures.values()))[0] if exc.failures else exc
            raise TensorUnreadable(f"{self.path}: {info.name}: {failure(cause)}") from None
        except Exception as exc:
            raise TensorUnreadable(f"{self.path}: {info.name}: {failure(exc)}") from None
        return target

    def plain(self, info: TensorInfo) -> bool:
        return False  # read through torch.distributed.checkpoint

    def raw(self, info: TensorInfo) -> np.ndarray:
        return as_bytes(self.load(info))

    def _storage_reader(self):
        if self._reader is None:
            self._reader = checked_reader(self.path, self._metadata)
        return self._reader

    def close(self) -> None:
        self._reader = None


def checked_reader(path: str, metadata):
    """A `FileSystemReader` that serves already-checked metadata instead of unpickling `.metadata`."""
    from torch.distributed.checkpoint import FileSystemReader

    class CheckedReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            return metadata

    return CheckedReader(path)


def failure(exc: BaseException) -> str:
    """One line for why a blob did not load; for a weights_only refusal, what was refused."""
    if isinstance(exc, pickle.UnpicklingError):
        return f"refused to unpickle (weights_only): {refusal(str(exc))}"
    return one_line(str(exc).strip().split("\n")[0] or type(exc).__name__, 200)


def describe(top: str, tensors: int, values: int) -> str:
    """One line for a top-level entry that is not model weights."""
    what = "optimizer state, " if top in OPTIMIZER_KEYS else ""
    parts = [f"{tensors} tensor{'s' * (tensors != 1)}"] if tensors else []
    parts += [f"{values} other value{'s' * (values != 1)}"] if values else []
    return one_line(f"{top}: {what}{', '.join(parts)}", 120)
