"""Tiny checkpoints written at test time with the real writers, and a helper to diff them.

Every file a test reads is written here into `tmp_path` by `safetensors.torch.save_file`,
`torch.save` or, for damaged files, by hand (`safetensors_bytes`), so the tests follow the
formats as the libraries write them today rather than as fixtures froze them.
"""

from __future__ import annotations

import os

# The compiled statistics loops are cached under the user's cache directory; keep that cache
# even where a test points XDG_CACHE_HOME at a temporary directory, so nothing recompiles.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "weightscope", "numba"))

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from weightscope.compare import catalog as cat
from weightscope.compare.align import Alignment, align
from weightscope.compare.catalog import Catalog
from weightscope.compare.results import PairResult, ResultTable
from weightscope.compare.scan import results_of, scan_catalog
from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.discover import open_checkpoint

# torch spelling -> safetensors header code, for hand-made headers
ST_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
            torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}


def llama_like(seed: int = 0, layers: int = 2, hidden: int = 8, vocab: int = 32,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A state dict named and shaped like a (very small) Llama causal LM, untied."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    sd = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}self_attn.{proj}_proj.weight"] = rand(hidden, hidden)
        sd[f"{p}mlp.gate_proj.weight"] = rand(2 * hidden, hidden)
        sd[f"{p}mlp.up_proj.weight"] = rand(2 * hidden, hidden)
        sd[f"{p}mlp.down_proj.weight"] = rand(hidden, 2 * hidden)
        sd[f"{p}input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        sd[f"{p}post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    sd["model.norm.weight"] = torch.ones(hidden, dtype=dtype)
    sd["lm_head.weight"] = rand(vocab, hidden)
    return sd


def tied(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same state dict with `lm_head.weight` tied to the embeddings (one tensor, two names)."""
    out = dict(sd)
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def write_safetensors(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def split(names: list[str], shards: int) -> list[list[str]]:
    """Consecutive groups of names, as `save_pretrained` fills shards in order."""
    size = math.ceil(len(names) / shards)
    return [names[i * size:(i + 1) * size] for i in range(shards)]


def write_index(path: Path, weight_map: dict[str, str], total_size: int = 0) -> Path:
    path.write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2))
    return path


def write_shards(directory: Path, sd: dict[str, torch.Tensor], shards: int, file: str, save, index: str,
                 total_size: int = 0) -> Path:
    """Shards named `file.format(k, shards)`, each written by `save(tensors, path)`, and their index."""
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for k, names in enumerate(split(list(sd), shards), 1):
        name = file.format(k, shards)
        save({n: sd[n] for n in names}, directory / name)
        weight_map.update(dict.fromkeys(names, name))
    write_index(directory / index, weight_map, total_size)
    return directory


def write_sharded_safetensors(directory: Path, sd: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """`model-0000k-of-0000n.safetensors` shards and `model.safetensors.index.json`, as HF writes them."""
    total = sum(t.numel() * t.element_size() for t in sd.values())
    return write_shards(directory, sd, shards, "model-{:05d}-of-{:05d}.safetensors",
                        lambda part, path: write_safetensors(path, part, metadata={"format": "pt"}),
                        "model.safetensors.index.json", total)


def write_sharded_bin(directory: Path, sd: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """`pytorch_model-0000k-of-0000n.bin` shards and `pytorch_model.bin.index.json`."""
    return write_shards(directory, sd, shards, "pytorch_model-{:05d}-of-{:05d}.bin", torch.save,
                        "pytorch_model.bin.index.json")


def safetensors_bytes(header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file by hand: 8-byte little-endian header length, the header, the data.

    Args:
        header: a dict (dumped as JSON), or the header text/bytes exactly as it should appear.
        length: the header length to write, when it should lie.
    """
    if isinstance(header, dict):
        header = json.dumps(header)
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def packed(sd: dict[str, torch.Tensor]) -> tuple[dict, bytes]:
    """A valid safetensors header (as a dict to tamper with) and the data bytes for `sd`."""
    header, chunks, at = {}, [], 0
    for name, t in sd.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": ST_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(data)]}
        chunks.append(data)
        at += len(data)
    return header, b"".join(chunks)


@dataclass
class Diff:
    """Two opened checkpoints, their alignment, and what the scan found: as columns (the
    catalog and result table everything above the engine reads) and as objects."""

    a: Checkpoint
    b: Checkpoint
    alignment: Alignment
    catalog: Catalog
    table: ResultTable
    results: list[PairResult]

    @property
    def statuses(self) -> dict[str, str]:
        return {r.pair.name: r.status for r in self.results}

    def result(self, name: str) -> PairResult:
        return next(r for r in self.results if r.pair.name == name)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Nothing is written to the real home: a result cache lives under tmp_path (subprocesses inherit it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def ck() -> SimpleNamespace:
    """The builders and writers above, for tests (`ck.llama_like(1)`); a fixture rather than
    `from conftest import ...`, which breaks once another directory has a conftest.py."""
    return SimpleNamespace(
        llama_like=llama_like, tied=tied, write_safetensors=write_safetensors, write_index=write_index,
        write_sharded_safetensors=write_sharded_safetensors, write_sharded_bin=write_sharded_bin,
        safetensors_bytes=safetensors_bytes, packed=packed, split=split)


@pytest.fixture
def opened():
    """`opened(path)` opens a checkpoint that is closed when the test ends."""
    checkpoints = []

    def open_(path) -> Checkpoint:
        checkpoints.append(open_checkpoint(str(path)))
        return checkpoints[-1]

    yield open_
    for c in checkpoints:
        c.close()


@pytest.fixture
def diff(opened):
    """`diff(a, b)` opens, aligns and scans two checkpoints, as `weightscope diff` does."""

    def run(path_a, path_b) -> Diff:
        a, b = opened(path_a), opened(path_b)
        alignment = align(a, b)
        catalog = cat.build(a, b, alignment)
        table = scan_catalog(catalog, a, b)
        return Diff(a, b, alignment, catalog, table, list(results_of(catalog, table)))

    return run
