"""Spectrum speed: a rank-8 change to a 4096 × 4096 matrix, from a bf16 pair and from LoRA factors.

Writes a bf16 base W, a bf16 W + Δ with Δ = U diag(σ) Vᵀ of rank 8 (σ from 1.0 down to 0.9,
so the effective rank is just under 8), and a PEFT adapter whose factors give that Δ
(B = U diag(σ) M, A = M⁻¹ Vᵀ for a random M, so neither is orthogonal), then times, after
one untimed warm-up call:

  (a) spectrum.pair_spectrum on the bf16 pair: randomized SVD of B − A, read through the maps
  (b) spectrum.pair_spectrum on base against base + adapter: QR of the factors, no product
  (c) torch.linalg.svdvals of the dense Δ in float64: the exact reference for (a) and (b)

and prints the best of --repeat runs of each, with the largest relative error of σ₁…σ₈
against (c), the effective rank and the stable rank.

    python3 bench/spectrum_speed.py [--size 4096] [--rank 8] [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch
from safetensors.torch import save_file

from weightscope.sources.pair import open_pair
from weightscope.compare.align import align
from weightscope.analysis.spectrum import pair_spectrum

NAME = "model.layers.0.self_attn.q_proj"


def write(directory: str, size: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The three inputs; returns (the bf16 pair's Δ, the adapter's ΔW), both float64."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(size, size, generator=gen) * 0.02).bfloat16()
    u = torch.linalg.qr(torch.randn(size, rank, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(size, rank, generator=gen, dtype=torch.float64))[0]
    sigma = torch.linspace(1.0, 0.9, rank, dtype=torch.float64)  # near-equal: an effective rank near `rank`
    mix = torch.randn(rank, rank, generator=gen, dtype=torch.float64) + 3 * torch.eye(rank, dtype=torch.float64)
    lora_b, lora_a = ((u * sigma) @ mix).float(), torch.linalg.solve(mix, v.T).float().contiguous()
    tuned = (w.double() + lora_b.double() @ lora_a.double()).bfloat16()
    save_file({f"{NAME}.weight": w}, os.path.join(directory, "base.safetensors"))
    save_file({f"{NAME}.weight": tuned}, os.path.join(directory, "tuned.safetensors"))
    adapter = os.path.join(directory, "adapter")
    os.makedirs(adapter, exist_ok=True)
    save_file({f"base_model.model.{NAME}.lora_A.weight": lora_a, f"base_model.model.{NAME}.lora_B.weight": lora_b},
              os.path.join(adapter, "adapter_model.safetensors"))
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj"]}, f)
    return tuned.double() - w.double(), lora_b.double() @ lora_a.double()


def timed(path_a: str, path_b: str, repeat: int):
    """(best seconds, spectrum) of pair_spectrum on the pair of the one adapted tensor."""
    a, b = open_pair(path_a, path_b)
    with a, b:
        pair = next(p for p in align(a, b).pairs if p.name == f"{NAME}.weight")
        pair_spectrum(a, b, pair)  # warm-up: torch's thread pool, the page cache
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            found = pair_spectrum(a, b, pair)
            best = min(best, time.perf_counter() - start)
    return best, found


def report(label: str, seconds: float, found, exact: list[float], rank: int) -> None:
    error = max(abs(g - e) / e for g, e in zip(found.singular_values[:rank], exact[:rank]))
    print(f"{label:<34} {seconds * 1000:8.1f} ms   method {found.method:<10}  max σ error {error:.1e}   "
          f"effective rank {found.effective_rank:.3f}   stable rank {found.stable_rank:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="write the inputs here and keep them")
    args = parser.parse_args()
    directory = args.keep or tempfile.mkdtemp(prefix="weightscope-spectrum-")
    os.makedirs(directory, exist_ok=True)
    try:
        pair_delta, adapter_delta = write(directory, args.size, args.rank)
        print(f"rank-{args.rank} change to a {args.size} × {args.size} matrix; {torch.get_num_threads()} torch "
              f"threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        start = time.perf_counter()
        exact_pair = torch.linalg.svdvals(pair_delta).tolist()
        exact_adapter = torch.linalg.svdvals(adapter_delta).tolist()
        reference = (time.perf_counter() - start) / 2
        seconds, found = timed(os.path.join(directory, "base.safetensors"),
                               os.path.join(directory, "tuned.safetensors"), args.repeat)
        report("(a) bf16 pair, randomized SVD", seconds, found, exact_pair, args.rank)
        seconds, found = timed(os.path.join(directory, "base.safetensors"), os.path.join(directory, "adapter"),
                               args.repeat)
        report("(b) LoRA factors, QR", seconds, found, exact_adapter, args.rank)
        print(f"{'(c) exact svdvals, float64':<34} {reference * 1000:8.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
