"""The engine on many small tensors against few large ones, and its memory, in one run.

Writes (once, kept with --keep) two pairs of real values, sharded as Hugging Face writes them:

- large: an LLM-shaped bf16 pair (bench/scan_speed.py's, about 1.1 GB a side, 290 tensors);
- moe: a 96,200-tensor MoE-shaped fp16 pair (40 layers × 800 experts × three 64×256
  matrices, plus attention), every other tensor changed, about 3.1 GB a side;

and an 8 GiB sparse file. Then times each as a whole process, page cache warm:

  large     weightscope diff --no-cache A B            (the large-tensor rate: the baseline)
  moe       weightscope diff --no-cache A B            (target: >= 70% of the large rate)
  moe json  weightscope diff --no-cache --json A B     (target: <= 1.2x the text run)
  moe cache weightscope diff A B, answered from its cache
  same file weightscope diff F F on the 8 GiB file     (answered without reading the data)

For each: seconds, GB/s of both sides, and memory of the whole process tree (the command and
every process it starts): the largest single VmHWM (peak resident set; target <= 1 GB), the
peak of the summed resident sets and of the summed RssAnon (target <= 512 MB), sampled.

    python3 bench/engine_speed.py [--keep DIR] [--repeat N] [--baseline TREE]

--baseline also runs another source tree's weightscope (an older commit's `tui/`) on the
same files, in the same run, and prints its figures beside these (before and after).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_speed import write_pair as write_large_pair  # noqa: E402

LAYERS, EXPERTS, HIDDEN, EXPERT_INTER = 40, 800, 256, 64
SHARD = 1 << 30  # bytes per shard (transformers splits at max_shard_size the same way)
SPARSE = 8 << 30


def moe_layout() -> list[tuple[str, tuple[int, ...]]]:
    tensors = []
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors += [(p + f"self_attn.{proj}.weight", (HIDDEN, HIDDEN)) for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
        tensors.append((p + "input_layernorm.weight", (HIDDEN,)))
        for e in range(EXPERTS):
            q = f"{p}mlp.experts.{e}."
            tensors += [(q + "gate_proj.weight", (EXPERT_INTER, HIDDEN)), (q + "up_proj.weight", (EXPERT_INTER, HIDDEN)),
                        (q + "down_proj.weight", (HIDDEN, EXPERT_INTER))]
    return tensors


def write_moe_pair(root: str) -> tuple[str, str]:
    """A and B, every other tensor of B changed by small noise, in shards of `SHARD` bytes."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    a_dir, b_dir = os.path.join(root, "a"), os.path.join(root, "b")
    os.makedirs(a_dir)
    os.makedirs(b_dir)
    layout = moe_layout()
    shards, size = [[]], 0
    for name, shape in layout:
        nbytes = 2 * int(np.prod(shape))
        if shards[-1] and size + nbytes > SHARD:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, k = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        a_part, b_part = {}, {}
        for name, shape in shard:
            a = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
            b = a if k % 2 == 0 else (a + rng.standard_normal(shape, dtype=np.float32) * 1e-3).astype(np.float16)
            a_part[name], b_part[name] = torch.from_numpy(a), torch.from_numpy(b.copy())
            weight_map[name] = file
            k += 1
        save_file(a_part, os.path.join(a_dir, file), metadata={"format": "pt"})
        save_file(b_part, os.path.join(b_dir, file), metadata={"format": "pt"})
    for d in (a_dir, b_dir):
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return a_dir, b_dir


def write_sparse(path: str) -> str:
    """A safetensors file of one bf16 tensor whose 8 GiB of data is a hole."""
    header = json.dumps({"t": {"dtype": "BF16", "shape": [SPARSE // 2], "data_offsets": [0, SPARSE]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + SPARSE)
    return path


def tree(pid: int) -> list[int]:
    """`pid` and every process descended from it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(parents.get(p, ()))
    return out


def memory(pid: int) -> dict[str, int]:
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds of a whole process, and its tree's memory, sampled every 10 ms."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    hwm: dict[int, int] = {}
    rss = anon = 0
    while process.poll() is None:
        total_rss = total_anon = 0
        for pid in tree(process.pid):
            m = memory(pid)
            hwm[pid] = max(hwm.get(pid, 0), m.get("VmHWM", 0))
            total_rss += m.get("VmRSS", 0)
            total_anon += m.get("RssAnon", 0)
        rss, anon = max(rss, total_rss), max(anon, total_anon)
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command[-4:])} failed ({process.returncode}): {process.stderr.read().decode()[-600:]}")
    return {"seconds": seconds, "hwm": max(hwm.values(), default=0), "rss": rss, "anon": anon}


def data_bytes(*paths: str) -> int:
    total = 0
    for path in paths:
        files = [os.path.join(path, f) for f in os.listdir(path)] if os.path.isdir(path) else [path]
        total += sum(os.path.getsize(f) for f in files if not f.endswith(".json"))
    return total


def run_all(ws: list[str], runs: dict[str, list[str]], pairs: dict, env: dict[str, str], repeat: int) -> dict[str, dict]:
    for label in ("large", "moe"):  # warm the page cache, the compiled loops and the result cache
        measure(ws + list(pairs[label]), env)
    return {label: min((measure(command, env) for _ in range(repeat)), key=lambda r: r["seconds"])
            for label, command in runs.items()}


def show(title: str, figures: dict[str, dict], sizes: dict[str, int]) -> None:
    print(f"\n{title}")
    print(f"{'':10} {'data GB':>8} {'seconds':>8} {'GB/s':>6} {'max VmHWM':>10} {'peak RSS':>9} {'peak anon':>10}")
    for label, f in figures.items():
        print(f"{label:10} {sizes[label] / 1e9:8.2f} {f['seconds']:8.2f} {sizes[label] / f['seconds'] / 1e9:6.2f} "
              f"{f['hwm'] / 2**20:7.0f} MB {f['rss'] / 2**20:6.0f} MB {f['anon'] / 2**20:7.0f} MB")
    rate = {k: sizes[k] / figures[k]["seconds"] for k in ("large", "moe")}
    print(f"moe at {rate['moe'] / rate['large']:.0%} of the large-tensor rate (target >= 70%); "
          f"--json adds {figures['moe json']['seconds'] / figures['moe']['seconds'] - 1:.0%} (target <= 20%); "
          f"largest VmHWM {max(f['hwm'] for f in figures.values()) / 2**20:.0f} MB (target <= 1024 MB); "
          f"peak anon {max(f['anon'] for f in figures.values()) / 2**20:.0f} MB (target <= 512 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", help="write the pairs here and keep them (reused when present)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed")
    parser.add_argument("--baseline", help="also run the weightscope of this source tree (its tui/), for before and after")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="weightscope-bench-")
    cache = tempfile.mkdtemp(prefix="weightscope-bench-cache-")
    try:
        large, moe = os.path.join(root, "large"), os.path.join(root, "moe")
        if not os.path.isdir(large):
            print("writing the large pair ...", flush=True)
            os.makedirs(large)
            write_large_pair(large, 8)
        if not os.path.isdir(moe):
            print("writing the 96,200-tensor pair ...", flush=True)
            os.makedirs(moe)
            write_moe_pair(moe)
        sparse = os.path.join(root, "sparse.safetensors")
        if not os.path.exists(sparse):
            write_sparse(sparse)
        ws = [sys.executable, "-m", "weightscope", "diff", "--device", "cpu"]
        pairs = {"large": (f"{large}/a", f"{large}/b"), "moe": (f"{moe}/a", f"{moe}/b")}
        runs = {
            "large": ws + ["--no-cache", *pairs["large"]],
            "moe": ws + ["--no-cache", *pairs["moe"]],
            "moe json": ws + ["--no-cache", "--json", *pairs["moe"]],
            "moe cache": ws + list(pairs["moe"]),
            "same file": ws + ["--no-cache", sparse, sparse],
        }
        sizes = {"large": data_bytes(*pairs["large"]), "moe": data_bytes(*pairs["moe"]),
                 "moe json": data_bytes(*pairs["moe"]), "moe cache": data_bytes(*pairs["moe"]),
                 "same file": 2 * os.path.getsize(sparse)}
        trees = {"this tree": None} | ({f"baseline, {args.baseline}": os.path.abspath(args.baseline)}
                                       if args.baseline else {})
        print(f"{os.cpu_count()} cores, page cache warm, best of {args.repeat}; memory of the whole process tree")
        for title, pythonpath in trees.items():
            shutil.rmtree(cache, ignore_errors=True)  # each tree fills its own result cache
            env = {**os.environ, "XDG_CACHE_HOME": cache} | ({"PYTHONPATH": pythonpath} if pythonpath else {})
            show(title, run_all(ws, runs, pairs, env, args.repeat), sizes)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
