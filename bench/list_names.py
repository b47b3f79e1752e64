"""How long weightscope takes to list every tensor of a big checkpoint, from headers alone.

Writes two sharded safetensors checkpoints as sparse files (headers and index exactly as
Hugging Face and the safetensors writer lay them out; the data region is a hole made with
`truncate`, so nothing but headers reaches the disk):

- a Llama-2-7B-shaped one: 291 bf16 tensors in 2 shards, ~13.5 GB apparent;
- a 100,000-tensor MoE-shaped one: many small bf16 tensors in a few shards.

For each it times, in this process, `open_checkpoint(path)` followed by reading every
`TensorInfo` (name, dtype, shape, numel, nbytes): the first call and the best of five. The
targets come from issue 2: under 0.3 s for the 7B and under 3 s for 100,000 tensors. Listing
safetensors must not import torch; that is checked after all the listing.

Run from the repository root:

    python3 bench/list_names.py [--out DIR]

Without --out the checkpoints go to a temporary directory that is removed afterwards; with
--out they are written under DIR and kept. Exits 1 when a target is missed or torch was
imported, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

RUNS = 5
BF16_SIZE = 2
GB = 10**9  # transformers' "5GB"/"10GB" shard sizes are decimal

Layout = list[tuple[str, tuple[int, ...]]]  # (name, shape) in state_dict order


def llama2_7b() -> Layout:
    """The 291 tensors of Llama-2-7B, in the order `state_dict()` gives them."""
    hidden, intermediate, vocab, layers = 4096, 11008, 32000, 32
    tensors: Layout = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (intermediate, hidden)),
            (p + "mlp.up_proj.weight", (intermediate, hidden)),
            (p + "mlp.down_proj.weight", (hidden, intermediate)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return tensors


def moe_100k() -> Layout:
    """A Qwen3-MoE-shaped model of exactly 100,000 tensors: 45 layers, the first 2 dense,
    the other 43 with a router and 772 small experts each."""
    hidden, head_dim, kv, vocab = 512, 64, 128, 32000
    layers, dense_layers, experts = 45, 2, 772
    dense_intermediate, expert_intermediate = 1536, 128
    tensors: Layout = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "self_attn.q_norm.weight", (head_dim,)),
            (p + "self_attn.k_norm.weight", (head_dim,)),
        ]
        if i < dense_layers:
            tensors += [
                (p + "mlp.gate_proj.weight", (dense_intermediate, hidden)),
                (p + "mlp.up_proj.weight", (dense_intermediate, hidden)),
                (p + "mlp.down_proj.weight", (hidden, dense_intermediate)),
            ]
        else:
            tensors.append((p + "mlp.gate.weight", (experts, hidden)))
            for e in range(experts):
                q = f"{p}mlp.experts.{e}."
                tensors += [
                    (q + "gate_proj.weight", (expert_intermediate, hidden)),
                    (q + "up_proj.weight", (expert_intermediate, hidden)),
                    (q + "down_proj.weight", (hidden, expert_intermediate)),
                ]
        tensors += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    assert len(tensors) == 100_000, len(tensors)
    return tensors


def nbytes(shape: tuple[int, ...]) -> int:
    return math.prod(shape) * BF16_SIZE


def split_shards(tensors: Layout, max_shard_size: int) -> list[Layout]:
    """Greedy split in state_dict order, as transformers' `save_pretrained` shards."""
    shards: list[Layout] = [[]]
    size = 0
    for name, shape in tensors:
        if shards[-1] and size + nbytes(shape) > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes(shape)
    return shards


def write_shard(path: str, tensors: Layout) -> None:
    """One .safetensors file as the safetensors writer lays it out, its data a sparse hole.

    The writer orders data by dtype alignment, then name (all bf16 here: by name), writes the
    header as compact JSON with `__metadata__` first, and pads it with spaces to 8 bytes.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in sorted(tensors):
        end = offset + nbytes(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.truncate(8 + len(text) + offset)


def write_checkpoint(directory: str, tensors: Layout, max_shard_size: int) -> None:
    """Shards plus `model.safetensors.index.json`, named and formatted as transformers does."""
    os.makedirs(directory, exist_ok=True)
    shards = split_shards(tensors, max_shard_size)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(directory, file), shard)
        weight_map.update((name, file) for name, _ in shard)
    index = {"metadata": {"total_size": sum(nbytes(s) for _, s in tensors)}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


def disk_usage(directory: str) -> tuple[int, int]:
    """Apparent and allocated bytes of the files in `directory`."""
    stats = [os.stat(os.path.join(directory, n)) for n in os.listdir(directory)]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def list_all(open_checkpoint, path: str) -> tuple[float, int, int, int, int]:
    """One timed open-and-list; returns seconds, tensors, files, parameters, tensors in error."""
    start = time.perf_counter()
    checkpoint = open_checkpoint(path)
    listed = [(name, t.dtype, t.shape, t.numel, t.nbytes, t.error) for name, t in checkpoint.tensors.items()]
    numel = sum(row[3] for row in listed)
    errors = sum(row[5] is not None for row in listed)
    seconds = time.perf_counter() - start
    checkpoint.close()
    return seconds, len(listed), len(checkpoint.files), numel, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the checkpoints under this directory and keep them")
    args = parser.parse_args()

    start = time.perf_counter()
    from weightscope.sources.discover import open_checkpoint

    import_seconds = time.perf_counter() - start

    cases = [
        ("llama-2-7b-shaped", llama2_7b(), 10 * GB, 0.3),
        ("moe-100k-tensors", moe_100k(), 5 * GB, 3.0),
    ]
    with tempfile.TemporaryDirectory(prefix="weightscope-bench-") as tmp:
        root = args.out or tmp
        rows = []
        for label, tensors, max_shard_size, target in cases:
            directory = os.path.join(root, label)
            write_checkpoint(directory, tensors, max_shard_size)
            apparent, allocated = disk_usage(directory)
            runs = [list_all(open_checkpoint, directory) for _ in range(RUNS)]
            _, count, files, numel, errors = runs[0]
            expected = sum(math.prod(s) for _, s in tensors)
            if (count, numel, errors) != (len(tensors), expected, 0):
                print(f"{label}: listed {count} tensors, {numel} elements, {errors} in error; "
                      f"expected {len(tensors)}, {expected}, 0", file=sys.stderr)
                return 1
            seconds = [r[0] for r in runs]
            rows.append((label, count, files, numel, apparent, allocated, seconds[0], min(seconds), target))

    torch_imported = "torch" in sys.modules
    print(f"open_checkpoint + every TensorInfo, in-process, page cache warm; best of {RUNS}")
    print(f"(importing weightscope.sources.discover took {import_seconds:.3f} s, not counted)\n")
    head = f"{'checkpoint':<18} {'tensors':>8} {'files':>5} {'parameters':>14} {'on disk':>17} "
    print(head + f"{'first s':>8} {'best s':>8} {'target s':>8}  ok")
    ok = not torch_imported
    for label, count, files, numel, apparent, allocated, first, best, target in rows:
        met = best < target
        ok &= met
        disk = f"{allocated / 2**20:.1f}/{apparent / GB:.1f}G"
        print(f"{label:<18} {count:>8,} {files:>5} {numel:>14,} {disk:>17} "
              f"{first:>8.3f} {best:>8.3f} {'< ' + str(target):>8}  {'yes' if met else 'NO'}")
    print("\n'on disk' is MiB allocated / GB apparent (the data is a sparse hole).")
    print(f"torch imported after listing: {'YES (it must not be)' if torch_imported else 'no'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
