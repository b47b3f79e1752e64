"""PyTorch `torch.save` files: the zip format (`.bin`, `.pt`, `.pth`) and the legacy pickle.

Both are unpickled by torch with `weights_only=True` and nothing else
(docs/reading-untrusted-files.md, rule 5). A zip file is first checked with the standard
library (every member stored, inside the file), then listed with `map_location="meta"`,
which reads no data but tells each storage's byte offset in the file, so tensors are later
read through the same map as safetensors.
"""

from __future__ import annotations

import bisect
import pickle
import struct
import warnings
import zipfile

import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorUnreadable
from weightscope.sources.dtypes import spelling
from weightscope.sources.errors import CheckpointError, one_line
from weightscope.sources.files import regular_size
from weightscope.sources.formats.mapped import MappedFile

MAX_PICKLE = 1 << 30
MAX_NESTING = 20  # levels of dicts and lists walked for weights: a deeper pickle would exhaust the stack
# Keys under which training loops nest the model's weights, in the order they are tried.
WEIGHT_KEYS = ("model_state_dict", "state_dict", "model", "module", "model_state")


def torch_load(path: str, **kwargs):
    """`torch.load(weights_only=True)` with every failure turned into a one-line error.

    torch is given an open file unless it is to map the file itself: given a path that ends
    in `.safetensors`, it hands the file to the safetensors library whatever its bytes are.
    """
    import torch

    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the error says what matters, on one line
            warnings.simplefilter("ignore")
            if kwargs.get("mmap"):
                return torch.load(path, weights_only=True, **kwargs)
            with open(path, "rb") as f:
                return torch.load(f, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        protocol = pickle_protocol(path)
        if protocol is not None and protocol >= 4:
            raise CheckpointError(path, f"refused to unpickle (weights_only): saved with pickle protocol {protocol}, "
                                        f"which torch's weights_only loader cannot read ({refusal(str(exc))}); where "
                                        "you trust the file, re-save it with torch.save's default protocol (2), or as "
                                        "safetensors") from None
        raise CheckpointError(path, f"refused to unpickle (weights_only): {refusal(str(exc))}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
        message = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise CheckpointError(path, f"torch.load failed: {message}") from None


def pickle_protocol(path: str) -> int | None:
    """The pickle protocol a torch file was saved with (`torch.save(..., pickle_protocol=4)`):
    the byte after the PROTO opcode that opens its pickle, `data.pkl` in a zip. None when unknown."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
                with archive.open(pickles[0]) as member:
                    head = member.read(2)
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except (OSError, zipfile.BadZipFile, IndexError, ValueError, EOFError):
        return None
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else None


def refusal(message: str) -> str:
    """The line of torch's weights_only refusal that says what was refused, not how to override it."""
    text = message.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    advice = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please file an issue")
    reason = next((line for line in lines if not line.startswith(advice)), lines[0] if lines else "refused")
    return reason.split(" Please use `torch.serialization", 1)[0]


class Contents:
    """What a loaded pickle holds: the model tensors by flattened name, and everything else.

    Weights are a dict of tensors (a state dict, nested or not), or a list or tuple of them
    (`torch.save([w, b])`), whose tensors are named by their indices: `0`, `1`, `0.1`.

    Attributes:
        tensors: (name, tensor) for each model weight, in pickle order.
        extras: one line for each entry that is not a model weight.
        location: where the weights were found, e.g. "model.state_dict"; "" at the top.
    """

    def __init__(self, obj, path: str):
        import torch

        self._torch = torch
        self.tensors: list[tuple[str, object]] = []
        self.extras: list[str] = []
        keys = self._find_weights(obj)
        if keys is None:
            what = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(path, f"no model weights found (holds: {one_line(what, 120)})")
        self.location = ".".join(keys)
        node = obj
        for depth, key in enumerate(keys):
            prefix = ".".join(keys[:depth])
            self.extras += [self._describe(join(prefix, k), v) for k, v in node.items() if k != key]
            node = node[key]
        self._flatten(node, "")

    def _is_tensor(self, value) -> bool:
        return isinstance(value, self._torch.Tensor)

    def _holds(self, value, depth: int = 0) -> bool:
        """A tensor, or a non-empty list or tuple of them (nested, to `MAX_NESTING` levels)."""
        if self._is_tensor(value):
            return True
        return (isinstance(value, (list, tuple)) and len(value) > 0 and depth < MAX_NESTING
                and all(self._holds(v, depth + 1) for v in value))

    def _is_state_dict(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return self._holds(value)
        if not isinstance(value, dict) or not value:
            return False
        held = sum(self._holds(v) for v in value.values())
        return held >= 1 and 2 * held >= len(value)

    def _find_weights(self, obj) -> tuple[str, ...] | None:
        if self._is_state_dict(obj):
            return ()
        if isinstance(obj, dict):
            for key in WEIGHT_KEYS:
                if isinstance(obj.get(key), dict):
                    inner = self._find_weights(obj[key])
                    if inner is not None:
                        return (key, *inner)
        return None

    def _flatten(self, node: dict | list | tuple, prefix: str, depth: int = 0) -> None:
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            name = join(prefix, str(key))
            if self._is_tensor(value):
                self.tensors.append((name, value))
            elif depth < MAX_NESTING and (self._holds(value) or isinstance(value, dict)
                                          and any(self._holds(v) for v in value.values())):
                self._flatten(value, name, depth + 1)
            else:
                self.extras.append(self._describe(name, value))

    def _describe(self, name: str, value) -> str:
        if self._is_tensor(value):
            return f"{name}: tensor {spelling(value.dtype)} {list(value.shape)}"
        if isinstance(value, (dict, list, tuple)):
            count = count_tensors(value, self._is_tensor)
            inner = f", {count} tensors" if count else ""
            return f"{name}: {type(value).__name__} of {len(value)}{inner}"
        return one_line(f"{name}: {type(value).__name__} {value!r}", 120)


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def count_tensors(value, is_tensor, depth: int = 0) -> int:
    if is_tensor(value):
        return 1
    if depth > 20:
        return 0
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return sum(count_tensors(v, is_tensor, depth + 1) for v in items)


def as_bytes(tensor) -> np.ndarray:
    """A tensor's bytes in row-major order (a view when it is already contiguous)."""
    import torch

    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)


def storage_key(tensor) -> tuple:
    """What makes two names the same tensor: the same storage, offset, shape and strides."""
    storage = tensor.untyped_storage()
    where = getattr(storage, "_checkpoint_offset", None)
    return (where if where is not None else storage._cdata, tensor.storage_offset(),
            tuple(tensor.shape), tensor.stride(), tensor.dtype)


def mark_ties(infos: list[TensorInfo], keys: list[tuple]) -> list[TensorInfo]:
    first: dict[tuple, str] = {}
    out = []
    for info, key in zip(infos, keys):
        if key in first and info.error is None:
            info = info._replace(tied_to=first[key])
        first.setdefault(key, info.name)
        out.append(info)
    return out


def zip_members(path: str) -> list[tuple[int, int, str, str | None]]:
    """(data start, data end, name, problem) for each member, sorted by start.

    Raises:
        CheckpointError: not a zip, or its `data.pkl` is missing, damaged or too large.
    """
    size = regular_size(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(path, f"damaged zip archive: {exc}") from None
    members = []
    with archive, open(path, "rb") as f:
        for member in archive.infolist():
            f.seek(member.header_offset)
            local = f.read(30)
            start = end = member.header_offset
            problem = None
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                problem = f"zip member {member.filename} has no local header"
            else:
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = member.header_offset + 30 + name_len + extra_len
                end = start + member.compress_size
                if member.compress_type != zipfile.ZIP_STORED:
                    problem = f"zip member {member.filename} is compressed (method {member.compress_type}); torch.save stores members"
                elif member.file_size != member.compress_size:
                    problem = f"zip member {member.filename} has inconsistent sizes"
                elif end > size:
                    problem = f"zip member {member.filename} runs past the end of the file"
            members.append((start, end, member.filename, problem))
    pickles = [m for m in members if m[2].endswith("data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(path, "not a torch.save archive (no single data.pkl)")
    start, end, _, problem = pickles[0]
    if problem:
        raise CheckpointError(path, problem)
    if end - start > MAX_PICKLE:
        raise CheckpointError(path, f"data.pkl of {end - start} bytes exceeds the {MAX_PICKLE}-byte limit")
    return sorted(members)


class TorchZipFile(MappedFile):
    """A zip-format `torch.save` file, listed without reading tensor data."""

    def __init__(self, path: str):
        super().__init__(path)
        members = zip_members(path)
        contents = Contents(torch_load(path, map_location="meta"), path)
        self.extras = contents.extras
        self.notes = [f"{path}: weights found under '{contents.location}'"] if contents.location else []
        self.metadata: dict[str, str] = {}
        self._keys = {name: tensor for name, tensor in contents.tensors}
        self._mmapped = None
        infos = [self._info(name, tensor, members) for name, tensor in contents.tensors]
        self.tensors = mark_ties(infos, [storage_key(t) for _, t in contents.tensors])

    def _info(self, name: str, tensor, members) -> TensorInfo:
        dtype, shape = spelling(tensor.dtype), tuple(tensor.shape)
        storage = tensor.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if offset is None:  # an older torch: read through torch.load(mmap=True) instead
            return TensorInfo(name, dtype, shape, self.path)
        extent = storage.nbytes()
        # torch computes these offsets from the layout torch.save writes rather than reading
        # them, so one only counts when a member's data starts there and holds exactly the
        # storage: in an archive laid out otherwise it may point into another member's data.
        index = bisect.bisect_left(members, (offset,))
        if index == len(members) or members[index][0] != offset:
            return TensorInfo(name, dtype, shape, self.path, error=f"{self.path}: storage of {name} is not where torch.save puts it")
        start, end, member, problem = members[index]
        if problem:
            return TensorInfo(name, dtype, shape, self.path, error=f"{self.path}: {problem}")
        if end - start != extent:
            return TensorInfo(name, dtype, shape, self.path,
                              error=f"{self.path}: storage of {name} has {extent} bytes but zip member {member} holds {end - start}")
        itemsize = tensor.element_size()
        last = tensor.storage_offset() + sum((n - 1) * s for n, s in zip(shape, tensor.stride()) if n > 0)
        if tensor.numel() and (last + 1) * itemsize > extent:
            return TensorInfo(name, dtype, shape, self.path, error=f"{self.path}: {name} reaches past its storage")
        if not tensor.is_contiguous():
            return TensorInfo(name, dtype, shape, self.path)
        start = offset + tensor.storage_offset() * itemsize
        return TensorInfo(name, dtype, shape, self.path, span=(start, start + tensor.numel() * itemsize))

    def load(self, info: TensorInfo):
        if info.span is not None:
            return super().load(info)
        if self._mmapped is None:  # strided views: let torch map the file and apply the strides
            try:
                contents = Contents(torch_load(self.path, mmap=True, map_location="cpu"), self.path)
            except CheckpointError as exc:
                raise TensorUnreadable(exc.problem) from None
            self._mmapped = dict(contents.tensors)
        return self._mmapped[info.name]

    def raw(self, info: TensorInfo) -> np.ndarray:
        return super().raw(info) if info.span is not None else as_bytes(self.load(info))

    def close(self) -> None:
        self._mmapped = None
        super().close()


class TorchLegacyFile:
    """A legacy (pre-1.6, non-zip) `torch.save` file. It cannot be mapped, so it is read whole."""

    def __init__(self, path: str):
        self.path = path
        size = regular_size(path)
        listed = Contents(torch_load(path, map_location="meta"), path)
        storages = {storage_key(t)[0]: t.untyped_storage().nbytes() for _, t in listed.tensors}
        if sum(storages.values()) > size:
            raise CheckpointError(path, f"declares {sum(storages.values())} bytes of tensors in a {size}-byte file")
        contents = Contents(torch_load(path, map_location="cpu"), path)
        self.extras = contents.extras
        self.metadata: dict[str, str] = {}
        self.notes = [f"{path}: legacy (non-zip) torch format, read whole into memory"]
        self._tensors = dict(contents.tensors)
        infos = [TensorInfo(n, spelling(t.dtype), tuple(t.shape), path) for n, t in contents.tensors]
        self.tensors = mark_ties(infos, [storage_key(t) for _, t in listed.tensors])

    def plain(self, info: TensorInfo) -> bool:
        return False  # unpickled whole; nothing to read from the file

    def load(self, info: TensorInfo):
        return self._tensors[info.name]

    def raw(self, info: TensorInfo) -> np.ndarray:
        return as_bytes(self._tensors[info.name])

    def close(self) -> None:
        self._tensors = {}
