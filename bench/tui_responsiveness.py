"""Does the tree stay responsive while the background scan runs on a 100,000-tensor pair?

Writes a 100,000-tensor MoE-shaped pair as sparse files (the layout of bench/list_names.py,
13 GB apparent a side) and opens it in the app twice (headless, 120×40, a private result
cache): first with an empty cache, through the whole scan (every pair is byte-compared and
one side's statistics computed) and the writing of its results to the cache; then again,
answered from the cache. Throughout each run, from the moment the tree is mounted until 2 s
after the last result is in:

- probes the event loop every 10 ms and records how late each probe runs (a late probe
  means a key pressed then would have waited that long);
- sends Down and Up in turn every 50 ms through the app's input driver, as a terminal would,
  and records how long until the tree's cursor has moved (the keypress handled).

Prints, per run, the worst and the 99th percentile of both against the target of 100 ms,
when the worst happened, and how far the scan got. After the second run's results are in,
it presses `t` (the table of every pair), `o` (the overview) and `e` (export) in turn and
prints how long each took to be ready and the worst event-loop lag from the key until 0.5 s
after (the view's first paint included); then types a filter a key at a time and takes it
back, and prints the worst lag while the tree is rebuilt for every key.

    python3 bench/tui_responsiveness.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from list_names import GB, moe_100k, write_checkpoint  # noqa: E402


def write_pair(root: str) -> tuple[str, str]:
    layout = moe_100k()
    a, b = os.path.join(root, "a"), os.path.join(root, "b")
    write_checkpoint(a, layout, 5 * GB)
    write_checkpoint(b, layout, 5 * GB)
    return a, b


AFTER = 2.0  # seconds probed after the last result is in (the end of the scan, the cache written)
VIEWS = {"t": "table of every pair", "o": "overview", "e": "export (Markdown and JSON)"}
FILTER = "experts"  # typed into the filter a key at a time, then taken back: each key a new tree
PAINT = 0.5  # seconds after a view is ready that still count as its opening


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def press(app, name: str) -> None:
    """A key, sent the path a real terminal's keys take (the app's input driver)."""
    from textual import events

    event = events.Key(name, name if len(name) == 1 else None)
    event.set_sender(app)
    app._driver.send_message(event)


async def measure(a: str, b: str, seconds: float, label: str, with_views: bool) -> None:
    from weightscope.ui.app import WeightscopeApp
    from weightscope.ui.widgets.diff_tree import DiffTree

    app = WeightscopeApp(a, b)
    lags: list[float] = []
    when: list[float] = []  # seconds after start of each probe
    presses: list[float] = []
    pressed_at: list[float] = []  # seconds after start of each keypress
    async with app.run_test(size=(120, 40)) as pilot:
        started = time.perf_counter()
        while not app.query(DiffTree):
            await pilot.pause(0.01)
        shown = time.perf_counter() - started
        expected = [time.perf_counter() + 0.01]

        def probe() -> None:
            now = time.perf_counter()
            lags.append(max(0.0, now - expected[0]))
            when.append(now - started)
            expected[0] = now + 0.01

        app.set_interval(0.01, probe)
        deadline = time.perf_counter() + seconds
        tree = app.query_one(DiffTree)
        step = 0
        ended = None  # when the last result came in
        while time.perf_counter() < deadline and (ended is None or time.perf_counter() < ended + AFTER):
            before = tree.cursor_line
            start = time.perf_counter()
            step += 1
            press(app, "down" if step % 2 else "up")  # back and forth on the first lines
            while tree.cursor_line == before and time.perf_counter() - start < 5:
                await asyncio.sleep(0.001)
            presses.append(time.perf_counter() - start)
            pressed_at.append(start - started)
            await asyncio.sleep(0.05)
            if ended is None and len(app.results) == len(app.alignment.pairs):
                ended = time.perf_counter()
        scanned, total = len(app.results), len(app.alignment.pairs)
        probed = len(lags)
        views = await open_views(app, lags) if with_views else []
    del lags[probed:], when[probed:]
    worst = max(range(len(lags)), key=lags.__getitem__)
    slowest = sorted(range(len(presses)), key=presses.__getitem__)[-3:][::-1]
    print(f"{label}: tree shown {shown:.2f} s after start; {scanned:,} of {total:,} results in"
          + (f" after {ended - started:.1f} s" if ended else "") + "; "
          f"the worst lag ended {when[worst]:.2f} s after start; the slowest keys were pressed "
          + ", ".join(f"{pressed_at[i]:.2f} s ({1000 * presses[i]:.0f} ms)" for i in slowest) + " after start\n")
    print(f"{'':28} {'samples':>8} {'median':>8} {'p99':>8} {'worst':>8}   target")
    for label, values in (("event-loop lag (10 ms probe)", lags), ("keypress handled (Down/Up)", presses)):
        print(f"{label:28} {len(values):8} {1000 * statistics.median(values):6.1f}ms "
              f"{1000 * percentile(values, 0.99):6.1f}ms {1000 * max(values):6.1f}ms   < 100 ms")
    for key, took, lag in views:
        if key == "/":
            print(f"'/' typing {FILTER!r} into the filter and taking it back, a key every 0.3 s ({took:.1f} s): "
                  f"the worst event-loop lag {1000 * lag:.0f} ms")
        else:
            print(f"{key!r} {VIEWS[key]}: ready after {took:.2f} s; the worst event-loop lag meanwhile and in the "
                  f"{PAINT} s after: {1000 * lag:.0f} ms")


async def open_views(app, lags: list[float]) -> list[tuple[str, float, float]]:
    """Press t, o and e in turn once every result is in: (key, seconds until its screen is up or
    its files are written, the worst loop lag from the key until `PAINT` s after)."""
    from weightscope.ui.screens.overview import OverviewScreen
    from weightscope.ui.screens.table import TableScreen

    ready = {"t": lambda: isinstance(app.screen, TableScreen), "o": lambda: isinstance(app.screen, OverviewScreen),
             "e": lambda: len(glob.glob("weightscope-*")) == 2}
    out = []
    for key in VIEWS:
        first, start = len(lags), time.perf_counter()
        for name in (key, "escape"):
            press(app, name)
            if name == key:
                while not ready[key]():
                    await asyncio.sleep(0.005)
                took = time.perf_counter() - start
                await asyncio.sleep(PAINT)
        out.append((key, took, max(lags[first:], default=0.0)))
        await asyncio.sleep(0.3)
    first, start = len(lags), time.perf_counter()
    for name in ("slash", *FILTER, *["backspace"] * len(FILTER), "escape"):
        press(app, name)
        await asyncio.sleep(0.3)  # slower than the live filter's delay: every key rebuilds the tree
    out.append(("/", time.perf_counter() - start, max(lags[first:], default=0.0)))
    return out


def run_measure(a: str, b: str, seconds: float, label: str, with_views: bool) -> None:
    os.chdir(os.path.dirname(a))  # where `e` writes its files
    asyncio.run(measure(a, b, seconds, label, with_views))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="the longest to probe each run")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="weightscope-responsive-")
    spawn = multiprocessing.get_context("spawn")
    from weightscope.paths import cache_dir

    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))  # the compiled loops keep their cache
    os.environ["XDG_CACHE_HOME"] = os.path.join(root, "cache")  # a private result cache
    try:
        print(f"writing a 100,000-tensor pair (sparse) to {root} ...", flush=True)
        a, b = write_pair(root)
        for label, with_views in (("scan, empty result cache", False), ("reopened, results from the cache", True)):
            run = spawn.Process(target=run_measure, args=(a, b, args.seconds, label, with_views))  # a fresh process, as a user's
            run.start()
            run.join()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
