"""How quickly the terminal app answers on a 7B-sized pair: issue 4's "Done when", as figures.

Writes two Llama-2-7B-shaped checkpoints as sparse files with `bench/list_names.py`'s writer
(291 bf16 tensors, 2 shards + `model.safetensors.index.json` each, ~13.5 GB apparent, nothing
but headers on disk). The data is all zeros, so B differs from A by headers alone: its
vocabulary is resized (`model.embed_tokens.weight` and `lm_head.weight` are 32064×4096), which
gives both trees a `shape changed` badge to show. Then, in a private tmux server at 120×40
(no status line), it runs the real console script, `weightscope A B`, and measures by
polling `tmux capture-pane` every 10 ms:

(a) trees: from pressing Enter on the command line until both trees are on screen
    (target < 1 s); the first paint (the title bar) is printed beside it;
(b) detail: `/` filters to `model.layers.0.self_attn.q_proj.weight`, the cursor walks down to
    the module above the leaf, then from the Down key that highlights the 4096×4096 bf16 leaf
    until the detail pane shows its figures, i.e. the verdict line (target < 0.3 s). That key
    is a lone press, 0.1 s after the last (the app starts a lone move's work at once); the
    time until the pane's title names the leaf (before any figure) is printed beside it.
    This comes a second after start, while the compiled statistics loops may still be
    loading; (b2) repeats it for layer 31's q_proj once they are;
(c) held Down: `/` filters to `layers.` (every layer expanded), the cursor rests on a line,
    then 50 Down keys go out, one `tmux send-keys` call each with no wait, and the clock runs
    until the screen has settled on the line 50 below (a 4096x4096 leaf) with its figures in
    the detail pane. It prints how long sending took, the time to settle after the last key
    and whether every key was applied (the cursor ended on that line). Keys this fast (several
    hundred a second, far above any key repeat) queue up: the settle time includes drawing
    the lines they pass, so it is printed without a target;
(c2) the same 50 keys from there at a slow key repeat, one every 60 ms: longer than the app
    rests on a line before starting its detail work, so every tensor passed starts work that
    must be cancelled (target < 0.3 s to settle, as for (b)). Before each key it reads how many of the keys sent so far the screen
    has not shown yet (input blocked on the UI thread shows up here), then times, after the
    last key, the cursor reaching its line and the figures filling in.

The background scan (27 GB of zeros to read) is running throughout, as it would be for a
user; each run starts the app afresh with an empty result cache (the compiled statistics
loops keep their cache). Each measurement runs 3 times; best and median are printed with the
targets and the machine's core count.

Run from the repository root, after `pip install -e .` (needs tmux):

    python3 bench/tui_latency.py [--keep DIR]

With --keep the checkpoints are written under DIR and kept; otherwise they go to a temporary
directory that is removed afterwards, as are the tmux servers. Exits 1 when a target is
missed or a measurement fails, else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compile_package  # noqa: E402
from list_names import GB, disk_usage, llama2_7b, write_checkpoint  # noqa: E402

RUNS = 3
WIDTH, HEIGHT = 120, 40
POLL = 0.01  # seconds between two looks at the screen
TIMEOUT = 60.0  # give up on one wait after this long
STEPS = 50
REST = 0.1  # (b): the cursor rests this long before the key that selects the leaf, as a person's would
PACE = 0.06  # (c2): a slow key repeat, longer than the app's 50 ms rest before detail work starts
TARGET_TREES, TARGET_DETAIL = 1.0, 0.3
DETAIL_PATTERN = "model.layers.0.self_attn.q_proj.weight"
WARM_PATTERN = "model.layers.31.self_attn.q_proj.weight"  # (b2): the same, once the app has run a while
HELD_PATTERN = "layers."
NEW_VOCAB = 32064  # B's resized embedding and head
TMUX_CONF = "set -g status off\nset -g default-terminal tmux-256color\nset -g escape-time 0\n"
EXITED = "[weightscope exited with status"
VERDICT = re.compile(r"mismatched [\d,]+ / ")


class Failed(Exception):
    """A wait ran out; carries the last screen."""


def natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def tree_order(names: list[str]) -> list[tuple[str, bool]]:
    """The lines of a fully expanded name tree: (dotted path, is a tensor), in natural order."""
    root: dict = {}
    for name in names:
        node = root
        for part in name.split("."):
            node = node.setdefault(part, {})
    lines: list[tuple[str, bool]] = []

    def walk(node: dict, prefix: str) -> None:
        for part in sorted(node, key=natural_key):
            path = f"{prefix}.{part}" if prefix else part
            lines.append((path, not node[part]))
            walk(node[part], path)

    walk(root, "")
    return lines


def console_script() -> str:
    beside = Path(sys.executable).with_name("weightscope")
    found = str(beside) if beside.exists() else shutil.which("weightscope")
    if not found:
        sys.exit("the `weightscope` console script is not installed: run `pip install -e .`")
    return found


class Terminal:
    """A private tmux server with one 120×40 session."""

    def __init__(self, conf: str, env: dict[str, str]):
        self.base = ["tmux", "-L", f"weightscope-bench-{uuid.uuid4().hex[:12]}", "-f", conf]
        self.env = env
        self.screen = ""

    def tmux(self, *args: str, check: bool = True) -> str:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=10)
        if check and done.returncode != 0:
            raise Failed(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "app", *keys)

    def capture(self) -> str:
        self.screen = self.tmux("capture-pane", "-p", "-t", "app")
        return self.screen

    def wait(self, what: str, check, timeout: float = TIMEOUT) -> float:
        """Poll until `check(screen)` holds; returns the time.monotonic() of that capture's start."""
        deadline = time.monotonic() + timeout
        while True:
            at = time.monotonic()
            if check(self.capture()):
                return at
            if EXITED in self.screen:
                raise Failed(f"weightscope exited while waiting for {what}; screen:\n{self.screen}")
            if at > deadline:
                raise Failed(f"no {what} within {timeout:.0f} s; last screen:\n{self.screen}")
            time.sleep(POLL)

    def kill(self) -> None:
        """Stop the server and remove its socket (tmux 3.3 leaves the socket file behind)."""
        found = subprocess.run([*self.base, "display-message", "-p", "#{socket_path}"], env=self.env,
                               capture_output=True, text=True, timeout=10)
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, timeout=10)
        if found.returncode == 0 and found.stdout.strip():
            Path(found.stdout.strip()).unlink(missing_ok=True)


def tree_lines(screen: str) -> list[str]:
    lines = screen.splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("────")), len(lines))
    return lines[:end]


def detail_title(screen: str) -> str:
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("────")), len(lines))
    return next((line.strip() for line in lines[start + 1:] if line.strip()), "")


def titled(path: str):
    """The detail pane's title names exactly `path` (after the badge and the status words)."""
    return lambda screen: detail_title(screen).endswith(f"  {path}")


GROUP_COUNT = re.compile(r"\d tensors?, ")  # a group's figures: "1 tensor, 45.1M parameters"


def filled(path: str):
    """The detail pane shows `path` with its figures: the verdict for a tensor, the counts for a group."""
    def check(screen: str) -> bool:
        if not titled(path)(screen):
            return False
        return VERDICT.search(screen) is not None or GROUP_COUNT.search(screen) is not None
    return check


def both_trees(screen: str) -> bool:
    return all(any(line.count(part) >= 2 for line in tree_lines(screen)) for part in ("lm_head", "model"))


def scanning(screen: str) -> bool:
    """The title bar's progress bar is up (the background scan is still running)."""
    first = screen.splitlines()[0] if screen else ""
    return first.rstrip().endswith("%")


def apply_filter(term: Terminal, pattern: str, first_line: str) -> None:
    """`/`, type the pattern, Enter; wait until the filtered tree starts with `first_line` alone."""
    term.keys("/")
    term.wait("the filter box", lambda s: "filter: substring" in s)
    term.tmux("send-keys", "-t", "app", "-l", pattern)
    term.keys("Enter")
    # The footer lists the tree's keys again once Enter has handed the focus back to the tree.
    term.wait(f"the tree filtered to {pattern!r}, focused",
              lambda s: "lm_head" not in "\n".join(tree_lines(s)) and first_line in s
              and "Next diff" in s.splitlines()[-1])


def walk_to(term: Terminal, lines: list[tuple[str, bool]], start: int, target: int) -> None:
    """Move the cursor from line `start` to line `target` one key at a time, waiting on each."""
    for line in range(start + 1, target + 1):
        term.keys("Down")
        term.wait(f"the cursor on {lines[line][0]}", titled(lines[line][0]))


def select_leaf(term: Terminal, pattern: str) -> tuple[str, float]:
    """Filter to the one tensor `pattern`, walk the cursor to the module above it, rest, then
    press Down onto it; returns its path and the time.monotonic() of that key."""
    lines = tree_order([pattern])
    apply_filter(term, pattern, "model")
    term.keys("Down")  # a filter leaves the cursor on line 0, not always announced: step off it
    term.wait("the cursor on line 1", titled(lines[1][0]))
    walk_to(term, lines, 1, len(lines) - 2)
    time.sleep(REST)
    start = time.monotonic()
    term.keys("Down")
    return lines[-1][0], start


def clear_filter(term: Terminal) -> None:
    term.keys("Escape")
    term.wait("the whole tree", lambda s: both_trees(s) and "filter: substring" not in s)


def one_run(script: str, a: str, b: str, env: dict[str, str], conf: str, held_lines: list[tuple[str, bool]],
            held: tuple[int, int], paced: tuple[int, int]) -> dict[str, float | bool | str]:
    term = Terminal(conf, env)
    figures: dict[str, float | bool | str] = {}
    try:
        term.tmux("new-session", "-d", "-s", "app", "-x", str(WIDTH), "-y", str(HEIGHT),
                  "sh", "-c", 'read _; "$@"; echo "[weightscope exited with status $?]"; exec sleep 3600',
                  "sh", script, a, b)
        term.wait("the shell", lambda s: True)
        start = time.monotonic()
        term.keys("Enter")  # the command starts now
        painted = term.wait("the first paint", lambda s: s.startswith("A "))
        trees = term.wait("both trees", both_trees)
        figures["paint"] = painted - start
        figures["trees"] = trees - start

        # (b) one 4096×4096 pair, selected by a lone key press.
        leaf, start = select_leaf(term, DETAIL_PATTERN)
        figures["detail title"] = term.wait("the leaf's title", titled(leaf), 10) - start
        figures["detail"] = term.wait("the leaf's figures", filled(leaf)) - start

        # (b2) the same for another 4096x4096 leaf, now that the compiled loops are loaded.
        clear_filter(term)
        leaf, start = select_leaf(term, WARM_PATTERN)
        figures["warm detail"] = term.wait("the leaf's figures", filled(leaf)) - start

        # (c) 50 Down keys in a row from a tensor, landing on another tensor.
        clear_filter(term)
        apply_filter(term, HELD_PATTERN, "model")
        first, last = held
        term.keys("Down")
        term.wait("the cursor on line 1", titled(held_lines[1][0]))
        walk_to(term, held_lines, 1, first)
        term.wait("the first line's figures", filled(held_lines[first][0]))
        figures["scan running (c)"] = scanning(term.screen)
        start = time.monotonic()
        for _ in range(STEPS):
            term.keys("Down")
        sent = time.monotonic()
        target = held_lines[last][0]
        try:
            settled = term.wait(f"the cursor on {target}", filled(target), 20)
            figures["held applied"] = True
        except Failed:
            figures["held applied"] = False
            settled = time.monotonic()
            figures["held landed on"] = detail_title(term.screen)
        figures["held send"] = sent - start
        figures["held settle"] = settled - sent
        figures["held total"] = settled - start

        # (c2) the same from there, one key every PACE seconds: each tensor passed is rested
        # on longer than the app's detail delay, so its work starts and must be cancelled.
        figures["paced applied"] = False
        if figures["held applied"]:
            first, last = paced
            walk_to(term, held_lines, held[1], first)
            term.wait("the first line's figures", filled(held_lines[first][0]))
            where = {path: line for line, (path, _) in enumerate(held_lines)}
            target = held_lines[last][0]
            behind = []
            start = time.monotonic()
            for k in range(1, STEPS + 1):
                time.sleep(max(0.0, start + (k - 1) * PACE - time.monotonic()))
                if k > 1:  # how many of the keys sent so far the screen has not shown yet
                    shown = where.get(detail_title(term.capture()).split("  ")[-1], first)
                    behind.append(first + k - 1 - shown)
                term.keys("Down")
            sent = time.monotonic()
            try:
                caught = term.wait(f"the cursor on {target}", titled(target), 20)
                settled = term.wait(f"the figures of {target}", filled(target), 20)
                figures["paced applied"] = True
            except Failed:
                caught = settled = time.monotonic()
                figures["paced landed on"] = detail_title(term.screen)
            figures["paced behind"] = max(behind)
            figures["paced caught up"] = caught - sent
            figures["paced settle"] = settled - sent
        figures["scan running (end)"] = scanning(term.screen)

        term.keys("q")
        term.wait("the app to quit", lambda s: EXITED in s)
        if f"{EXITED} 0]" not in term.screen:
            raise Failed(f"weightscope did not exit cleanly after `q`; screen:\n{term.screen}")
    finally:
        term.kill()
    return figures


def held_span(lines: list[tuple[str, bool]], sizes: dict[str, tuple[int, ...]], after: int = 0) -> tuple[int, int]:
    """The first line from `after` whose line STEPS below is a 4096x4096 tensor: real work for
    the last key, the size (b) times, so the same target applies."""
    for i in range(after, len(lines)):
        j = i + STEPS
        if j < len(lines) and lines[j][1] and sizes[lines[j][0]] == (4096, 4096):
            return i, j
    raise SystemExit("no line pair fits the held-Down walk")


def row(label: str, values: list[float], target: float | None) -> tuple[str, bool]:
    best, median = min(values), statistics.median(values)
    runs = " ".join(f"{v:6.3f}" for v in values)
    met = target is None or median < target
    goal = f"< {target:g} s" if target is not None else "—"
    verdict = "" if target is None else ("yes" if met else "NO")
    return f"{label:<50} {best:7.3f} {median:7.3f}   {runs}   {goal:>8}  {verdict}", met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the checkpoints under this directory and keep them")
    args = parser.parse_args()
    compile_package()  # the start timed as any run after the first
    if shutil.which("tmux") is None:
        sys.exit("tmux is not installed (apt-get install -y tmux)")
    script = console_script()

    layout_a = llama2_7b()
    layout_b = [(name, (NEW_VOCAB, shape[1]) if name in ("model.embed_tokens.weight", "lm_head.weight") else shape)
                for name, shape in layout_a]
    sizes = dict(layout_a)
    held_lines = tree_order([name for name, _ in layout_a if HELD_PATTERN.lower() in name.lower()])
    held = held_span(held_lines, sizes)
    paced = held_span(held_lines, sizes, after=held[1])

    numba_cache = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "weightscope", "numba")
    with tempfile.TemporaryDirectory(prefix="weightscope-tui-bench-") as tmp:
        root = args.keep or tmp
        a, b = os.path.join(root, "llama-2-7b-a"), os.path.join(root, "llama-2-7b-b")
        write_checkpoint(a, layout_a, 10 * GB)
        write_checkpoint(b, layout_b, 10 * GB)
        conf = os.path.join(tmp, "tmux.conf")
        Path(conf).write_text(TMUX_CONF)
        runs = []
        load = os.getloadavg()
        for i in range(RUNS):
            env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE", "NO_COLOR")}
            env["XDG_CACHE_HOME"] = os.path.join(tmp, f"cache-{i}")  # no scan results from an earlier run
            env["NUMBA_CACHE_DIR"] = numba_cache
            env.setdefault("LANG", "C.UTF-8")
            try:
                runs.append(one_run(script, a, b, env, conf, held_lines, held, paced))
            except Failed as exc:
                print(f"run {i + 1} failed: {exc}", file=sys.stderr)
                return 1
        apparent, allocated = disk_usage(a)

    print(f"weightscope A B in tmux {WIDTH}x{HEIGHT}, two Llama-2-7B-shaped sharded checkpoints "
          f"(291 bf16 tensors, 2 shards + index, {apparent / GB:.1f} GB apparent, "
          f"{allocated / 2**20:.1f} MiB on disk, each)")
    print(f"cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}); load average before "
          f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}; {RUNS} runs, each a fresh process with an empty "
          f"result cache; screen polled every {POLL * 1000:.0f} ms\n")
    print(f"{'seconds':<50} {'best':>7} {'median':>7}   {'runs':<20}   {'target':>8}  ok")
    ok = True
    paced_runs = [r for r in runs if "paced settle" in r]
    lines = [
        ("(a) first paint (title bar)", "paint", None, runs),
        ("(a) both trees visible", "trees", TARGET_TREES, runs),
        ("(b) 4096x4096 bf16 leaf: title shown", "detail title", None, runs),
        ("(b) 4096x4096 bf16 leaf: figures shown", "detail", TARGET_DETAIL, runs),
        ("(b2) another, the compiled loops loaded: figures", "warm detail", TARGET_DETAIL, runs),
        (f"(c) {STEPS} Down keys: sending them", "held send", None, runs),
        ("(c) settled with figures, after the last key", "held settle", None, runs),
        ("(c) settled with figures, after the first key", "held total", None, runs),
        (f"(c2) keys {PACE * 1000:.0f} ms apart: on the line, after the last", "paced caught up", None, paced_runs),
        ("(c2) settled with figures, after the last key", "paced settle", TARGET_DETAIL, paced_runs),
    ]
    for label, key, target, among in lines:
        if among:
            text, met = row(label, [r[key] for r in among], target)
            ok &= met
            print(text)
    for tag, key, span in (("c", "held", held), ("c2", "paced", paced)):
        applied = sum(bool(r[f"{key} applied"]) for r in runs)
        ok &= applied == RUNS
        first, last = span
        shape = "x".join(map(str, sizes[held_lines[last][0]]))
        print(f"\n({tag}) from {held_lines[first][0]} to {held_lines[last][0]} ({shape}), filter {HELD_PATTERN!r}: "
              f"the cursor ended on the right line in {applied}/{RUNS} runs"
              + "".join(f"; run {i + 1} ended on {r[key + ' landed on']!r}"
                        for i, r in enumerate(runs) if f"{key} landed on" in r), end="")
    print("\n(c2) most keys the screen was behind, looked at before each key: "
          + ", ".join(str(r["paced behind"]) for r in paced_runs) + " (per run; 0 = it kept up)")
    for key in ("scan running (c)", "scan running (end)"):
        print(f"background scan's progress bar still up at {key[14:-1]}: {sum(bool(r[key]) for r in runs)}/{RUNS} runs")
    print("ok is judged on the median")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
