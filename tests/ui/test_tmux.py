"""End to end: the real `weightscope` console script in a real terminal (tmux), keys in, screen out.

Each test starts its own tmux server on a private socket with a fixed 120×40 window and no
status line, runs `weightscope BASE FINETUNE` on the demo pair, and reads the screen with
`tmux capture-pane -p`, polling until what it waits for shows up or a deadline passes (the
failure message then holds the last screen). Nothing is skipped: CI installs tmux
(`.ci/run`), and a machine without it fails here with a message saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from weightscope.demo import write_demo

WIDTH, HEIGHT = 120, 40
POLL = 0.05  # seconds between two looks at the screen
STARTUP = 30.0  # a cold first run may compile the statistics loops; a warm one takes ~1 s
STEP = 15.0  # any single reaction to a key

TMUX_CONF = """\
set -g status off
set -g default-terminal tmux-256color
set -g escape-time 0
"""


def console_script() -> str:
    """The installed `weightscope` entry point, next to this interpreter when it is there."""
    beside = Path(sys.executable).with_name("weightscope")
    if beside.exists():
        return str(beside)
    found = shutil.which("weightscope")
    assert found, "the `weightscope` console script is not installed: run `pip install -e .`"
    return found


class Terminal:
    """One tmux server (private socket) holding one session that runs one command."""

    def __init__(self, conf: Path, env: dict[str, str]):
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.fail("tmux is not installed; this end-to-end test needs it "
                        "(`apt-get install -y tmux`, as .ci/run does)", pytrace=False)
        self.base = [tmux, "-L", f"weightscope-test-{uuid.uuid4().hex[:12]}", "-f", str(conf)]
        self.env = env
        self.screen = ""

    def tmux(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"tmux {' '.join(args)} failed: {done.stderr.strip()}"
        return done.stdout

    def start(self, *argv: str) -> None:
        """Run `argv` in a shell that prints its exit status when it ends (tmux 3.3 may leave an
        exited pane's process unreaped, and then has no status to report)."""
        wrapper = '"$@"; echo "[$(basename "$1") exited with status $?]"; exec sleep 3600'
        self.tmux("new-session", "-d", "-s", "app", "-x", str(WIDTH), "-y", str(HEIGHT),
                  "sh", "-c", wrapper, "sh", *argv)

    def kill(self) -> None:
        """Stop the server and remove its socket (tmux 3.3 leaves the socket file behind)."""
        found = subprocess.run([*self.base, "display-message", "-p", "#{socket_path}"], env=self.env,
                               capture_output=True, text=True, timeout=10)
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, timeout=10)
        if found.returncode == 0 and found.stdout.strip():
            Path(found.stdout.strip()).unlink(missing_ok=True)

    def capture(self) -> str:
        self.screen = self.tmux("capture-pane", "-p", "-t", "app")
        return self.screen

    def capture_styled(self) -> str:
        """The screen with its SGR escape sequences (colours, bold, ...)."""
        return self.tmux("capture-pane", "-p", "-e", "-t", "app")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "app", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "app", "-l", text)

    def exit_status(self, screen: str) -> int | None:
        """The status the wrapper printed once the command ended; None while it runs."""
        found = re.search(r"^\[\S+ exited with status (\d+)\]$", screen, re.M)
        return int(found.group(1)) if found else None

    def quit(self) -> int:
        """Press `q`; the exit status once the process has ended."""
        self.keys("q")
        screen = self.wait("exit after `q`", lambda s: self.exit_status(s) is not None, ended=True)
        return self.exit_status(screen)

    def wait(self, what: str, check, timeout: float = STEP, ended: bool = False) -> str:
        """Poll the screen until `check(screen)` holds; fail with the last screen after `timeout`,
        or at once if the command has ended (unless `ended` is what is awaited)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if check(screen):
                return screen
            if not ended and self.exit_status(screen) is not None:
                everything = self.tmux("capture-pane", "-p", "-S", "-", "-t", "app").rstrip()
                pytest.fail(f"weightscope exited while waiting for {what}; the terminal, scrollback "
                            f"included:\n{everything}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s; last screen:\n{screen}", pytrace=False)
            time.sleep(POLL)


def tree_lines(screen: str) -> list[str]:
    """The lines of the tree area: below the title bar, above the detail pane's top border."""
    lines = screen.splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("────")), len(lines))
    return lines[:end]


def tree(screen: str) -> str:
    return "\n".join(tree_lines(screen))


def detail_lines(screen: str) -> list[str]:
    lines = screen.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("────")), len(lines))
    return lines[start + 1:]


def on_both_sides(screen: str, text: str) -> bool:
    """Some tree line shows `text` in A's column and again in B's."""
    return any(line.count(text) >= 2 for line in tree_lines(screen))


def both_trees(screen: str) -> bool:
    return on_both_sides(screen, "lm_head") and on_both_sides(screen, "model")


def detail_title(screen: str) -> str:
    return next((line.strip() for line in detail_lines(screen) if line.strip()), "")


def shows_group(screen: str, path: str) -> bool:
    """The detail pane shows the group `path` (its title: badge, status words, path)."""
    return re.fullmatch(rf"\S+ [a-zA-Z ;]+ {re.escape(path)}", detail_title(screen)) is not None


def scan_done(screen: str) -> bool:
    """The pane shows `model`'s counts (every tensor but the head, whose shape the headers
    settle) and none is still unread. The cursor must be on `model`: it starts on `lm_head`."""
    if not shows_group(screen, "model") or "not read yet" in screen:
        return False
    # The counts must add up to the total: a screen captured while a frame is half written lacks rows.
    pane = "\n".join(detail_lines(screen))
    total = re.search(r"^ ([\d,]+) tensors, ", pane, re.M)
    counts = re.findall(r"^ \S\s+[a-zA-Z ;,]+?\s+([\d,]+)$", pane, re.M)
    return total is not None and sum(int(c.replace(",", "")) for c in counts) == int(total[1].replace(",", ""))


def help_box(screen: str) -> bool:
    """The help's rounded box is on screen (scrolled or not; nothing else draws one)."""
    return "╭─" in screen and "─╯" in screen


def footer(screen: str) -> str:
    lines = screen.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def to_model_when_scanned(terminal: "Terminal") -> str:
    """From the first line (`lm_head`, where the cursor starts) down to `model`; wait for the scan."""
    terminal.wait("the cursor on lm_head", lambda s: shows_group(s, "lm_head"))
    terminal.keys("Down")
    return terminal.wait("the finished scan", scan_done, STARTUP)


def hues(styled: str) -> set[str]:
    """The SGR colours in `styled` that are not a shade of grey, e.g. {'38;5;208'}."""
    found = set()
    for params in re.findall(r"\x1b\[([\d;]*)m", styled):
        codes = [int(c) if c else 0 for c in params.split(";")]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
                n = codes[i + 2]
                cube = n - 16
                grey = n in (0, 7, 8, 15) or n >= 232 or (
                    16 <= n <= 231 and cube // 36 == cube // 6 % 6 == cube % 6)
                if not grey:
                    found.add(f"{code};5;{n}")
                i += 3
            elif code in (38, 48) and i + 4 < len(codes) and codes[i + 1] == 2:
                if len(set(codes[i + 2:i + 5])) > 1:
                    found.add(";".join(map(str, codes[i:i + 5])))
                i += 5
            else:
                if 31 <= code <= 36 or 41 <= code <= 46 or 91 <= code <= 96 or 101 <= code <= 106:
                    found.add(str(code))
                i += 1
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[str, str]:
    return write_demo(root=tmp_path_factory.mktemp("demo"))


@pytest.fixture
def terminal(tmp_path):
    """A tmux server of its own; the app's cache goes to tmp_path, the compiled loops' cache is kept."""
    conf = tmp_path / "tmux.conf"
    conf.write_text(TMUX_CONF)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE", "NO_COLOR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.setdefault("LANG", "C.UTF-8")
    term = Terminal(conf, env)
    try:
        yield term
    finally:
        term.kill()


def test_browse_filter_help_quit(terminal, demo):
    """Both trees appear, the footer ends with Help and Quit; `n` reaches a changed tensor and its
    figures; `/` filters; `?` helps (and scrolls); `q` quits."""
    terminal.start(console_script(), *demo)
    screen = terminal.wait("two trees", both_trees, STARTUP)
    assert "40 | 39 tensors" in screen.splitlines()[0]
    terminal.wait("a footer that ends with Help and Quit",  # drawn a moment after the trees, at times
                  lambda s: all(key in footer(s) for key in ("n Next diff", "/ Filter", "? Help", "q Quit")))
    to_model_when_scanned(terminal)

    # From `model`, `n` steps through what differs inside it (a tensor only A has, a norm within
    # tolerance, ...) until a tensor that changed; each press moves the cursor somewhere new.
    title = detail_title(terminal.screen)
    for _ in range(10):
        terminal.keys("n")
        screen = terminal.wait("the next differing tensor", lambda s, before=title: detail_title(s) != before)
        title = detail_title(screen)
        if title.startswith("≠ changed"):
            break
    else:
        pytest.fail(f"`n` never reached a changed tensor; last screen:\n{terminal.screen}", pytrace=False)
    name = re.fullmatch(r"≠ changed\s+(\S+)", title)
    assert name, title
    name = name.group(1)
    assert name.startswith("model.layers.") and name.endswith(".weight"), name
    parent = name.split(".")[-2]
    assert on_both_sides(screen, parent), f"{parent} not on both sides:\n{screen}"
    lines = tree_lines(screen)
    at = next(i for i, line in enumerate(lines) if line.count(parent) >= 2)
    leaf = lines[at + 1]  # the tensor under its module, on both sides, with the changed badge
    assert leaf.count("weight  bf16") == 2 and " ≠ " in leaf, f"{leaf}\n{screen}"

    screen = terminal.wait("the verdict", lambda s: re.search(r"mismatched [\d,]+ / \S+ \(", s) is not None)
    detail = "\n".join(detail_lines(screen))
    assert re.search(r"^ A\s+bfloat16 \[\d+, \d+\]", detail, re.M), detail
    assert re.search(r"^ B\s+bfloat16 \[\d+, \d+\]", detail, re.M), detail
    for row in ("min", "max", "std", "L2 norm", "Δ = B − A", "rel L2", "cosine"):
        assert row in detail, f"{row!r} missing from the detail pane:\n{detail}"
    assert "mismatched 0 /" not in detail, detail

    # `/` opens the filter box; what is typed there must not reach the tree's keys.
    terminal.keys("/")
    terminal.wait("the filter box", lambda s: "filter: substring" in s)
    terminal.type("layers.3.mlp")
    terminal.keys("Enter")

    def filtered(s: str) -> bool:
        return "lm_head" not in tree(s) and all(on_both_sides(s, p) for p in ("gate_proj", "up_proj", "down_proj"))

    screen = terminal.wait("the filtered tree", filtered)
    for gone in ("embed_tokens", "self_attn", "input_layernorm", "post_attention_layernorm"):
        assert gone not in tree(screen), f"{gone} survived the filter:\n{screen}"
    assert sum(line.count("weight  bf16") == 2 for line in tree_lines(screen)) == 3, screen

    terminal.keys("?")
    # A screen can be captured while a frame is half written: wait for every line expected.
    expected = ("weightscope — keys", "next / previous tensor that differs", "a substring, or a glob", "quit",
                "changed within tolerance")
    terminal.wait("the help screen, keys and badges", lambda s: all(text in s for text in expected))
    terminal.keys("End")  # the last badges lie below the fold of a 40-line terminal: the help scrolls
    terminal.wait("the end of the help", lambda s: help_box(s) and "NaN or Inf" in s and "weightscope — keys" not in s)

    terminal.keys("Escape")  # closes the help; the filter stays
    screen = terminal.wait("the help to close", lambda s: not help_box(s))
    assert filtered(screen), screen
    terminal.keys("Escape")  # clears the filter
    terminal.wait("the whole tree again",
                  lambda s: both_trees(s) and not on_both_sides(s, "gate_proj") and "layers.3.mlp" not in tree(s))

    assert terminal.quit() == 0, f"weightscope did not exit cleanly after `q`:\n{terminal.screen}"


def test_no_color_keeps_the_badges(terminal, demo):
    """With NO_COLOR=1 the screen holds no colour, and every status still reads: badges are symbols."""
    terminal.env["NO_COLOR"] = "1"
    terminal.start(console_script(), *demo)
    terminal.wait("two trees", both_trees, STARTUP)
    screen = terminal.wait("lm_head in the pane", lambda s: shows_group(s, "lm_head"))
    head_counts = "\n".join(detail_lines(screen))  # lm_head: the one tensor whose shape changed
    assert re.search(r"^ ⇔\s+shape changed\s+1$", head_counts, re.M), head_counts
    screen = to_model_when_scanned(terminal)
    lines = tree_lines(screen)
    head = next(line for line in lines if "lm_head" in line)
    model = next(line for line in lines if "model" in line)
    assert re.search(r"lm_head\s+⇔ ", head), head  # the resized vocabulary
    assert re.search(r"model\s+◀! ", model), model  # a tensor only in A, and NaN flagged beside it
    counts = "\n".join(detail_lines(screen))  # model: every other tensor
    for symbol, words in (("=", "identical"), ("~", "changed within tolerance"), ("≠", "changed"),
                          ("◀", "only in A"), ("!", "NaN or Inf")):
        assert re.search(rf"^ {re.escape(symbol)}\s+{words}\s+\d", counts, re.M), f"{symbol} {words}:\n{counts}"
    assert not hues(terminal.capture_styled()), "colours on screen despite NO_COLOR"
    assert terminal.quit() == 0, f"weightscope did not exit cleanly after `q`:\n{terminal.screen}"


def sparse_safetensors(path: Path, tensors: int, rows: int, columns: int) -> Path:
    """A safetensors file of `tensors` bf16 matrices, all zeros, as a sparse file: gigabytes to
    scan that take no room on disk."""
    header, at = {}, 0
    for i in range(tensors):
        size = 2 * rows * columns
        header[f"model.layers.{i}.mlp.up_proj.weight"] = {"dtype": "BF16", "shape": [rows, columns],
                                                         "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + at)
    return path


def test_export_during_a_scan_says_it_is_partial(terminal, tmp_path):
    """`e` while the scan runs writes files that say they are partial, and the app says so too."""
    a = sparse_safetensors(tmp_path / "a.safetensors", 16, 32768, 16384)  # 16 GiB of zeros a side
    b = sparse_safetensors(tmp_path / "b.safetensors", 16, 32768, 16384)
    out = tmp_path / "out"
    out.mkdir()
    terminal.start("sh", "-c", f'cd "{out}" && exec "$0" "$1" "$2"', console_script(), str(a), str(b))
    terminal.wait("the tree", lambda s: "▶ model" in s or "▼ model" in s, STARTUP)
    terminal.keys("e")
    terminal.wait("the export's notice", lambda s: "partial:" in s and "the files say so" in s)
    md = next(out.glob("weightscope-*.md")).read_text()
    assert re.search(r"\*\*partial: \d+ of 16 tensors read\*\*", md), md
    document = json.loads(next(out.glob("weightscope-*.json")).read_text())
    assert document["complete"] is False and 0 < document["not_read"] <= 16
    assert terminal.quit() == 0, f"weightscope did not exit cleanly after `q`:\n{terminal.screen}"


def test_a_runs_pair_opens_the_pair_app_and_comes_back(terminal, tmp_path):
    """In the app on a run, `p` hands the terminal to the pair app on the two checkpoints chosen
    with `{ }` and `[ ]`, its cursor on the tensor selected; `q` there comes back to the run."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    base = {"attn.weight": torch.randn(32, 32, generator=gen), "norm.weight": torch.ones(32)}
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    for k, step in enumerate((100, 200, 300), 1):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"attn.weight": base["attn.weight"] * (1 + 0.01 * k), "norm.weight": base["norm.weight"]},
                  str(tmp_path / "run" / f"checkpoint-{step}" / "model.safetensors"))
    terminal.start("sh", "-c", f'cd "{tmp_path}" && exec "$0" base run', console_script())
    terminal.wait("the run's tree", lambda s: "run: 4 checkpoints" in s and "▶ attn" in s, STARTUP)
    terminal.keys("Right", "Down")  # the cursor starts on attn: opened, its weight
    terminal.wait("attn.weight in the pane", lambda s: "attn.weight  (tensor)" in s)
    terminal.keys("[", "}")  # the pair: checkpoint-100 -> checkpoint-200
    terminal.wait("the pair chosen", lambda s: "pair (p): 100 → 200" in s)
    terminal.keys("p")
    screen = terminal.wait("the pair app at attn.weight",
                           lambda s: s.startswith("A run/checkpoint-100") and "≠ changed  attn.weight" in s, STARTUP)
    assert "B run/checkpoint-200" in screen.splitlines()[0] or "B run/checkpoint-" in screen, screen
    assert re.search(r"rel L2\s+0\.99%", screen), screen  # 1.02 / 1.01 − 1
    terminal.keys("q")
    terminal.wait("the run app again", lambda s: s.startswith("run: 4 checkpoints") and "pair (p): 100 → 200" in s)
    assert terminal.quit() == 0, f"weightscope did not exit cleanly after `q`:\n{terminal.screen}"
