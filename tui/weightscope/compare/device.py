"""Statistics with torch on any device (CUDA on a GPU box), producing the same chunk rows
as the CPU kernels so that `stats.merge_*` turns both into the same figures."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import numpy as np

from weightscope.compare import columns as c
from weightscope.compare.stats import Cancelled

DEVICE_CHUNK = 1 << 24


@functools.cache
def resolve(device: str) -> str:
    """'auto' -> 'cuda' when an NVIDIA GPU is usable, else 'cpu' (checked without importing
    torch when there is no NVIDIA driver); 'cuda' must be usable.

    Raises:
        ValueError: 'cuda' was asked for and is not available.
    """
    if device == "cpu":
        return "cpu"
    if device == "auto" and not os.path.exists("/proc/driver/nvidia"):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise ValueError("--device cuda: torch sees no CUDA device")


def side_row(x) -> list:
    """The columns of `columns.SIDE` for one chunk (a float64 tensor)."""
    import torch

    finite = torch.isfinite(x)
    v = x[finite]
    n = v.numel()
    shift = v[0] if n else x.new_zeros(())
    w = v - shift
    return [x.new_tensor(n), shift, w.sum(), (w * w).sum(), (v == 0).sum(), torch.isnan(x).sum(),
            (x == math.inf).sum(), (x == -math.inf).sum(),
            v.min() if n else x.new_tensor(math.inf), v.max() if n else x.new_tensor(-math.inf)]


def pair_row(a, b, atol: float, rtol: float) -> list:
    """The columns of `columns.PAIR` for one chunk of each side."""
    import torch

    both = torch.isfinite(a) & torch.isfinite(b)
    av, bv = a[both], b[both]
    d = (bv - av).abs()
    if d.numel():
        best = d.argmax()
        maxabs, argmax = d[best], torch.nonzero(both)[best, 0]
    else:
        maxabs, argmax = a.new_tensor(-1.0), a.new_tensor(-1.0)
    changed = (a != b) & ~(torch.isnan(a) & torch.isnan(b))
    close = both & ((b - a).abs() <= atol + rtol * a.abs())  # rtol * |Inf| would admit anything
    return side_row(a) + side_row(b) + [
        both.sum(), d.sum(), (d * d).sum(), (av * av).sum(), (bv * bv).sum(), (av * bv).sum(),
        changed.sum(), (changed & ~close).sum(), maxabs, argmax]


def rows(tensors, row: Callable, device: str, should_cancel: Callable[[], bool]) -> tuple[np.ndarray, np.ndarray]:
    """Chunk rows of `row(*chunks)` over flattened tensors moved to `device` in float64."""
    import torch

    flat = [t.reshape(-1) for t in tensors]
    numel = flat[0].numel()
    out, starts = [], list(range(0, numel, DEVICE_CHUNK))
    for start in starts:
        if should_cancel():
            raise Cancelled
        chunks = [f[start:start + DEVICE_CHUNK].to(device).to(torch.float64) for f in flat]
        out.append(torch.stack([torch.as_tensor(c, dtype=torch.float64, device=device).reshape(())
                                for c in row(*chunks)]).cpu().numpy())
    width = c.PAIR if len(tensors) == 2 else c.SIDE
    return (np.stack(out) if out else np.zeros((0, width))), np.array(starts, dtype=np.int64)


def summed(a, b, same_shape: bool, atol: float, rtol: float, device: str,
           should_cancel: Callable[[], bool] = lambda: False) -> tuple[np.ndarray, int]:
    """The merged row and flags (as `stats.summed` gives them) of tensors a and b (either None),
    computed on `device`."""
    from weightscope.compare import pieces
    from weightscope.compare.stats import merge

    if same_shape:
        chunk_rows, starts = rows([a, b], lambda x, y: pair_row(x, y, atol, rtol), device, should_cancel)
        chunk_rows[:, c.D + c.ARGMAX] += starts[:len(chunk_rows)]
        flags = pieces.HAS_A | pieces.HAS_B | pieces.HAS_D
    else:
        parts, flags = [], 0
        for tensor, base, has in ((a, c.A, pieces.HAS_A), (b, c.B, pieces.HAS_B)):
            if tensor is not None:
                side_rows, _ = rows([tensor], side_row, device, should_cancel)
                padded = np.zeros((len(side_rows), c.PAIR))
                padded[:, base:base + c.SIDE] = side_rows
                parts.append(padded)
                flags |= has
        chunk_rows = np.concatenate(parts)
    if not len(chunk_rows):
        return np.zeros(c.PAIR), flags
    _, merged, _ = merge(chunk_rows, np.full(len(chunk_rows), flags, np.uint8), np.zeros(len(chunk_rows), np.int64))
    return merged[0], flags


def side_stats(tensor, device: str, should_cancel: Callable[[], bool] = lambda: False):
    """`stats.side_stats`, computed on `device`."""
    from weightscope.compare.stats import figures, side_of

    row, flags = summed(tensor, None, False, 0.0, 0.0, device, should_cancel)
    values = figures(row[None], np.array([flags], np.uint8), np.array([tensor.numel()]), np.zeros((1, 2)))
    return side_of(values[0], c.FA)


def pair_stats(a, b, atol: float, rtol: float, device: str, should_cancel: Callable[[], bool] = lambda: False):
    """`stats.pair_stats`, computed on `device`."""
    from weightscope.compare.stats import diff_of, figures, side_of

    row, flags = summed(a, b, True, atol, rtol, device, should_cancel)
    values = figures(row[None], np.array([flags], np.uint8), np.array([a.numel()]), np.array([[atol, rtol]]))[0]
    return side_of(values, c.FA), side_of(values, c.FB), diff_of(values, tuple(a.shape))
