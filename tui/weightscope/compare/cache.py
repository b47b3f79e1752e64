"""Scan results kept on disk, so that a second run or a reopened app answers at once.

An entry holds only what the scan computed (statuses, figures, per-pair errors and notes,
histograms when asked for, resized pairs' common and added parts): what is derived from it
(LoRA notes and alarms, roll-ups) is worked out again whoever reads it, so the app and `diff`
agree whichever wrote it. It is
keyed by a schema version, the options that change figures, how computed tensors are
computed, and the identity of every file on both sides (real path, size, mtime and a hash of its first and last 64 KiB, where headers
and zip directories live).

Entries are `.npz` files of plain arrays (read without pickle) in `$XDG_CACHE_HOME/weightscope/scans`;
the least recently used go once the folder passes `WEIGHTSCOPE_CACHE_MAX` (default 2 GB). The
cache is best effort: any problem reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np

from weightscope import __version__
from weightscope.compare import overlap
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable
from weightscope.compare.stats import Histogram
from weightscope.paths import cache_dir
from weightscope.sources.checkpoint import Checkpoint, TensorTable

SCHEMA = 3
EDGE = 64 * 1024
DEFAULT_MAX = 2 * 10**9
UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def file_identity(path: str) -> list:
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE))
        if st.st_size > EDGE:
            f.seek(max(EDGE, st.st_size - EDGE))
            digest.update(f.read(EDGE))
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, digest.hexdigest()]


def key(a: Checkpoint, b: Checkpoint, options, single: bool = False) -> str | None:
    """The entry for comparing these files with these options; None when a file cannot be stat'ed."""
    try:
        identity = {"schema": SCHEMA, "version": __version__, "atol": options.atol, "rtol": options.rtol,
                    "histograms": options.histograms, "device": options.device, "single": single,
                    "a": [file_identity(f) for f in a.files], "b": [file_identity(f) for f in b.files],
                    # how computed tensors are computed (a LoRA scaling given on the command line);
                    # a table holds stored tensors only
                    "origins": sorted({t.origin for side in (a, b) if not isinstance(side.tensors, TensorTable)
                                       for t in side.tensors.values() if t.origin})}
    except OSError:
        return None
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def folder() -> str:
    return str(cache_dir() / "scans")


def path_for(cache_key: str) -> str:
    return os.path.join(folder(), f"{cache_key}.npz")


def names_digest(catalog: Catalog) -> np.ndarray:
    return np.frombuffer(hashlib.sha256("\n".join(catalog.names).encode()).digest(), np.uint8)


def encoded(extras: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(extras).encode(), np.uint8)


def load(cache_key: str, catalog: Catalog) -> ResultTable | None:
    """The cached results of these pairs; None on any miss."""
    path = path_for(cache_key)
    try:
        with np.load(path, allow_pickle=False) as entry:
            if not np.array_equal(entry["names"], names_digest(catalog)):
                return None
            table = ResultTable(len(catalog))
            status, values = entry["status"], entry["values"]
            if status.shape != table.status.shape or values.shape != table.values.shape:
                return None
            table.status[:], table.values[:] = status, values
            extras = json.loads(bytes(entry["extras"]))
        table.errors = {int(i): e for i, e in extras["errors"].items()}
        table.notes = {int(i): tuple(n) for i, n in extras["notes"].items()}
        table.histograms = {int(i): {side: Histogram(h["lo"], h["hi"], tuple(h["counts"]), h["below"], h["above"])
                                     for side, h in found.items()} for i, found in extras["histograms"].items()}
        table.resized = {int(i): overlap.restored(r) for i, r in extras["resized"].items()}
        os.utime(path)  # used now: the last to be evicted
        return table
    except Exception:  # noqa: BLE001  (damaged, cut short or foreign: any problem is a miss)
        return None


def save(cache_key: str, table: ResultTable, catalog: Catalog) -> None:
    """Store a complete scan, then evict the least recently used entries beyond the cap."""
    path = path_for(cache_key)
    extras = {"errors": table.errors, "notes": table.notes,
              "histograms": {i: {side: vars(h) for side, h in found.items()} for i, found in table.histograms.items()},
              "resized": {i: overlap.stored(r) for i, r in table.resized.items()}}
    try:
        os.makedirs(folder(), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(partial, status=table.status, values=table.values, names=names_digest(catalog),
                 extras=encoded(extras))
        os.replace(partial, path)
        evict(limit())
    except OSError:
        pass


def limit() -> int:
    """The cap in bytes: `WEIGHTSCOPE_CACHE_MAX` as bytes or with a K/M/G/T suffix (decimal)."""
    text = os.environ.get("WEIGHTSCOPE_CACHE_MAX", "").strip().upper().removesuffix("B")
    found = re.fullmatch(r"([0-9.]+)\s*([KMGT]?)", text)
    if not found:
        return DEFAULT_MAX
    return int(float(found[1]) * UNITS[found[2]])


def entries() -> list[tuple[float, int, str]]:
    """(last used, bytes, path) of every entry; none when the folder does not exist yet."""
    found = []
    try:
        with os.scandir(folder()) as listing:
            for entry in listing:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                found.append((st.st_mtime, st.st_size, entry.path))
    except OSError:
        pass
    return found


def evict(cap: int) -> int:
    """Remove the least recently used entries until the folder holds at most `cap` bytes
    (all of them for 0); returns how many were removed."""
    found = entries()
    total, removed = sum(size for _, size, _ in found), 0
    for _, size, path in sorted(found):
        if total <= cap:
            break
        try:
            os.remove(path)
            total -= size
            removed += 1
        except OSError:
            pass
    return removed


# A training run: one entry per step, so that a run with one more checkpoint reads only what
# the new step needs. A step's figures depend on its own bytes, the reference's and its
# predecessor's, and on nothing else: those three checkpoints' files are its key.

RUN_SCHEMA = 1


def step_key(reference: list[str], step: list[str], predecessor: list[str]) -> str | None:
    """The entry of one step of a run, from each checkpoint's files; None when a file cannot be stat'ed."""
    try:
        identity = {"schema": RUN_SCHEMA, "version": __version__, "kind": "run step",
                    "reference": [file_identity(f) for f in reference], "step": [file_identity(f) for f in step],
                    "predecessor": [file_identity(f) for f in predecessor]}
    except OSError:
        return None
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def load_step(cache_key: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(rows, the step's sums, its flags, the reference's sums) of the tensors the entry holds,
    as rows of a run whose tensors are `names`; None on any miss."""
    path = path_for(cache_key)
    try:
        with np.load(path, allow_pickle=False) as entry:
            stored = json.loads(bytes(entry["names"]))
            sums, same, reference = entry["sums"], entry["same"], entry["reference"]
        index = {name: i for i, name in enumerate(names)}
        if not set(stored) <= index.keys() or not (len(stored) == len(sums) == len(same) == len(reference)):
            return None
        os.utime(path)
        return np.fromiter(map(index.__getitem__, stored), np.int64, len(stored)), sums, same, reference
    except Exception:  # noqa: BLE001  (damaged, cut short or foreign: any problem is a miss)
        return None


def save_step(cache_key: str, names: list[str], sums: np.ndarray, same: np.ndarray, reference: np.ndarray) -> None:
    """Store one step's sums and flags (and the reference's own sums) of the tensors `names`."""
    path = path_for(cache_key)
    try:
        os.makedirs(folder(), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(partial, names=encoded(names), sums=sums, same=same, reference=reference)
        os.replace(partial, path)
        evict(limit())
    except OSError:
        pass
