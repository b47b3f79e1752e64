"""Heads speed: a 4096 × 4096 bf16 q_proj pair's change by head, asked of the engine as the app asks.

Writes a base and a fine-tune (model.safetensors and a config.json of 32 query heads and 8
key/value heads) in which two query heads changed, starts an engine on them as the app
does, lets its scan finish, then times `Ask("heads", index)` from the request to the answer
(the engine reads both sides and sums them by head in its worker): the first ask, then the
best and median of --repeat more. The
target: the heads view fills in within 0.3 s of selecting the tensor.

    python3 bench/heads_speed.py [--size 4096] [--repeat 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import torch
from safetensors.torch import save_file

from weightscope.engine import protocol as msg
from weightscope.engine.client import Engine

NAME = "model.layers.0.self_attn.q_proj.weight"
HEADS, KV_HEADS = 32, 8
TARGET = 0.3


def write(directory: str, size: int) -> tuple[str, str]:
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(size, size, generator=gen) * 0.02).bfloat16()
    tuned = w.clone()
    d = size // HEADS
    tuned[3 * d:4 * d] += 0.01  # two heads changed, the others untouched
    tuned[17 * d:18 * d] += 0.002
    paths = []
    for label, weight in (("base", w), ("tuned", tuned)):
        folder = os.path.join(directory, label)
        os.makedirs(folder, exist_ok=True)
        save_file({NAME: weight}, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"model_type": "llama", "hidden_size": size, "num_attention_heads": HEADS,
                       "num_key_value_heads": KV_HEADS}, f)
        paths.append(folder)
    return paths[0], paths[1]


def until(engine: Engine, kind):
    while True:
        message = engine.recv()
        if isinstance(message, msg.Failed):
            raise SystemExit(f"engine: {message.message}")
        if isinstance(message, kind):
            return message


def ask_heads(engine: Engine, index: int) -> tuple[float, object]:
    start = time.perf_counter()
    ticket = engine.ask("heads", index)
    while True:
        reply = until(engine, msg.Reply)
        if reply.ticket == ticket:
            return time.perf_counter() - start, reply.content[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", metavar="DIR", help="write the inputs here and keep them")
    args = parser.parse_args()
    directory = args.keep or tempfile.mkdtemp(prefix="weightscope-heads-")
    try:
        base, tuned = write(directory, args.size)
        print(f"{args.size} × {args.size} bf16 q_proj, {HEADS} heads, {KV_HEADS} key/value heads; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        with Engine(msg.Job(base, tuned, use_cache=False)) as engine:
            opened = until(engine, msg.Opened)
            index = opened.catalog.index(NAME)
            engine.send(msg.Scan())
            while not isinstance(message := until(engine, (msg.Results, msg.ScanDone)), msg.ScanDone):
                engine.send(msg.Ack(message.number))
            first, found = ask_heads(engine, index)
            times = [ask_heads(engine, index)[0] for _ in range(args.repeat)]
        moved = [(u.unit.index, u.rel_l2) for u in found.units if u.delta_sq > 0]
        print(f"heads changed: {', '.join(f'{h} ({100 * rel:.3g}%)' for h, rel in moved)}")
        best, median = min(times), statistics.median(times)
        print(f"first ask                 {first * 1000:8.1f} ms")
        print(f"best of {args.repeat}                 {best * 1000:8.1f} ms")
        print(f"median of {args.repeat}               {median * 1000:8.1f} ms   target ≤ {TARGET * 1000:.0f} ms: "
              f"{'met' if median <= TARGET else 'missed'}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
