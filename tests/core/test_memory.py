"""Resident memory stays bounded whatever the checkpoint's size: the scan reads plain tensors
with pread (nothing mapped), and a source's map drops its pages as it goes."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from weightscope.compare import catalog as cat
from weightscope.compare.align import align
from weightscope.compare.scan import ScanOptions, scan_catalog
from weightscope.sources.discover import open_checkpoint
from weightscope.sources.formats import mapped

MB = 1 << 20


def mapped_rss(path: str) -> int | None:
    """Resident bytes of this process's mappings of `path` (None when it is not mapped)."""
    found, inside = None, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's first line: range perms offset dev inode path
                inside = line.rstrip("\n").endswith(path)
            elif inside and fields[0] == "Rss:":
                found = (found or 0) + int(fields[1]) * 1024
    return found


def tensors(seed: int) -> dict[str, torch.Tensor]:
    """Twelve float32 tensors of 4 MB."""
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(MB, generator=g) for i in range(12)}


def write(path, seed: int) -> str:
    save_file(tensors(seed), str(path))
    return str(path)


def test_the_scan_maps_no_file(tmp_path):
    a, b = write(tmp_path / "a.safetensors", 0), write(tmp_path / "b.safetensors", 1)
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        catalog = cat.build(ca, cb, align(ca, cb))
        table = scan_catalog(catalog, ca, cb, ScanOptions(device="cpu"))
        assert table.read == len(catalog) == 12
        assert mapped_rss(a) is None and mapped_rss(b) is None


def test_a_map_drops_its_pages_as_it_hands_out_tensors(tmp_path, monkeypatch):
    monkeypatch.setattr(mapped, "RESIDENT", 8 * MB)
    path = write(tmp_path / "a.safetensors", 0)
    stored = tensors(0)
    with open_checkpoint(path) as checkpoint:
        for name in checkpoint.tensors:
            values = torch.from_numpy(checkpoint.raw(name).view("float32"))
            assert torch.equal(values, stored[name])  # every page touched
            assert mapped_rss(path) <= 8 * MB + 4 * MB + 64 * 1024  # handed out since the last drop, and the header
        first = torch.from_numpy(checkpoint.raw("w0").view("float32"))
        checkpoint.raw("w5"), checkpoint.raw("w6"), checkpoint.raw("w7")  # past RESIDENT: w0's pages dropped too
        assert torch.equal(first, stored["w0"])  # and faulted back in from the file, unchanged
