"""Opening files that may come from strangers (docs/reading-untrusted-files.md, rules 1 and 2).

Every file is stat'ed before it is opened, so a FIFO or a device never blocks or streams
forever, and a symlink loop becomes an error instead of an exception from deep inside.
"""

import json
import mmap
import os
import stat

from weightscope.sources.errors import CheckpointError

MAGIC_BYTES = 16
WRITE_BUFFER = 1 << 22  # bytes


def regular_size(path: str) -> int:
    """The size of `path`, which must be a regular file (after symlinks).

    Raises:
        CheckpointError: not there, not a regular file, or a symlink loop.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, "not a regular file")
    return st.st_size


def read_head(path: str, n: int = MAGIC_BYTES) -> bytes:
    """The first `n` bytes of a regular file."""
    regular_size(path)
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise CheckpointError(path, exc.strerror or str(exc)) from None


def map_file(path: str) -> mmap.mmap | None:
    """A private (copy-on-write) map of the whole file; None for an empty file.

    Copy-on-write keeps arrays built on it writable for torch without ever writing the file.
    """
    size = regular_size(path)
    if size == 0:
        return None
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as exc:
        raise CheckpointError(path, exc.strerror or str(exc)) from None


def physical_memory() -> int | None:
    """This machine's memory in bytes, which no tensor decoded from a file may take half of;
    None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def inside(directory: str, path: str) -> bool:
    """Whether `path` resolves to a place inside `directory` (both with symlinks resolved)."""
    root = os.path.realpath(directory)
    try:
        target = os.path.realpath(path, strict=False)
    except OSError:  # a symlink loop in the path
        return False
    return os.path.commonpath([root, target]) == root and target != root


def sniff(path: str, strict: bool = False) -> str:
    """The format of a file, told by its first bytes, never by its name.

    Args:
        strict: also require a safetensors header length that fits the file, for telling
            weights from other files in a directory: compact JSON such as `{"name":{...`
            has a `{` at byte 8 too. Without it, a damaged length is left for the reader
            to explain.

    Returns:
        "safetensors", "torch-zip", "torch-legacy", "gguf" or "unknown".
    """
    head = read_head(path)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if head.startswith(b"GGUF"):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2:
        if not strict or int.from_bytes(head[:8], "little") <= regular_size(path) - 8:
            return "safetensors"
    return "unknown"


def strings(value) -> int:
    """How many strings a parsed JSON value holds, keys included, or fewer: the strings of an
    object's values that are objects of objects are not counted (a safetensors header's entries
    are counted one level down, the rest is small), nor those in lists. Fewer than the text
    holds reads as a duplicate key, which sends the text the slow, exact way."""
    if type(value) is list:
        return 0
    if type(value) is not dict:
        return int(type(value) is str)
    types = list(map(type, value.values()))  # (`map`: a 100,000-name index is counted in C)
    inner = [v for v in value.values() if type(v) is dict]
    return (len(value) + types.count(str) + sum(map(len, inner))
            + sum(list(map(type, v.values())).count(str) for v in inner))


DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else i for i in range(256))
BIG_INTEGER = b"0" * 20  # 20 digits in a row: beyond 64 bits, which orjson would read as a float


def parse_json(text: bytes):
    """JSON whose objects repeat no key.

    orjson parses it (a 100,000-entry header in a fraction of the time); a key given twice
    leaves fewer strings in what it returns than quotes in the text. Text with escapes, with
    integers orjson does not keep exact, or that orjson refuses goes to the standard library,
    which also names a duplicate key.

    Raises:
        ValueError: not JSON, or a key given twice.
        RecursionError: nested too deep.
    """
    import orjson

    if b"\\" not in text and BIG_INTEGER not in text.translate(DIGITS_AS_ZERO):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None  # the standard library says what is wrong, in its own words
        if value is not None and 2 * strings(value) == text.count(b'"'):
            return value
    return json.loads(text, object_pairs_hook=reject_duplicates)


def reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """`object_pairs_hook` for json: a key given twice is an error, not a silent overwrite."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_json(path: str, limit: int):
    """A small JSON file (an index, a config), checked: a regular file of at most `limit`
    bytes whose objects repeat no key.

    Raises:
        CheckpointError: missing, too large, unreadable or not JSON (one line).
    """
    return parsed_json(path, read_small(path, limit))


def read_small(path: str, limit: int) -> bytes:
    """A regular file of at most `limit` bytes, whole.

    Raises:
        CheckpointError: missing, too large or unreadable (one line).
    """
    size = regular_size(path)
    if size > limit:
        raise CheckpointError(path, f"{size} bytes exceeds the {limit}-byte limit for this file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CheckpointError(path, exc.strerror or str(exc)) from None


def parsed_json(path: str, text: bytes, parse=None):
    """`text` (read from `path`) parsed by `parse` (default `parse_json`), a failure as a
    CheckpointError naming the file."""
    try:
        return (parse or parse_json)(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(path, f"invalid JSON: {exc}") from None


def open_for_writing(path: str):
    """A text file (UTF-8) written in blocks of `WRITE_BUFFER` bytes. Each write to the file
    lets go of the interpreter for a moment and takes it straight back; one every 8 KB (the
    default buffer) kept the UI thread from getting it for 0.3 s at a time."""
    return open(path, "w", encoding="utf-8", buffering=WRITE_BUFFER)
