"""A training run's scan against reading its bytes once, and the rescan when one checkpoint is added.

Writes (once, or reuses with --keep DIR) a run of ten checkpoints the size of
bench/scan_speed.py's large pair (2 shards of 542 MB bf16 safetensors each, with an index):
`checkpoint-100` … `checkpoint-1000`, each the large pair's A with the lowest bits of every
matrix but the embeddings changed in a pattern of its own step, so nearly every byte differs
from step to step. Then, in one run, with the page cache warm:

  (a) reading every checkpoint's bytes once (a pread loop over every file, 16 MB at a time)
  (b) the engine's scan of the run (RUN_DIR alone: the first checkpoint is the reference),
      no cache read; target <= 1.3 × (a)
  (c) an eleventh checkpoint added, scanned again with the cache: the time and the bytes
      read per checkpoint; target: only the new one, its predecessor and the reference

    python3 bench/run_speed.py [--keep DIR]      (default DIR: /work/benchdata/run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tui"))

STEPS = 10


def write_step(source: str, target: str, step: int) -> None:
    """`source` (a sharded safetensors directory) with the two lowest bits of every matrix's
    elements but the embeddings' changed by a pattern of `step`; headers unchanged."""
    os.makedirs(target)
    pattern = np.random.default_rng(step).integers(0, 4, 1 << 20, dtype=np.uint16)
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if not name.endswith(".safetensors"):
            shutil.copy(path, target)
            continue
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
        data = np.frombuffer(raw, np.uint8, offset=8 + size)
        for tensor, entry in header.items():
            if tensor == "__metadata__" or len(entry["shape"]) != 2 or "embed" in tensor:
                continue
            lo, hi = entry["data_offsets"]
            values = data[lo:hi].view(np.uint16)
            reps = -(-values.size // pattern.size)
            values ^= np.tile(pattern, reps)[:values.size]
        with open(os.path.join(target, name), "wb") as f:
            f.write(raw)


def ensure_run(root: str, count: int) -> list[str]:
    source = "/work/benchdata/large/a"
    if not os.path.isdir(source):
        sys.path.insert(0, HERE)
        from scan_speed import write_pair

        write_pair(os.path.dirname(source), 8)
    paths = []
    for k in range(1, count + 1):
        path = os.path.join(root, f"checkpoint-{100 * k}")
        if not os.path.isdir(path):
            print(f"writing {path} ...", flush=True)
            write_step(source, path, k)
        paths.append(path)
    return paths


def read_once(paths: list[str]) -> tuple[float, int]:
    """Seconds to read every file of these checkpoints once, and the bytes read."""
    start, total = time.perf_counter(), 0
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    for path in paths:
        for name in sorted(os.listdir(path)):
            fd = os.open(os.path.join(path, name), os.O_RDONLY)
            try:
                offset = 0
                while got := os.preadv(fd, [view], offset):
                    offset += got
                    total += got
            finally:
                os.close(fd)
    return time.perf_counter() - start, total


def peak_mb(pid: int) -> float:
    """The largest VmHWM (peak resident set) of a process and its descendants, in MB."""
    peak = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                peak = max([peak, *(peak_mb(int(child)) for child in f.read().split())])
    except (OSError, StopIteration):
        pass
    return peak


def scan(run_dir: str, use_cache: bool):
    """(seconds, RunDone, peak MB of a process) of the engine's scan of the run, as
    `weightscope diff RUN_DIR/` does it."""
    from weightscope.engine import protocol as msg
    from weightscope.engine.client import Engine
    from weightscope.sources.runs import plan_run

    start, peak = time.perf_counter(), 0.0
    with Engine(msg.RunJob(plan_run([run_dir]), use_cache=use_cache)) as engine:
        while True:
            peak = max(peak, peak_mb(engine.process.pid))
            message = engine.recv()
            if isinstance(message, msg.Failed) and message.fatal:
                raise SystemExit(message.message)
            if isinstance(message, msg.RunOpened):
                engine.send(msg.Scan())
            elif isinstance(message, msg.RunResults):
                engine.send(msg.Ack(message.number))
            elif isinstance(message, msg.RunDone):
                return time.perf_counter() - start, message, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default="/work/benchdata/run", help="where the run is written, or found")
    args = parser.parse_args()
    paths = ensure_run(args.keep, STEPS)
    eleventh = os.path.join(args.keep, f"checkpoint-{100 * (STEPS + 1)}")
    if os.path.isdir(eleventh):
        shutil.rmtree(eleventh)
    from weightscope.paths import cache_dir

    # The compiled loops keep their cache (a first compile is not the scan); the results get one of their own.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="weightscope-run-bench-")
    try:
        read_once(paths)  # warm the page cache
        floor, nbytes = read_once(paths)
        scanned, done, peak = scan(args.keep, use_cache=True)  # nothing cached yet: a whole scan, which fills the cache
        assert done.cached == [], done.cached
        print(f"run of {len(paths)} checkpoints, {nbytes / 1e9:.2f} GB")
        print(f"(a) read every checkpoint once: {floor:.2f} s ({nbytes / floor / 1e9:.2f} GB/s)")
        print(f"(b) scan of the run:            {scanned:.2f} s = {scanned / floor:.2f} × (a) (target <= 1.3)")
        write_step("/work/benchdata/large/a", eleventh, STEPS + 1)
        read_once([eleventh])  # warm, as the others are
        rescanned, again, _ = scan(args.keep, use_cache=True)
        sizes = [sum(os.path.getsize(os.path.join(p, n)) for n in os.listdir(p)) for p in [*paths, eleventh]]
        read = {os.path.basename(p): n for p, n in zip([*paths, eleventh], again.read) if n}
        print(f"(c) with an eleventh checkpoint: {rescanned:.2f} s; steps from the cache {again.cached}; read: "
              + ", ".join(f"{name} {n / 1e9:.2f} GB" for name, n in read.items())
              + f" of {sum(sizes) / 1e9:.2f} GB (target: only checkpoint-{100 * (STEPS + 1)}, its predecessor "
                f"and the reference)")
        print(f"largest peak resident set (VmHWM) of an engine process in (b): {peak:.0f} MB (target < 1024 MB)")
    finally:
        shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


if __name__ == "__main__":
    main()
