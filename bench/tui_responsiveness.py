"""Does the app stay responsive while the engine scans a 100,000-tensor pair, and how long does
the scan take in the app against the command line?

Uses bench/engine_speed.py's MoE-shaped pair of real values (96,200 fp16 tensors, every other
one changed, about 3.1 GB a side; written once, kept with --keep). Then, in one run:

1. `weightscope diff --no-cache A B` as a process: the command line's time, start to exit.
2. The app (headless, 120×40, a fresh process, an empty private result cache), from start
   until 2 s after the scan is done. From the moment the tree is on screen (its root
   expanded and the frame drawn, as a person sees it) it
   - probes the event loop every 10 ms and records how late each probe runs (a late probe
     means a key pressed then would have waited that long);
   - sends Down and Up in turn every 50 ms through the app's input driver, as a terminal
     would, and records how long until the tree's cursor has moved.
   Prints the worst and the 99th percentile of both (targets: worst < 100 ms, p99 < 30 ms),
   the tree's time on screen and the scan's time in the app against the command line's
   (target: within 1.2×).
3. The app again, its results now in the cache: the time from the tree on screen until every
   badge is in (target < 1 s), with the same probes. Then `t` (the table of every pair), `o`
   (the overview) and `e` (export) in turn: how long each took to be ready and the worst
   event-loop lag from the key until 0.5 s after; then a filter typed a key at a time and
   taken back, with the worst lag while the tree is rebuilt for every key.

4. The console script in tmux (120×40, a fresh process, an empty result cache), as a person
   starts it: seconds from Enter to the first paint and to the tree on screen (target 1.5 s),
   three times. The app's output is watched as tmux receives it, through a control-mode
   client (`tmux -C`), which tmux tells of every write: nothing polls. Polling
   `capture-pane` every 10 ms, as bench/tui_latency.py does, starts a tmux client 100 times
   a second, a quarter of a core here: on two cores a load of its own on what it measures.
   Three runs watched that way are printed beside, for comparison.

The app's process holds no GC or switch-interval settings: the engine's processes do the work.

    python3 bench/tui_responsiveness.py [--keep DIR] [--seconds 120] [--baseline TREE]

--baseline TUI also times another source tree's app in tmux (an older commit's `tui/`), its
runs alternating with this tree's, and prints its figures beside (before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import multiprocessing
import os
import queue
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bytecode import TUI, compile_package  # noqa: E402
from engine_speed import write_moe_pair  # noqa: E402
from tui_latency import HEIGHT, TMUX_CONF, WIDTH, Failed, Terminal  # noqa: E402

AFTER = 2.0  # seconds probed after the scan is done
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


def probe(app, lags: list[float], also: Callable[[float], None] | None = None) -> None:
    """Probe the app's event loop every 10 ms from now on, adding to `lags` how late each probe
    runs (a key pressed then would have waited that long); `also(now)` at each."""
    expected = [time.perf_counter() + 0.01]

    def tick() -> None:
        now = time.perf_counter()
        lags.append(max(0.0, now - expected[0]))
        expected[0] = now + 0.01
        if also is not None:
            also(now)

    app.set_interval(0.01, tick)


async def press_in_turn(app, tree, going: Callable[[], bool]) -> list[float]:
    """Down and Up in turn, 50 ms after each has moved `tree`'s cursor, while `going()`: how
    long each took to move it."""
    presses, step = [], 0
    while going():
        before, start = tree.cursor_line, time.perf_counter()
        step += 1
        press(app, "down" if step % 2 else "up")  # back and forth on the first lines
        while tree.cursor_line == before and time.perf_counter() - start < 5:
            await asyncio.sleep(0.001)
        presses.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
    return presses


async def measure(a: str, b: str, seconds: float, with_views: bool, out) -> None:
    started = time.perf_counter()  # the app's imports count, as they do for a user
    from weightscope.engine.protocol import Job
    from weightscope.ui.app import WeightscopeApp
    from weightscope.ui.widgets.diff_tree import DiffTree

    app = WeightscopeApp(Job(a, b))
    lags: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.query(DiffTree):
            await pilot.pause(0.01)
        shown = time.perf_counter() - started
        tree = app.query_one(DiffTree)
        press(app, "right")  # the root expanded: lines to move between
        while tree.last_line < 1:
            await asyncio.sleep(0.005)
        await pilot.pause(0)  # its events handled and the frame drawn
        done: list[float] = []  # when the scan was done, seen by the probe

        def seen_done(now: float) -> None:
            if not done and app.scan_done:
                done.append(now)

        probe(app, lags, seen_done)
        deadline = time.perf_counter() + seconds
        presses = await press_in_turn(app, tree, lambda: time.perf_counter() < deadline and (
            not done or time.perf_counter() < done[0] + AFTER))
        probed = len(lags)
        read, total = app.table.read, len(app.catalog)
        views = await open_views(app, lags) if with_views else []
    del lags[probed:]
    done = done[0] if done else None
    out.put({"shown": shown, "done": done - started if done else None, "badges": done - started - shown if done else None,
             "read": read, "total": total, "lags": lags, "presses": presses, "views": views})


async def open_views(app, lags: list[float]) -> list[tuple[str, float, float]]:
    """Press t, o and e in turn: (key, seconds until its screen is up or its files are written,
    the worst loop lag from the key until `PAINT` s after); then the filter, typed and taken back."""
    from weightscope.ui.screens.overview import OverviewScreen
    from weightscope.ui.screens.table import TableScreen

    ready = {"t": lambda: isinstance(app.screen, TableScreen), "o": lambda: isinstance(app.screen, OverviewScreen),
             "e": lambda: len(glob.glob("weightscope-*")) == 2}
    out = []
    for key in VIEWS:
        first, start = len(lags), time.perf_counter()
        press(app, key)
        while not ready[key]() and time.perf_counter() - start < 30:
            await asyncio.sleep(0.005)
        took = time.perf_counter() - start
        await asyncio.sleep(PAINT)
        press(app, "escape")
        out.append((key, took, max(lags[first:], default=0.0)))
        await asyncio.sleep(0.3)
    first, start = len(lags), time.perf_counter()
    for name in ("slash", *FILTER, *["backspace"] * len(FILTER), "escape"):
        press(app, name)
        await asyncio.sleep(0.3)  # slower than the live filter's delay: every key rebuilds the tree
    out.append(("/", time.perf_counter() - start, max(lags[first:], default=0.0)))
    return out


def run_measure(a: str, b: str, seconds: float, with_views: bool, out) -> None:
    os.chdir(os.path.dirname(a))  # where `e` writes its files
    for old in glob.glob("weightscope-*"):
        os.remove(old)
    asyncio.run(measure(a, b, seconds, with_views, out))


def in_fresh_process(a: str, b: str, seconds: float, with_views: bool) -> dict:
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, as a user's
    out = spawn.Queue()
    run = spawn.Process(target=run_measure, args=(a, b, seconds, with_views, out))
    run.start()
    while True:
        try:
            found = out.get(timeout=1)
            break
        except queue.Empty:
            if not run.is_alive():
                sys.exit(f"the app's run failed (exit {run.exitcode})")
    run.join()
    return found


def report(label: str, found: dict, cli: float | None) -> None:
    lags, presses = found["lags"], found["presses"]
    print(f"\n{label}: tree on screen {found['shown']:.2f} s after start; {found['read']:,} of {found['total']:,} "
          "pairs read" + (f", the scan done {found['done']:.2f} s after start" if found["done"] else ", the scan unfinished"))
    if cli is not None and found["done"]:
        print(f"  the scan in the app, start to done: {found['done']:.2f} s; the command line, start to exit: "
              f"{cli:.2f} s; {found['done'] / cli:.2f}x (target <= 1.2x)")
    if cli is None and found["badges"] is not None:
        print(f"  every badge in {found['badges']:.2f} s after the tree was on screen (target < 1 s)")
    print(f"  {'':28} {'samples':>8} {'median':>8} {'p99':>8} {'worst':>8}   target")
    for name, values in (("event-loop lag (10 ms probe)", lags), ("keypress handled (Down/Up)", presses)):
        print(f"  {name:28} {len(values):8} {1000 * statistics.median(values):6.1f}ms "
              f"{1000 * percentile(values, 0.99):6.1f}ms {1000 * max(values):6.1f}ms   p99 < 30 ms, worst < 100 ms")
    for key, took, lag in found["views"]:
        if key == "/":
            print(f"  '/' typing {FILTER!r} into the filter and taking it back, a key every 0.3 s ({took:.1f} s): "
                  f"the worst event-loop lag {1000 * lag:.0f} ms")
        else:
            print(f"  {key!r} {VIEWS[key]}: ready after {took:.2f} s; the worst event-loop lag meanwhile and in the "
                  f"{PAINT} s after: {1000 * lag:.0f} ms")


TMUX_RUNS = 3
TREE_TARGET = 1.5  # seconds from Enter to the tree on screen
EXITED = b"[weightscope exited"
TREE_MARK = "▶"  # a collapsed group of the tree (the placeholder before it has none)


class PaneOutput:
    """What the app writes to its tmux pane, as tmux receives it: a control-mode client is told
    of each write (`%output %PANE BYTES`, octal escapes for bytes tmux will not pass as they are)."""

    def __init__(self, term: Terminal):
        self.client = subprocess.Popen([*term.base, "-C", "attach", "-t", "app"], env=term.env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.client.stdout.fileno(), False)
        self.pending, self.written = b"", b""

    def wait(self, what: str, needle: bytes, timeout: float = 30) -> float:
        """The time.monotonic() at which the pane's output first holds `needle` (after what it held)."""
        deadline, start = time.monotonic() + timeout, len(self.written)
        while needle not in self.written[start:]:
            if EXITED in self.written or time.monotonic() > deadline:
                raise Failed(f"no {what} in the app's output")
            select.select([self.client.stdout], [], [], 0.1)
            at = time.monotonic()
            *lines, self.pending = (self.pending + (self.client.stdout.read() or b"")).split(b"\n")
            self.written += b"".join(unescape(line.split(b" ", 2)[2]) for line in lines if line.startswith(b"%output "))
        return at

    def close(self) -> None:
        self.client.kill()
        self.client.wait()


def unescape(data: bytes) -> bytes:
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), data)


def tree_in_tmux(a: str, b: str, tui: str, polled: bool) -> tuple[float, float]:
    """Seconds from Enter to the first paint and to the tree, for the app of the source tree
    whose `tui/` is given, in a private tmux server, watched through its output (or by polling)."""
    conf = os.path.join(tempfile.mkdtemp(prefix="weightscope-tmux-"), "tmux.conf")
    with open(conf, "w") as f:
        f.write(TMUX_CONF)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE", "NO_COLOR")}
    env.update(PYTHONPATH=tui, XDG_CACHE_HOME=tempfile.mkdtemp(prefix="weightscope-tmux-cache-"))
    env.setdefault("LANG", "C.UTF-8")
    term = Terminal(conf, env)
    watch = None
    try:
        term.tmux("new-session", "-d", "-s", "app", "-x", str(WIDTH), "-y", str(HEIGHT), "sh", "-c",
                  'read _; "$@"; echo "[weightscope exited with status $?]"; exec sleep 3600',
                  "sh", sys.executable, "-m", "weightscope", a, b)
        term.wait("the shell", lambda screen: True)
        watch = None if polled else PaneOutput(term)
        time.sleep(0.3)  # (the control client attached)
        start = time.monotonic()
        term.keys("Enter")
        if polled:
            painted = term.wait("the first paint", lambda screen: "reading headers" in screen)
            shown = term.wait("the tree", lambda screen: TREE_MARK in screen)
        else:
            painted = watch.wait("the first paint", b"reading headers")
            shown = watch.wait("the tree", TREE_MARK.encode())
        term.keys("q")
        term.wait("the app to quit", lambda screen: EXITED.decode() in screen)
        return painted - start, shown - start
    finally:
        if watch is not None:
            watch.close()
        term.kill()
        shutil.rmtree(os.path.dirname(conf), ignore_errors=True)
        shutil.rmtree(env["XDG_CACHE_HOME"], ignore_errors=True)


def report_tmux(a: str, b: str, baseline: str | None) -> None:
    trees = {"this tree": TUI}
    if baseline:
        trees[f"baseline, {baseline}"] = os.path.abspath(baseline)
        compile_package(baseline)
    found: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for polled in (False, True):
        for _ in range(TMUX_RUNS):
            for title, tui in trees.items():  # alternating: whatever else the machine does falls on both
                found.setdefault((title, polled), []).append(tree_in_tmux(a, b, tui, polled))
    print(f"\nthe app in tmux {WIDTH}x{HEIGHT}, an empty result cache, {TMUX_RUNS} runs each: seconds from Enter")
    print(f"  {'':44} {'first paint':>13}   {'tree on screen':>14}   {'runs (tree)':<16}  target {TREE_TARGET:g} s")
    print(f"  {'':44} {'best median':>13}   {'best median':>14}")
    for (title, polled), runs in found.items():
        paints, shown = [p for p, _ in runs], [t for _, t in runs]
        verdict = "met" if statistics.median(shown) <= TREE_TARGET else "NOT met"
        print(f"  {title + (', polled every 10 ms' if polled else ', watched'):44} {min(paints):5.2f} "
              f"{statistics.median(paints):6.2f}   {min(shown):6.2f} {statistics.median(shown):6.2f}   "
              f"{' '.join(f'{v:.2f}' for v in shown):<16}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", help="write the pair under this directory once and keep it (moe/a, moe/b)")
    parser.add_argument("--seconds", type=float, default=120, help="the longest to probe each run")
    parser.add_argument("--baseline", help="also time the app of this source tree's tui/ in tmux (an older commit's)")
    args = parser.parse_args()
    compile_package()  # the start timed as any run after the first
    root = args.keep or tempfile.mkdtemp(prefix="weightscope-responsive-")
    cache = tempfile.mkdtemp(prefix="weightscope-responsive-cache-")
    from weightscope.paths import cache_dir

    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))  # the compiled loops keep their cache
    os.environ["XDG_CACHE_HOME"] = cache  # a private result cache, empty at first
    try:
        a, b = os.path.join(root, "moe", "a"), os.path.join(root, "moe", "b")
        if not os.path.isdir(b):
            print(f"writing the 96,200-tensor pair to {root}/moe ...", flush=True)
            write_moe_pair(os.path.join(root, "moe"))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "weightscope", "diff", "--no-cache", a, b],
                              stdout=subprocess.DEVNULL)
        cli = time.perf_counter() - start
        if done.returncode not in (0, 1):
            sys.exit(f"weightscope diff failed (exit {done.returncode})")
        print(f"{os.cpu_count()} cores; weightscope diff --no-cache: {cli:.2f} s")
        report("the app, empty result cache", in_fresh_process(a, b, args.seconds, False), cli)
        report("the app again, results from the cache", in_fresh_process(a, b, args.seconds, True), None)
        if shutil.which("tmux"):
            report_tmux(a, b, args.baseline)
        else:
            print("\n(tmux is not installed: the app in tmux is not timed)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
