"""Heads speed: how soon the heads view fills in for a 4096 × 4096 bf16 q_proj, in the app and in the engine.

Writes a base and a fine-tune of --layers layers (q, k, v, o projections, bf16, hidden
4096; model.safetensors and a config.json of 32 query heads and 8 key/value heads) in which
two query heads of every q_proj changed, then measures:

(engine) the engine's answer alone: an engine started as the app starts it, its scan let
    finish, then `Ask("heads", index)` timed from the request to the answer (the engine reads
    both sides and sums them by head in a worker), for each q_proj in turn (each new to it),
    then --repeat more asks of one;
(app) what a person sees: the real app, headless (`App.run_test`, 120 × 40), `v` pressed until
    the heads view is on, then a q_proj selected (the tree's cursor put on it, the way down
    expanded beforehand), each one new, timed from the selection until the heads plot has
    been drawn with that tensor's bars (its `render`): the first half of the layers' while the
    scan runs (as long as it does), the others once it is done, a rest of --rest s between two
    selections (the tensor before still has its histograms on their way, as when a person
    moves on).

The target: the heads view fills in within 0.3 s of selecting the tensor. Best and median
of each are printed with it; figures from a busy machine are no figures of the app.

    python3 bench/heads_speed.py [--layers 16] [--repeat 7] [--rest 0.4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
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

SIZE, HEADS, KV_HEADS = 4096, 32, 8
TARGET = 0.3
TIMEOUT = 30.0  # seconds: a selection whose view has not filled in by then failed


def q_proj(layer: int) -> str:
    return f"model.layers.{layer}.self_attn.q_proj.weight"


def write(directory: str, layers: int) -> tuple[str, str]:
    """The pair: q, k, v, o of each layer, two of 32 query heads of every q_proj changed."""
    gen = torch.Generator().manual_seed(0)
    d, kv = SIZE // HEADS, SIZE // HEADS * KV_HEADS
    base, tuned = {}, {}
    for layer in range(layers):
        prefix = f"model.layers.{layer}.self_attn."
        for part, rows in (("q", SIZE), ("k", kv), ("v", kv), ("o", SIZE)):
            w = (torch.randn(rows, SIZE, generator=gen) * 0.02).bfloat16()
            base[f"{prefix}{part}_proj.weight"] = w
            tuned[f"{prefix}{part}_proj.weight"] = w
        changed = base[q_proj(layer)].clone()
        changed[3 * d:4 * d] += 0.01
        changed[17 * d:18 * d] += 0.002
        tuned[q_proj(layer)] = changed
    paths = []
    for label, weights in (("base", base), ("tuned", tuned)):
        folder = os.path.join(directory, label)
        os.makedirs(folder, exist_ok=True)
        save_file(weights, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"model_type": "llama", "hidden_size": SIZE, "num_attention_heads": HEADS,
                       "num_key_value_heads": KV_HEADS}, f)
        paths.append(folder)
    return paths[0], paths[1]


# The engine's answer alone


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


def engine_answers(base: str, tuned: str, layers: int, repeat: int) -> tuple[list[float], list[float], object]:
    """(each q_proj asked once, one asked `repeat` times more, its breakdown)."""
    with Engine(msg.Job(base, tuned, use_cache=False)) as engine:
        opened = until(engine, msg.Opened)
        engine.send(msg.Scan())
        while not isinstance(message := until(engine, (msg.Results, msg.ScanDone)), msg.ScanDone):
            engine.send(msg.Ack(message.number))
        indices = [opened.catalog.index(q_proj(layer)) for layer in range(layers)]
        new = [ask_heads(engine, index)[0] for index in indices]
        again = [ask_heads(engine, indices[0])[0] for _ in range(repeat)]
        _, found = ask_heads(engine, indices[0])
    return new, again, found


# What a person sees


async def app_fill_in(base: str, tuned: str, layers: int, rest: float) -> tuple[list[float], list[float]]:
    """(selection → heads drawn, in s: while the scan ran, once it was done)."""
    from weightscope.ui.app import WeightscopeApp
    from weightscope.ui.widgets.diff_tree import DiffTree
    from weightscope.ui.widgets.heads_view import HeadsPlot

    drawn: dict[str, float] = {}  # tensor -> when its bars were first drawn
    render = HeadsPlot.render

    def timed_render(plot):
        out = render(plot)
        if plot.drawn is not None:
            drawn.setdefault(plot.drawn[1], time.perf_counter())
        return out

    HeadsPlot.render = timed_render
    app = WeightscopeApp(msg.Job(base, tuned, use_cache=False))
    during: list[float] = []
    after: list[float] = []
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + TIMEOUT
            while not app.ready:
                if time.monotonic() > deadline:
                    raise SystemExit("the app did not open the pair")
                await pilot.pause(0.01)
            while app.detail_view != "heads":  # on the first line (a group): no view is asked for
                await pilot.press("v")
            await pilot.pause(0.1)
            for layer in range(layers):
                name = q_proj(layer)
                if layer == layers // 2:  # the second half once the scan is done
                    while not app.scan_done:
                        await pilot.pause(0.05)
                if app.scan_done and not after:
                    await pilot.pause(rest)  # the scan's last results taken in
                tree = app.query_one(DiffTree)
                tree.reveal(int(app.names.node_of[app.catalog.index(name)]), move=False)  # the way down, open
                await pilot.pause(0.05)
                scanning = not app.scan_done
                start = time.perf_counter()
                app.show_in_tree(name)
                while name not in drawn:
                    if time.perf_counter() - start > TIMEOUT:
                        raise SystemExit(f"the heads view of {name} did not fill in within {TIMEOUT:.0f} s")
                    await asyncio.sleep(0.002)
                (during if scanning else after).append(drawn[name] - start)
                await pilot.pause(rest)
    finally:
        HeadsPlot.render = render
    return during, after


def line(label: str, times: list[float], target: float | None = TARGET) -> str:
    if not times:
        return f"{label:34s} none"
    best, median = min(times), statistics.median(times)
    verdict = f"   target ≤ {target * 1000:.0f} ms: {'met' if median <= target else 'missed'}" if target else ""
    return f"{label:34s} best {best * 1000:7.1f} ms   median {median * 1000:7.1f} ms   (n = {len(times)}){verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16, help="layers (q_projs to select), default 16")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rest", type=float, default=0.4, help="seconds between two selections in the app")
    parser.add_argument("--keep", metavar="DIR", help="write the inputs here and keep them")
    args = parser.parse_args()
    directory = args.keep or tempfile.mkdtemp(prefix="weightscope-heads-")
    try:
        if os.path.exists(os.path.join(directory, "tuned", "config.json")):
            base, tuned = os.path.join(directory, "base"), os.path.join(directory, "tuned")
        else:
            base, tuned = write(directory, args.layers)
        print(f"{args.layers} layers, each a {SIZE} × {SIZE} bf16 q_proj, {HEADS} heads, {KV_HEADS} key/value heads; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        new, again, found = engine_answers(base, tuned, args.layers, args.repeat)
        moved = [(u.unit.index, u.rel_l2) for u in found.units if u.delta_sq > 0]
        print(f"heads changed: {', '.join(f'{h} ({100 * rel:.3g}%)' for h, rel in moved)}")
        print(line("engine: each q_proj asked anew", new, None))
        print(line(f"engine: one asked {args.repeat} times more", again, None))
        during, after = asyncio.run(app_fill_in(base, tuned, args.layers, args.rest))
        print(line("app: selected while the scan runs", during))
        print(line("app: selected once it is done", after))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
