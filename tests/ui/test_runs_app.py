"""The app on a training run: runs written with safetensors' own writer in checkpoint-<n>
directories, driven with Pilot. Sparklines, the detail pane's figures and plots, the layers ×
steps heatmap, `[`/`]` and `--watch` are checked against `RunTable` and against float64
figures of the saved tensors."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
from rich.style import Style
from safetensors.torch import save_file

from weightscope.engine import protocol as msg
from weightscope.sources.runs import plan_run
from weightscope.ui.run_app import RunApp
from weightscope.ui.widgets.run_tree import BARS, RunTree

from .helpers import screen_text, wait_for

SIZE = (120, 40)
SMALL = (80, 24)
LAYERS = 3
STEPS = (100, 200, 300, 400, 500)


def scale_of(name: str, k: int) -> float:
    """Step k's weights are the reference's times this: layer l drifts (l + 1)·k %; the norm never moves."""
    if "norm" in name:
        return 1.0
    layer = int(name.split(".")[2]) if ".layers." in name else 0
    return 1 + 0.01 * k * (layer + 1)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """base/ and run/checkpoint-100 … 500, as relative paths from tmp_path."""
    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(0)
    base = {f"model.layers.{l}.mlp.{m}.weight": torch.randn(16, 16, generator=gen)
            for l in range(LAYERS) for m in ("up_proj", "down_proj")}
    base["model.embed_tokens.weight"] = torch.randn(32, 16, generator=gen)
    base["model.norm.weight"] = torch.ones(16)
    os.makedirs("base")
    save_file(base, "base/model.safetensors")
    saved = {}
    for k, step in enumerate(STEPS, 1):
        saved[step] = {n: (t * scale_of(n, k)).contiguous() for n, t in base.items()}
        write_step(f"run/checkpoint-{step}", saved[step])
    return base, saved


def write_step(directory: str, weights: dict) -> None:
    os.makedirs(directory)
    save_file(weights, os.path.join(directory, "model.safetensors"))


def drift64(base: dict, steps: list[dict], names: list[str]) -> list[float]:
    """The drift of these tensors together at each step, in float64."""
    out = []
    for sd in steps:
        dd = sum(float(((sd[n].double() - base[n].double()) ** 2).sum()) for n in names)
        rr = sum(float((base[n].double() ** 2).sum()) for n in names)
        out.append(math.sqrt(dd / rr))
    return out


def open_run(paths: list[str], watch: float | None = None) -> RunApp:
    return RunApp(msg.RunJob(plan_run(paths), use_cache=True), paths=paths, watch=watch)


async def scanned(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.scan_done and pilot.app.ready)
    await pilot.pause(0.2)


def line_text(tree: RunTree, line: int) -> str:
    return tree.render_label(tree.get_node_at_line(line), Style(), Style()).plain


def node_at(app: RunApp, path: str) -> int:
    return next(node for node in range(len(app.names)) if app.names.path(node) == path)


async def test_title_tree_and_sparklines(run_dir):
    base, saved = run_dir
    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        text = screen_text(app)
        assert "run: 6 checkpoints, reference base" in text
        tree = app.query_one(RunTree)
        tree.reveal(node_at(app, "model.layers.2.mlp.up_proj.weight"))
        await pilot.pause()
        lines = [line_text(tree, k) for k in range(tree.last_line + 1)]
        by_path = {app.names.path(tree.get_node_at_line(k).data) or "all tensors": lines[k]
                   for k in range(len(lines))}
        scale = tree.figures.scale
        # The shared scale runs from the smallest tensor drift (layer 0 and embed at step 100: 1%)
        # to the largest (layer 2 at step 500: 15%).
        assert math.isclose(scale.low, 0.01, rel_tol=1e-4) and math.isclose(scale.high, 0.15, rel_tol=1e-4)
        steps = [saved[s] for s in STEPS]
        for path, names in (("model.layers.2.mlp.up_proj.weight", ["model.layers.2.mlp.up_proj.weight"]),
                            ("model.layers", [n for n in base if ".layers." in n]),
                            ("all tensors", list(base))):
            want = "".join(scale.bar(v) for v in drift64(base, steps, names))
            assert want in by_path[path], (path, want, by_path[path])
        # Layer 2 ends at the top of the scale; the norm never moved: "=" at every step.
        assert BARS[-1] * 1 in by_path["model.layers.2.mlp.up_proj.weight"]
        tree.reveal(node_at(app, "model.norm.weight"))
        await pilot.pause()
        norm_line = line_text(tree, tree.cursor_line)
        assert "=====" in norm_line and norm_line.rstrip().endswith("0%")
        assert "nan" not in text.lower()


async def test_pending_steps_look_pending(run_dir):
    from textual.message import Message  # noqa: F401

    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        from weightscope.ui.run_app import FromRunEngine

        held = []
        post = app.post_message

        def holding(message) -> bool:  # results held back: the scan has not got there
            if isinstance(message, FromRunEngine) and isinstance(message.message, (msg.RunResults, msg.RunDone)):
                held.append(message)
                return True
            return post(message)

        app.post_message = holding
        await wait_for(pilot, lambda: app.ready)
        await pilot.pause(0.3)
        tree = app.query_one(RunTree)
        assert "·····" in line_text(tree, 0) and line_text(tree, 0).rstrip().endswith("…")
        assert "5 steps pending" in screen_text(app)
        app.post_message = post
        for message in held:
            post(message)
        await scanned(pilot)
        assert "·" not in line_text(tree, 1).split("model")[-1]


async def test_detail_plots_and_figures_equal_the_table(run_dir):
    base, saved = run_dir
    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        name = "model.layers.1.mlp.down_proj.weight"
        app.query_one(RunTree).reveal(node_at(app, name))
        i = app.catalog.names.index(name)
        # The plots come once their module is loaded and the pane rests (`run_detail.PLOT_REST`)
        await wait_for(pilot, lambda: bool(app.query("#plot-update"))
                       and app.query_one("#plot-update").series[1] == app.table.update()[i].tolist())
        from weightscope.ui.widgets.step_plot import StepPlot

        drift_plot, update_plot = app.query_one("#plot-drift", StepPlot), app.query_one("#plot-update", StepPlot)
        assert drift_plot.series[0] == [float(s) for s in STEPS]
        assert drift_plot.series[1] == app.table.drift()[i].tolist()
        assert update_plot.series[1] == app.table.update()[i].tolist()
        want = drift64(base, [saved[s] for s in STEPS], [name])
        assert np.allclose(drift_plot.series[1], want, rtol=1e-9)
        figures = screen_text(app)
        assert re.search(rf"drift +{100 * want[-1]:.0f}% ", figures)  # 10% at the last step, the one selected
        await pilot.press("L")
        await wait_for(pilot, lambda: drift_plot.drawn[2] is True)  # log scale
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert app.selected == 2
        assert re.search(r"step +300 ", screen_text(app))
        assert re.search(rf"drift +{100 * want[2]:.2g}% ", screen_text(app))
        # A group: its figures add up its tensors' sums.
        app.query_one(RunTree).reveal(node_at(app, "model.layers.1"))
        layer = [n for n in base if n.startswith("model.layers.1.")]
        want = drift64(base, [saved[s] for s in STEPS], layer)
        await wait_for(pilot, lambda: len(drift_plot.series[1]) == len(want)
                       and np.allclose(drift_plot.series[1], want, rtol=1e-9))


async def test_the_pair_is_chosen_with_braces_and_brackets(run_dir):
    """`{ }` move the pair's first checkpoint (the reference at first), `[ ]` its second (the
    step shown), the first always before the second; `p` hands the terminal to the pair app on
    them at the selected tensor, and where there is no terminal to hand over, says the command."""
    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        name = "model.layers.1.mlp.up_proj.weight"
        app.query_one(RunTree).reveal(node_at(app, name))
        await pilot.pause(0.2)
        assert app.pair_paths() == ("base", os.path.join("run", "checkpoint-500"))
        assert "pair (p): reference → 500" in screen_text(app)
        await pilot.press("right_curly_bracket", "right_curly_bracket")
        assert app.pair_paths() == (os.path.join("run", "checkpoint-200"), os.path.join("run", "checkpoint-500"))
        assert "pair (p): 200 → 500" in screen_text(app)
        # The second moved before the first: the first comes along, still the one before it.
        await pilot.press(*["left_square_bracket"] * 4)
        assert app.pair_paths() == ("base", os.path.join("run", "checkpoint-100"))
        await pilot.press("right_square_bracket", "right_square_bracket", *["right_curly_bracket"] * 3)
        assert app.pair_paths() == (os.path.join("run", "checkpoint-200"), os.path.join("run", "checkpoint-300"))
        assert "pair (p): 200 → 300" in screen_text(app)
        await pilot.press("p")  # Pilot's terminal is no terminal: the notification gives the command instead
        await pilot.pause(0.1)
        said = [n.message for n in app._notifications]
        assert any(f"weightscope run/checkpoint-200 run/checkpoint-300 --select {name}" in m for m in said), said


async def test_flags_marked_and_listed(run_dir):
    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        assert [f.code for f in app.flags] == ["frozen"]
        tree = app.query_one(RunTree)
        tree.reveal(node_at(app, "model.norm.weight"))
        await pilot.pause(0.2)
        assert "• " in line_text(tree, tree.cursor_line)
        assert "frozen model.norm never changed" in screen_text(app)
        tree.reveal(node_at(app, "model.embed_tokens.weight"))
        await pilot.pause(0.2)
        assert "no flag names it" in screen_text(app)


async def test_layers_by_steps_heatmap(run_dir):
    base, saved = run_dir
    app = open_run(["base", "run"])
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        app.query_one(RunTree).reveal(node_at(app, "model.layers.0.mlp.down_proj.weight"))
        await pilot.press("o")
        from weightscope.ui.screens.run_overview import RunOverviewScreen

        await wait_for(pilot, lambda: isinstance(app.screen, RunOverviewScreen))
        screen = app.screen
        assert screen.grid.module == "down" and screen.grid.rows == ["0", "1", "2"]
        for r in range(LAYERS):
            want = drift64(base, [saved[s] for s in STEPS], [f"model.layers.{r}.mlp.down_proj.weight"])
            assert np.allclose(screen.grid.drift[r], want, rtol=1e-9)
        text = screen_text(app)
        assert " 2 " in text and "15%" in text and "down" in text
        await pilot.press("m")
        assert screen.grid.module == "up"
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunOverviewScreen))
        assert app.names.path(app.shown) == "model.layers.2.mlp.up_proj.weight"


async def test_small_terminal(run_dir):
    app = open_run(["base", "run"])
    async with app.run_test(size=SMALL) as pilot:
        await scanned(pilot)
        await pilot.press("down", "right", "down")
        await wait_for(pilot, lambda: bool(app.query("#plot-drift")) and app.query_one("#plot-drift").other is not None)
        await pilot.pause(0.1)
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert "run: 6 checkpoints" in lines[0]
        assert "%" in text and "nan" not in text.lower()
        # The legend starts with the step; one plot carries drift and update, beside the figures.
        assert lines[1].strip().startswith("step 500 (5/5, [ ])")
        from weightscope.ui.widgets.step_plot import StepPlot

        plot, update = app.query_one("#plot-drift", StepPlot), app.query_one("#plot-update", StepPlot)
        assert not update.display and plot.other is not None
        found = app.run_tree.figures.of(app.shown)  # a group: its tensors' sums added up
        assert plot.series[1] == found["drift"].tolist() and plot.other[2] == found["update"].tolist()
        assert "drift (orange), update (cyan)" in text
        assert "‖S−R‖/‖R‖" not in text  # the figures' notes make room for the plot


async def test_watch_adds_a_complete_checkpoint(run_dir):
    base, saved = run_dir
    app = open_run(["base", "run"], watch=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        assert app.catalog.steps == 5
        weights = {n: (t * scale_of(n, 6)).contiguous() for n, t in base.items()}
        write_step("run/checkpoint-600", weights)
        await wait_for(pilot, lambda: app.catalog.steps == 6 and app.scan_done, timeout=60)
        await pilot.pause(0.2)
        assert app.selected == 5  # the newest step, as before
        name = "model.layers.2.mlp.up_proj.weight"
        i = app.catalog.names.index(name)
        want = drift64(base, [weights], [name])[0]
        assert math.isclose(app.table.drift()[i, 5], want, rel_tol=1e-9)
        assert "run: 7 checkpoints" in screen_text(app)


async def test_watch_keeps_the_run_when_it_cannot_open_again(run_dir):
    """A watched run that cannot be opened with a new checkpoint (here its reference became
    unreadable) keeps what it shows and says why, and does not try that checkpoint again until
    its files change; a trainer deleting the reference (its save limit) is said too."""
    base, saved = run_dir
    app = open_run(["base", "run"], watch=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        drift = app.table.drift().copy()
        with open("base/model.safetensors", "r+b") as f:
            f.write(b"\xff" * 16)  # a header size no file has
        write_step("run/checkpoint-600", {n: (t * scale_of(n, 6)).contiguous() for n, t in base.items()})
        said = lambda: [n.message for n in app._notifications]  # noqa: E731
        await wait_for(pilot, lambda: any("adding checkpoint-600 failed" in m for m in said()), timeout=60)
        generation = app.generation
        await pilot.pause(1.0)  # five looks at the directory
        assert app.generation == generation and not app.reopening
        assert app.catalog.steps == 5 and np.array_equal(app.table.drift(), drift, equal_nan=True)
        assert "run: 6 checkpoints" in screen_text(app) and "adding checkpoint-600 failed" in screen_text(app)


async def test_watch_says_when_the_reference_is_deleted(run_dir):
    base, saved = run_dir
    app = open_run(["run"], watch=0.2)  # the first checkpoint is the reference
    async with app.run_test(size=SIZE) as pilot:
        await scanned(pilot)
        import shutil

        shutil.rmtree("run/checkpoint-100")
        write_step("run/checkpoint-600", {n: (t * scale_of(n, 6)).contiguous() for n, t in base.items()})
        await wait_for(pilot, lambda: app.catalog.points[-1].step == 600 and app.scan_done, timeout=60)
        assert app.catalog.points[0].step == 200
        assert any("the reference checkpoint-100 is gone: drift is now against checkpoint-200" in n.message
                   for n in app._notifications)
