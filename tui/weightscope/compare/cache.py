"""Scan results kept on disk, so a second run or a reopened app answers at once.

A result is keyed by the identity of every file on both sides (real path, size, mtime and
a hash of the file's first and last 64 KiB, where headers and zip directories live) and by
the options that change figures. The cache is best effort: any problem reads as a miss.

An entry holds one result per line (JSON lines), read a line at a time with background
work's pause points between them: one `json.load` of a 100,000-tensor entry (80 MB) held the
interpreter, and with it the app's keys, for 1.5 s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

from weightscope import __version__
from weightscope.compare import stats
from weightscope.compare.align import Alignment
from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.files import open_for_writing
from weightscope.paths import cache_dir
from weightscope.compare.scan import PairResult, ScanOptions
from weightscope.compare.stats import DiffStats, Histogram, SideStats

EDGE = 64 * 1024


def file_identity(path: str) -> list:
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE))
        if st.st_size > EDGE:
            f.seek(max(EDGE, st.st_size - EDGE))
            digest.update(f.read(EDGE))
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, digest.hexdigest()]


def key(a: Checkpoint, b: Checkpoint, options: ScanOptions) -> str:
    identity = {"version": __version__, "atol": options.atol, "rtol": options.rtol,
                "histograms": options.histograms,
                "a": [file_identity(f) for f in a.files], "b": [file_identity(f) for f in b.files]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def path_for(cache_key: str) -> str:
    return str(cache_dir() / "scans" / f"{cache_key}.json")


def result_json(result: PairResult) -> dict:
    return {"name": result.pair.name, "status": result.status, "error": result.error, "notes": list(result.notes),
            "a": result.a and asdict(result.a), "b": result.b and asdict(result.b),
            "diff": result.diff and asdict(result.diff),
            "histograms": {k: asdict(h) for k, h in result.histograms.items()}}


def result_from_json(data: dict, pair) -> PairResult:
    diff = data["diff"]
    if diff is not None:
        index = diff["max_abs_index"]
        diff = DiffStats(**{**diff, "max_abs_index": tuple(index) if index is not None else None})
    return PairResult(pair, data["status"], data["error"],
                      SideStats(**data["a"]) if data["a"] else None, SideStats(**data["b"]) if data["b"] else None,
                      diff, {k: Histogram(**{**h, "counts": tuple(h["counts"])}) for k, h in data["histograms"].items()},
                      tuple(data["notes"]))


def load(cache_key: str, alignment: Alignment) -> list[PairResult] | None:
    """The cached results for these pairs, in alignment order; None on any miss."""
    try:
        stored = {}
        with open(path_for(cache_key), encoding="utf-8") as f:
            for line in stats.paced(f):
                result = json.loads(line)
                stored[result["name"]] = result
        return [result_from_json(stored[p.name], p) for p in stats.paced(alignment.pairs)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged or foreign: a miss
        return None


def save(cache_key: str, results: list[PairResult]) -> None:
    path = path_for(cache_key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp"
        with open_for_writing(partial) as f:
            for result in results:
                f.write(json.dumps(result_json(result)) + "\n")
        os.replace(partial, path)
    except OSError:
        pass
