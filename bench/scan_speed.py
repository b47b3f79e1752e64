"""Whole-checkpoint scan speed and memory: weightscope against the script users write today.

Writes an LLM-shaped bf16 pair (8 layers, hidden 2048, intermediate 5632, vocab 32000:
about 1.1 GB a side in 2 shards; embeddings frozen, a small low-rank change elsewhere, a
few NaNs), then times, in one run, each as a whole process with the page cache warm:

  (a) weightscope diff --json --no-cache A B
  (b) the careful script: safe_open both, per tensor .float(), then max|Δ|, mean|Δ|,
      ‖Δ‖/‖A‖, cosine, NaN count and changed fraction with one torch op per figure
  (c) reading every byte of both checkpoints once (the I/O floor)

and prints GB/s of checkpoint data and peak anonymous memory (RssAnon, sampled).

    python3 bench/scan_speed.py [--scale 4] [--keep DIR]

--scale multiplies the number of layers (4 gives about 4.4 GB a side).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

NAN_IN = "model.layers.1.mlp.down_proj.weight"  # where the fine-tune planted a few NaNs

CAREFUL = r'''
import sys, json, torch
from safetensors import safe_open
def tensors(d):
    index = json.load(open(f"{d}/model.safetensors.index.json"))["weight_map"]
    return index
ia, ib = tensors(sys.argv[1]), tensors(sys.argv[2])
out = {}
for name, shard in ia.items():
    with safe_open(f"{sys.argv[1]}/{shard}", framework="pt") as fa, safe_open(f"{sys.argv[2]}/{ib[name]}", framework="pt") as fb:
        a, b = fa.get_tensor(name).float(), fb.get_tensor(name).float()
    d = b - a
    out[name] = dict(max_abs=d.abs().max().item(), mean_abs=d.abs().mean().item(),
                     rel=(d.norm() / a.norm()).item(),
                     cos=torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item(),
                     nan=int(torch.isnan(b).sum()), changed=(a != b).float().mean().item())
print(len(out))
'''

READ_ALL = r'''
import os, sys
total = 0
for d in sys.argv[1:]:
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
print(total)
'''


def write_pair(root: str, layers: int) -> tuple[str, str]:
    """Base A and fine-tune B, sharded like Hugging Face writes them."""
    import torch
    from safetensors.torch import save_file

    hidden, inter, vocab, rank = 2048, 5632, 32000, 8
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{p}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}.mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}.input_layernorm.weight"] = (hidden,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    generator = torch.Generator().manual_seed(0)
    names = list(shapes)
    half = len(names) // 2
    paths = []
    for side in ("a", "b"):
        d = os.path.join(root, side)
        os.makedirs(d)
        paths.append(d)
    weight_map = {}
    for shard, group in enumerate((names[:half], names[half:]), 1):
        file = f"model-{shard:05d}-of-00002.safetensors"
        a_part, b_part = {}, {}
        for name in group:
            shape = shapes[name]
            base = (torch.randn(shape, generator=generator) * 0.02) if len(shape) == 2 else torch.ones(shape)
            a_part[name] = base.to(torch.bfloat16)
            if name == "model.embed_tokens.weight":
                b_part[name] = a_part[name].clone()  # frozen
            elif len(shape) == 2:
                u = torch.randn(shape[0], rank, generator=generator) * 1e-3
                v = torch.randn(rank, shape[1], generator=generator) * 1e-3
                b_part[name] = (base + u @ v).to(torch.bfloat16)
            else:
                b_part[name] = (base + 1e-3 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
            weight_map[name] = file
        if NAN_IN in b_part:
            b_part[NAN_IN][3, :5] = float("nan")
        save_file(a_part, os.path.join(paths[0], file), metadata={"format": "pt"})
        save_file(b_part, os.path.join(paths[1], file), metadata={"format": "pt"})
    for d in paths:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return paths[0], paths[1]


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RssAnon (sampled every 5 ms) of a whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, rss_anon(process.pid))
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    if process.returncode not in (0, 1):
        raise SystemExit(f"{command[:3]} failed: {process.stderr.read().decode()[-400:]}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="multiply the number of layers")
    parser.add_argument("--keep", help="write the pair here and keep it (reused when present)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="weightscope-bench-")
    try:
        if os.path.isdir(os.path.join(root, "a")):
            a, b = os.path.join(root, "a"), os.path.join(root, "b")
        else:
            print(f"writing the pair ({8 * args.scale} layers) to {root} ...", flush=True)
            a, b = write_pair(root, 8 * args.scale)
        size = sum(os.path.getsize(os.path.join(d, f)) for d in (a, b) for f in os.listdir(d))
        env_cmd = [sys.executable]
        runs = {
            "(a) weightscope diff --json --no-cache": env_cmd + ["-m", "weightscope", "diff", "--json", "--no-cache",
                                                                 "--device", "cpu", a, b],
            "(b) careful per-tensor torch script": env_cmd + ["-c", CAREFUL, a, b],
            "(c) read every byte once": env_cmd + ["-c", READ_ALL, a, b],
        }
        measure(runs["(c) read every byte once"][:])  # warm the page cache
        measure(runs["(a) weightscope diff --json --no-cache"])  # and the compiled-kernel cache
        figures = {}
        for label, command in runs.items():
            best = min((measure(command) for _ in range(args.repeat)), key=lambda r: r[0])
            figures[label] = best
        print(f"\npair: {size / 1e9:.2f} GB of checkpoint data (both sides), {os.cpu_count()} cores, page cache warm,"
              f" best of {args.repeat}\n")
        print(f"{'':42} {'seconds':>8} {'GB/s':>6} {'peak RssAnon':>13}")
        for label, (seconds, peak) in figures.items():
            print(f"{label:42} {seconds:8.2f} {size / seconds / 1e9:6.2f} {peak / 2**20:10.0f} MB")
        ws, careful, floor = (figures[k][0] for k in runs)
        print(f"\nweightscope is {careful / ws:.1f}x faster than (b); it runs at {floor / ws:.0%} of the I/O floor (c).")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
