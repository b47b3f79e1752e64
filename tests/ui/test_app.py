"""Pilot tests of the terminal app: trees, keys, the detail pane and its worker, the filter.

Each test opens the app headless with `run_test`, waits with `settle` (the scan and every
question asked of the engine, never a fixed sleep) and checks what the app holds or draws.
Checkpoints are the demo pair or tiny files written here with safetensors' own writer.
"""

from __future__ import annotations

import io
import re
import time

import pytest
import torch
from rich.console import Console
from textual import events
from textual.widgets import Input, Static

import weightscope.ui.app as app_module
from weightscope.engine import protocol as msg
from weightscope.ui.app import WeightscopeApp
from weightscope.ui.screens.help import HelpScreen
from weightscope.ui.screens.notes import NotesScreen
from weightscope.ui.widgets import badges
from weightscope.ui.widgets.detail import DetailPane
from weightscope.ui.widgets.diff_tree import DiffTree
from weightscope.ui.widgets.histogram import HistogramPlot, fitted_title

from .helpers import (SIZE, Gate, cursor_path, histograms_of, leaf_names, line_of, name_nodes, open_app,
                      record_notifications, record_requests, screen_text, settle, shown_name, shown_pair,
                      shown_status, static_text, status_of, tree_lines, verdict_line, wait_for)


def burst(app: WeightscopeApp, key: str, times: int) -> None:
    """Queue `times` key presses at once, as a held-down key does, without waiting between them
    (Pilot's `press` waits for the app to go idle after each key)."""
    for _ in range(times):
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)


def split_line(line: str, status: str) -> tuple[str, str]:
    """A tree line's A column and B column, cut at the status badge (NaN/Inf: its flag `!`
    beside the status it outranks)."""
    if status == "nonfinite":
        a, b = re.split(r"\s\S! ", line, maxsplit=1)
        return a, b
    a, b = line.split(f" {badges.symbol(status)} ", 1)
    return a, b


def tree_leaves(app: WeightscopeApp) -> list[str]:
    """The tensors on the tree's lines (expanded far enough to be seen), top to bottom."""
    tree = app.query_one(DiffTree)
    nodes = [tree.get_node_at_line(line).data for line in range(tree.last_line + 1)]
    return [app.catalog.names[app.names.pair[node]] for node in nodes if app.names.pair[node] >= 0]


def layer_pair(pair, layers: int = 12):
    a = {f"layers.{i}.weight": torch.full((2, 2), float(i)) for i in range(layers)}
    b = {name: t + (1.0 if name == "layers.10.weight" else 0.0) for name, t in a.items()}
    return pair(a, b)


def sync_pair(pair):
    """One tensor per status: identical, changed, shape change, only in A, only in B."""
    gen = torch.Generator().manual_seed(1)
    same, moved = torch.randn(4, 4, generator=gen), torch.randn(4, 4, generator=gen)
    a = {"blocks.same": same, "blocks.moved": moved, "blocks.shape": torch.zeros(4, 4), "extra.gone": torch.ones(3)}
    b = {"blocks.same": same.clone(), "blocks.moved": moved + 1, "blocks.shape": torch.zeros(4, 5),
         "extra.fresh": torch.ones(3)}
    return pair(a, b)


# The trees


async def test_both_columns_show_names(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        lines = tree_lines(app)
        assert len(lines) == 3 and lines[0].startswith("all tensors")  # the verdict's line, then the names
        a, b = split_line(lines[1], "shape_mismatch")  # the resized output head
        assert a.split() == ["▶", "lm_head"] and b.split()[:3] == ["▶", "lm_head", "1/1"]
        a, b = split_line(lines[2], "nonfinite")  # B holds a few NaNs
        assert a.split() == ["▶", "model"] and b.split()[:3] == ["▶", "model", "29/39"]
        screen = screen_text(app)
        assert "A base   B finetune   40 | 39 tensors" in screen
        assert "reading headers" not in screen


async def test_layer_numbers_sort_naturally(pair):
    app = open_app(*layer_pair(pair))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("right")  # the cursor starts on `layers`, the only top-level line below the verdict's
        parts = [app.names.parts[node.data] for node in app.query_one(DiffTree).root.children[1].children]
        assert parts == [str(i) for i in range(12)]
        assert line_of(app, "layers.1") < line_of(app, "layers.2") < line_of(app, "layers.10")
        lines = tree_lines(app)
        assert " ≠ " in lines[line_of(app, "layers.10")]  # the one that differs
        assert all(" = " in lines[line_of(app, f"layers.{i}")] for i in range(12) if i != 10)


async def test_children_are_created_when_a_node_expands(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        model = tree.get_node_at_line(line_of(app, "model"))
        assert not model.is_expanded and len(model.children) == 0
        await pilot.press("down", "right")
        assert model.is_expanded
        assert [app.names.parts[child.data] for child in model.children] == ["embed_tokens", "layers", "norm"]
        layers = model.children[1]
        assert len(layers.children) == 0  # one level at a time



async def test_the_first_line_carries_the_verdict_and_the_pane_shows_it_whole(demo):
    """During the scan the first line and its pane say the verdict comes after it; once the
    scan is done, the line names the kind and counts the flags, and selected, the pane lists
    the summary, every flag and the facts."""
    app = open_app(*demo, use_cache=False)
    gate = Gate(app, msg.ScanDone)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready and app.table.read == len(app.catalog))
        assert "verdict after the scan" in verdict_line(app)
        await pilot.press("k")  # up to the whole comparison
        await wait_for(pilot, lambda: app.shown == 0)
        assert "the verdict comes once the scan is done" in static_text(app, "#detail-stats")
        gate.open()
        await settle(pilot)
        line = verdict_line(app)
        assert line.startswith("all tensors  partial (medium)") and "✖ 1 error  ⚠ 3 warn  ℹ 1 info" in line
        pane = static_text(app, "#detail-stats")
        assert "verdict partial (medium)" in pane and "embeddings, layer 0 frozen" in pane
        assert "✖ nonfinite  NaN/Inf in B that A did not have" in pane
        assert pane.index("nonfinite") < pane.index("outlier") < pane.index("vocab_resized")  # most severe first
        assert "10 of 40 tensors bit-identical" in pane  # a fact behind it


# Navigation


async def test_up_down_and_j_k_move_the_cursor(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        await pilot.press("right")  # lm_head open: lm_head, weight, model
        assert tree.cursor_line == 1 and cursor_path(app) == "lm_head"
        await pilot.press("down")
        assert cursor_path(app) == "lm_head.weight"
        await pilot.press("j")
        assert cursor_path(app) == "model"
        await pilot.press("k")
        assert cursor_path(app) == "lm_head.weight"
        await pilot.press("up")
        assert cursor_path(app) == "lm_head"
        await pilot.press("k")  # up to the verdict's line (the whole comparison), and no further
        assert tree.cursor_line == 0 and cursor_path(app) == ""
        await pilot.press("k")
        assert tree.cursor_line == 0


@pytest.mark.parametrize("right, left", [("right", "left"), ("l", "h")])
async def test_right_expands_then_enters_left_collapses_then_leaves(demo, right, left):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        await pilot.press("down")
        model = tree.cursor_node
        assert app.names.path(model.data) == "model" and not model.is_expanded
        await pilot.press(right)
        assert model.is_expanded and cursor_path(app) == "model"
        await pilot.press(right)
        assert cursor_path(app) == "model.embed_tokens"
        await pilot.press(left)  # a collapsed child: go to its parent
        assert cursor_path(app) == "model" and model.is_expanded
        await pilot.press(left)  # an expanded node: collapse it
        assert cursor_path(app) == "model" and not model.is_expanded
        await pilot.press(left)  # a collapsed top-level node: nowhere to go
        assert cursor_path(app) == "model"
        await pilot.press("up", right, right)  # lm_head -> its only tensor
        assert cursor_path(app) == "lm_head.weight"
        await pilot.press(right)  # a tensor has nothing to expand
        assert cursor_path(app) == "lm_head.weight"


async def test_enter_and_space_toggle(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        node = app.query_one(DiffTree).cursor_node  # the first line, with no key pressed
        assert app.names.path(node.data) == "lm_head" and not node.is_expanded
        for key in ("enter", "space"):
            await pilot.press(key)
            assert node.is_expanded and [app.names.parts[c.data] for c in node.children] == ["weight"]
            await pilot.press(key)
            assert not node.is_expanded


# The two sides in step


async def test_a_name_on_one_side_leaves_the_other_column_blank(pair):
    app = open_app(*sync_pair(pair))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "right")  # open `extra`
        lines = tree_lines(app)
        a, b = split_line(lines[line_of(app, "extra.gone")], "only_a")
        assert "gone" in a and "f32 3" in a
        assert b.strip(" │") == ""  # only the guide of the group above
        a, b = split_line(lines[line_of(app, "extra.fresh")], "only_b")
        assert "fresh" in b and "f32 3" in b
        assert a.strip() == ""
        await pilot.press("up", "right")  # open `blocks`
        lines = tree_lines(app)
        a, b = split_line(lines[line_of(app, "blocks.shape")], "shape_mismatch")
        assert a.split() == ["shape", "f32", "4×4"] and b.split()[:4] == ["└─", "shape", "f32", "4×5"]
        a, b = split_line(lines[line_of(app, "blocks.same")], "identical")
        assert a.split() == ["same", "f32", "4×4"] and b.split()[:4] == ["├─", "same", "f32", "4×4"]


async def test_statuses_after_the_scan(pair):
    app = open_app(*sync_pair(pair))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        statuses = {name: status_of(app, name) for name in name_nodes(app)}
        assert statuses == {"blocks.same": "identical", "blocks.moved": "changed", "blocks.shape": "shape_mismatch",
                            "extra.gone": "only_a", "extra.fresh": "only_b"}
        groups = {app.names.path(node): app.rollup.status(node) for node in app.names.children(0)}
        assert groups == {"blocks": "shape_mismatch", "extra": "only_a"}
        tree = app.query_one(DiffTree)
        badge = {app.names.path(node.data): tree.render_label(node, tree.rich_style, tree.rich_style).plain
                 for node in tree.root.children}
        assert f" {badges.symbol('shape_mismatch')} " in badge["blocks"]
        assert "2/3" in split_line(badge["blocks"], "shape_mismatch")[1]  # moved and shape differ, same does not


def lora_over_base(ck, tmp_path):
    """A small Llama base and a PEFT adapter of layer 0's q_proj (r 8, alpha 16), as PEFT saves it."""
    base = ck.write_safetensors(tmp_path / "base.safetensors", ck.llama_like(0, hidden=16, vocab=64))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    gen = torch.Generator().manual_seed(0)
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    ck.write_safetensors(adapter / "adapter_model.safetensors",
                         {f"{module}.lora_A.weight": torch.randn(8, 16, generator=gen),
                          f"{module}.lora_B.weight": torch.randn(16, 8, generator=gen)})
    (adapter / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    return base, adapter


async def test_each_result_reaches_the_app_once_and_the_lora_notes_at_the_end(ck, tmp_path, monkeypatch):
    """While scanning, every pair's result comes once; at the end, the LoRA notes come with the
    end of the scan, not as results sent again (sending 100,000 results twice stalled the UI)."""
    base, adapter = lora_over_base(ck, tmp_path)
    received: list[int] = []
    take = WeightscopeApp.take_results

    def recording(self, message):
        received.extend(message.batch.index.tolist())
        take(self, message)

    monkeypatch.setattr(WeightscopeApp, "take_results", recording)
    app = open_app(base, adapter)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert sorted(received) == list(range(len(app.catalog)))
        noted = {app.catalog.names[i] for i, notes in app.table.notes.items() if notes}
        assert "model.layers.0.self_attn.q_proj.weight" in noted


async def test_a_lora_adapters_factors_are_browsable_but_no_difference(ck, tmp_path):
    """Base against its adapter: the factors sit beside the weight they change, badged ƒ; the
    groups count the weights alone (1 of 20 differs, not 3 of 22); `n` goes to the changed
    weight, never to a factor; `a` finds no "only in B"."""
    base, adapter = lora_over_base(ck, tmp_path)
    notes = record_notifications(app := open_app(base, adapter))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        q = "model.layers.0.self_attn.q_proj"
        assert status_of(app, f"{q}.lora_A.weight") == status_of(app, f"{q}.lora_B.weight") == "factor"
        assert status_of(app, f"{q}.weight") == "changed"
        root = next(line for line in tree_lines(app) if line.lstrip("▶▼ ").startswith("model"))
        assert root.split()[-2] == "1/20", root
        await pilot.press("n")
        await settle(pilot)
        assert shown_name(app) == f"{q}.weight"
        await pilot.press("n")
        await settle(pilot)
        assert shown_name(app) == f"{q}.weight"  # the only difference: n comes back to it
        await pilot.press("a")
        await settle(pilot)
        assert not any("only in B" in note for note in notes), notes
        await pilot.press("slash", *"lora_A", "enter")
        await settle(pilot)
        assert any(line.split()[:2] == ["▶", "ƒ"] or " ƒ " in line for line in tree_lines(app)), tree_lines(app)


async def test_a_reopened_pair_takes_its_cached_results_and_keys_pressed_meanwhile(pair):
    """Reopened, the results come from the cache, each message acknowledged once taken. A
    tensor selected and `n` pressed before they are in: the tensor's figures come all the
    same, `n` says nothing differs yet, and goes to the next difference once it is known."""
    a = {f"t{i}": torch.full((3,), float(i)) for i in range(6)}
    paths = pair(a, {name: t + (1.0 if name == "t4" else 0.0) for name, t in a.items()})
    app = open_app(*paths)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)  # scanned, and the results cached
        scanned = app.table.status.copy()
    app = open_app(*paths)
    gate = Gate(app, msg.Results, msg.ScanDone)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        sent = record_requests(app)
        await pilot.press("down")  # t1, before any result is in
        await wait_for(pilot, lambda: shown_pair(app) is not None and shown_pair(app) in app.details)
        t1, t4 = app.catalog.index("t1"), app.catalog.index("t4")
        assert cursor_path(app) == "t1" and app.table.status[t1] >= 0 > app.table.status[t4]  # t1's from its question
        await pilot.press("n")
        read = (app.table.status >= 0).sum()
        assert f"no tensor differs yet ({read} of 6 tensors read)" in notes, notes
        gate.open()
        await settle(pilot)
        assert (app.table.status == scanned).all()
        assert cursor_path(app) == "t4"  # the next difference, once it was known
        assert [r for r in sent if isinstance(r, msg.Ack)]  # each message of results acknowledged


# Next / previous difference


async def test_n_and_shift_n_visit_differences_and_wrap(pair):
    a = {f"t{i}": torch.full((3,), float(i)) for i in range(6)}
    b = {name: t + (1.0 if name in ("t1", "t4") else 0.0) for name, t in a.items()}
    app = open_app(*pair(a, b))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        visited = []
        for _ in range(3):
            await pilot.press("n")
            visited.append(cursor_path(app))
        assert visited == ["t1", "t4", "t1"]
        visited = []
        for _ in range(3):
            await pilot.press("N")
            visited.append(cursor_path(app))
        assert visited == ["t4", "t1", "t4"]


async def test_n_reveals_a_difference_deep_in_a_collapsed_tree(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n", "n")
        assert cursor_path(app) == "model.layers.0.self_attn.rotary_emb.inv_freq"
        assert status_of(app, cursor_path(app)) == "only_a"
        await pilot.press("N", "N")  # back past lm_head, round to the last difference
        differing = [name for name in name_nodes(app) if status_of(app, name) not in ("identical", "value_equal")]
        assert differing[0] == "lm_head.weight" and cursor_path(app) == differing[-1]


async def test_n_on_an_identical_pair_says_nothing_differs(pair):
    a = {"x.weight": torch.arange(6.0), "y.weight": torch.ones(2, 2)}
    app = open_app(*pair(a, {k: v.clone() for k, v in a.items()}))
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        before = cursor_path(app)
        await pilot.press("n")
        assert "no tensor differs" in notes
        await pilot.press("N")
        assert notes.count("no tensor differs") == 2
        assert cursor_path(app) == before


# The detail pane


async def press_until(pilot, key: str, condition, limit: int = 50) -> None:
    for _ in range(limit):
        await pilot.press(key)
        if condition():
            return
    raise AssertionError(f"{key} pressed {limit} times and the condition never held")


async def test_a_tensor_fills_the_detail_pane(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press_until(pilot, "n", lambda: shown_status(app) == "changed")
        name = shown_name(app)
        await settle(pilot)
        assert set(histograms_of(app, name)) >= {"a", "b", "diff"}  # the engine's answer, kept in the LRU cache
        title = static_text(app, "#detail-title")
        assert name in title and "changed" in title
        stats = static_text(app, "#detail-stats")
        for row in ("min", "max", "mean", "std", "L2 norm", "NaN", "Δ = B − A", "max |Δ|", "rel L2", "cosine"):
            assert row in stats
        assert stats.splitlines()[0].split() == ["A", "B", "Δ", "=", "B", "−", "A"]
        verdict = static_text(app, "#detail-verdict")
        assert verdict.startswith("mismatched ") and "max |Δ|" in verdict and "atol" in verdict
        screen = screen_text(app)
        assert all(f"⢕⢕ {label}" in screen for label in ("A", "B", "Δ"))  # the keys of both histograms


async def test_a_group_shows_aggregate_counts(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down")
        await settle(pilot)
        assert app.names.path(app.shown) == "model"
        rows = {line.split("  ")[1].strip(): int(line.split()[-1].replace(",", "")) for line in
                static_text(app, "#detail-sides").splitlines() if line.strip()}
        counts = dict(zip(app_module.hierarchy.SEVERITY, app.rollup.counts(app.shown).tolist()))
        assert rows == {badges.words(status): count for status, count in counts.items() if count}
        assert rows["changed"] == 20 and rows["identical"] == 10 and rows["NaN or Inf"] == 1
        assert "39 tensors" in static_text(app, "#detail-stats")
        verdict = static_text(app, "#detail-verdict")
        assert "most changed" in verdict and "layers.3.mlp" in verdict
        assert not app.query_one("#detail-plots").display


async def test_holding_down_computes_only_the_last_tensor(pair, monkeypatch):
    """50 cursor moves queued at once: the tensor first highlighted had its figures asked for,
    and that question, still unanswered, is cancelled; tensors passed over ask nothing; the
    last one is shown."""
    a = {f"w{i}": torch.randn(64, 64) for i in range(60)}
    b = {name: t + 0.01 for name, t in a.items()}
    # The cursor must rest this long before work starts; longer than the app's 50 ms so that a
    # stall of a loaded CI machine in the middle of the burst cannot pass for a rest.
    monkeypatch.setattr(app_module, "DETAIL_DELAY", 1.0)
    app = open_app(*pair(a, b))
    answers = Gate(app, msg.Reply, is_open=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert cursor_path(app) == "w0" and list(app.details.keys()) == [app.catalog.index("w0")]
        sent = record_requests(app)
        answers.close()  # w1's answer takes its time
        await pilot.press("down")  # onto w1: its question is asked at once (a lone key)
        burst(app, "down", 50)
        await wait_for(pilot, lambda: any(isinstance(r, msg.Cancel) for r in sent))
        answers.open()
        await settle(pilot)
        assert cursor_path(app) == "w51"
        asked = {r.ticket: app.catalog.names[r.args[0]] for r in sent if isinstance(r, msg.Ask) and r.kind == "detail"}
        assert sorted(asked.values()) == ["w1", "w51"]
        cancelled = [asked[r.ticket] for r in sent if isinstance(r, msg.Cancel) and r.ticket in asked]
        assert cancelled == ["w1"]
        assert set(app.details.keys()) >= {app.catalog.index("w51")}
        assert "w51" in static_text(app, "#detail-title")
        assert "mismatched" in static_text(app, "#detail-verdict")


async def until(pilot, condition, what: str, timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds (for states `settle` cannot wait for)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await pilot.pause()


async def test_a_tensor_not_read_yet_gets_its_figures_from_its_question(pair):
    """While the scan's results are held back, the tensor under the cursor is asked about on
    its own: its figures and histograms come in the answer, and its badge reaches the tree."""
    gen = torch.Generator().manual_seed(2)
    a = {f"w{i}": torch.randn(64, 64, generator=gen) for i in range(2)}
    b = {name: t + 0.5 for name, t in a.items()}
    app = open_app(*pair(a, b), use_cache=False)
    gate = Gate(app, msg.Results, msg.ScanDone)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.catalog is not None and app.catalog.index("w0") in app.details)
        await pilot.pause()
        assert cursor_path(app) == "w0"
        stats = static_text(app, "#detail-stats")
        assert stats.splitlines()[0].split() == ["A", "B", "Δ", "=", "B", "−", "A"] and "rel L2" in stats
        assert static_text(app, "#detail-verdict").startswith("mismatched ")
        assert set(histograms_of(app, "w0")) >= {"a", "b", "diff"}
        assert {name: status_of(app, name) for name in name_nodes(app)} == {"w0": "changed", "w1": "pending"}
        gate.open()
        await settle(pilot)
        assert {name: status_of(app, name) for name in name_nodes(app)} == {"w0": "changed", "w1": "changed"}
        screen = screen_text(app)
        assert all(f"⢕⢕ {label}" in screen for label in ("A", "B", "Δ"))


# Filtering


async def type_filter(pilot, text: str) -> None:
    await pilot.press("slash")
    await pilot.press(*text)


def matching(app: WeightscopeApp, keep) -> list[str]:
    """The names `keep` keeps, in natural order (the tree's)."""
    return [app.catalog.names[i] for i in app.natural.tolist() if keep(app.catalog.names[i])]


async def test_substring_filter_narrows_the_tree_live(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_filter(pilot, "q_proj")  # `q` must type, not quit
        box = app.query_one("#filter", Input)
        assert box.display and box.has_focus and box.value == "q_proj"
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)  # no Enter: the filter is live
        expected = matching(app, lambda n: "q_proj" in n)
        assert len(expected) == 4
        assert leaf_names(app) == expected
        tree = app.query_one(DiffTree)
        assert tree_leaves(app) == expected  # every match is on a line: few matches open their groups
        assert app.return_code is None
        await pilot.press("enter")
        assert tree.has_focus and box.display and box.value == "q_proj"
        await pilot.press("escape")
        await settle(pilot, until=lambda: len(leaf_names(app)) == 40)
        assert not box.display and box.value == "" and tree.has_focus
        assert [app.names.path(node.data) for node in tree.root.children] == ["", "lm_head", "model"]


async def test_glob_filter(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_filter(pilot, "*.layers.[13].mlp.*")
        await pilot.press("enter")
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        expected = [f"model.layers.{i}.mlp.{p}_proj.weight" for i in (1, 3) for p in ("down", "gate", "up")]
        assert leaf_names(app) == expected
        assert tree_leaves(app) == expected
        assert any("up_proj" in line for line in tree_lines(app))


async def test_escape_while_typing_clears_the_filter(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_filter(pilot, "norm")
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        assert {name.rsplit(".", 2)[-2] for name in leaf_names(app)} == {"input_layernorm", "post_attention_layernorm",
                                                                        "norm"}
        await pilot.press("escape")
        await settle(pilot, until=lambda: len(leaf_names(app)) == 40)
        assert not app.query_one("#filter", Input).display
        assert app.query_one(DiffTree).has_focus


# Other keys


async def test_L_toggles_log_counts(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press_until(pilot, "n", lambda: shown_status(app) == "changed")
        await settle(pilot)
        assert not app.log_counts and "log10(1+count)" not in screen_text(app)
        await pilot.press("L")
        assert app.log_counts
        await pilot.pause()
        assert "log10(1+count)" in screen_text(app)
        await pilot.press("L")
        assert not app.log_counts


async def test_c_copies_the_name(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n", "c")
        assert app.clipboard == "lm_head.weight"
        await pilot.press("down", "c")  # a group: its dotted path
        assert app.clipboard == "model"


def help_text(app: WeightscopeApp) -> str:
    """Everything the help screen holds, whether or not it is scrolled into view."""
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    for static in app.screen.query(Static):
        console.print(static.content)
    return console.export_text()


async def test_question_mark_opens_help_and_escape_closes_it(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "weightscope — keys" in screen_text(app)
        text = help_text(app)
        assert "next / previous tensor that differs" in text
        assert all(words in text for _, _, words in badges.BADGES.values())  # the badges' key, scrolled or not
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark", "q")  # q closes the help, it does not quit
        assert not isinstance(app.screen, HelpScreen) and app.return_code is None
        assert app.query_one(DiffTree).has_focus


def write_gguf_q8(path, sd: dict[str, torch.Tensor]) -> None:
    """`sd` as llama.cpp's converter writes a Llama model, its matrices as Q8_0 (Q and K permuted)."""
    import gguf

    layers = 1 + max(int(n.split(".")[2]) for n in sd if n.startswith("model.layers."))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    for name, tensor in sd.items():
        data = tensor.numpy()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            data = data.reshape(2, 2, data.shape[0] // 4, -1).swapaxes(1, 2).reshape(data.shape)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


async def test_i_lists_every_note_under_the_side_it_concerns(ck, tmp_path):
    """The title counts the notes and names the key; `i` lists them: a GGUF side's dequantizing
    and its rows put back, under B; Escape closes the list."""
    sd = ck.llama_like(0, hidden=32)
    a = ck.write_safetensors(tmp_path / "model.safetensors", sd)
    write_gguf_q8(tmp_path / "model.gguf", sd)
    app = open_app(a, tmp_path / "model.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        title = static_text(app, "#title")
        count = sum(len(notes) for _, notes in app.notes())
        assert count >= 2 and f"{count} notes (i)" in title, title
        await pilot.press("i")
        assert isinstance(app.screen, NotesScreen)
        shown = screen_text(app)
        b = shown.index("B  ")
        assert shown.index("A  ") < b < shown.index("A and B paired")
        assert "dequantized" in shown[b:] and "Q8_0" in shown[b:], shown
        assert "put back" in shown[b:], shown
        await pilot.press("escape")
        assert not isinstance(app.screen, NotesScreen) and app.query_one(DiffTree).has_focus


def test_the_title_keeps_its_counts_and_cuts_the_paths():
    """At 80 columns two long paths give way, cut near the start, and the counts stay whole."""
    a = "/data/checkpoints/llama-3-8b-instruct/base"
    b = "/data/checkpoints/llama-3-8b-instruct/runs/2026-11-29/checkpoint-9000"
    title = app_module.fitted_title((a, b), "291 | 291 tensors, 2 notes (i)", 80)
    assert len(title) <= 80 and title.endswith("291 | 291 tensors, 2 notes (i)")
    assert title.startswith("A …") and "   B …" in title and title.count("…") == 2
    assert "checkpoint-9000" in title  # the end of a path says which
    assert app_module.fitted_title(("a", "b"), "3 | 3 tensors", 80) == "A a   B b   3 | 3 tensors"


async def test_the_selected_line_stays_in_view_across_a_resize(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")  # to a tensor deep in the tree, expanded on the way
        await pilot.press(*["down"] * 8)
        await settle(pilot)
        tree = app.query_one(DiffTree)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        top = round(tree.scroll_offset.y)
        assert top <= tree.cursor_line < top + tree.scrollable_content_region.height


async def test_q_quits(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        assert app.return_code == 0 and app.error is None


# One checkpoint, broken inputs


async def test_single_checkpoint_shows_a_nan_badge(demo):
    app = open_app(demo[1])
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "A finetune   39 tensors" in screen_text(app)
        await pilot.press("n")
        name = "model.layers.2.mlp.up_proj.weight"
        assert cursor_path(app) == name
        assert status_of(app, name) == "nonfinite"
        a, rest = split_line(tree_lines(app)[line_of(app, name)], "nonfinite")
        assert "up_proj" not in a and "weight  bf16 704×256" in a
        await settle(pilot)
        assert "A holds 3 NaN" in static_text(app, "#detail-verdict")
        assert static_text(app, "#detail-stats").splitlines()[0].split() == ["A"]  # no B, no Δ columns


async def test_single_checkpoint_without_nan_says_so(demo):
    app = open_app(demo[0])
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert "no tensor holds NaN or Inf" in notes


async def test_single_checkpoint_tree_after_the_scan(demo):
    """Every tensor read and finite shows the "read" badge; no group counts its tensors as differing."""
    app = open_app(demo[0])
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("right")  # open lm_head: lm_head, its weight, model
        tree = app.query_one(DiffTree)
        assert [tree.status_of(node) for node in name_nodes(app).values()] == ["read"] * 40
        lines = tree_lines(app)
        assert len(lines) == 3
        for line in lines:
            assert f" {badges.symbol('read')} " in line and f" {badges.symbol('pending')} " not in line, line
        for group in ("lm_head", "model"):  # no "1/1", no "40/40": nothing differs from anything
            assert split_line(lines[line_of(app, group)], "read")[1].strip() == "", lines[line_of(app, group)]


async def test_single_checkpoint_detail_pane_for_a_tensor(demo):
    """A tensor of one checkpoint: its A row, A's statistics only (no B, no Δ), no verdict of a comparison."""
    app = open_app(demo[0])
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("right", "down")
        await settle(pilot)
        assert cursor_path(app) == "lm_head.weight"
        title = static_text(app, "#detail-title")
        assert title.split()[0] == badges.symbol("read") and badges.words("read") in title
        assert "only in A" not in title + static_text(app, "#detail-sides")
        assert [line.split()[0] for line in static_text(app, "#detail-sides").splitlines() if line.strip()] == ["A"]
        stats = static_text(app, "#detail-stats")
        assert stats.splitlines()[0].split() == ["A"] and "L2 norm" in stats
        assert all(row not in stats for row in ("Δ", "rel L2", "cosine", "mismatched"))
        verdict = static_text(app, "#detail-verdict")
        assert "mismatched" not in verdict and "differ" not in verdict
        screen = screen_text(app)
        assert "⢕⢕ A" in screen and "⢕⢕ B" not in screen  # the values histogram has A's series only


async def test_single_checkpoint_detail_pane_for_a_group(demo):
    """A group of one checkpoint speaks of tensors read, as the tree does, not of a comparison."""
    app = open_app(demo[0])
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        for keys, path in (((), "lm_head"), (("down",), "model")):
            await pilot.press(*keys)
            await settle(pilot)
            assert app.names.path(app.shown) == path
            title, sides = static_text(app, "#detail-title"), static_text(app, "#detail-sides")
            assert "only in A" not in title + sides
            assert title.split()[0] == badges.symbol(tree.status_of(app.shown)) == badges.symbol("read"), title
            assert badges.words("identical") not in title + sides, title + sides
            assert "rel L2" not in static_text(app, "#detail-stats")
            assert "differ" not in static_text(app, "#detail-verdict")


@pytest.mark.parametrize("where", ["a", "b", "single"])
@pytest.mark.parametrize("kind", ["missing", "garbage"])
async def test_an_unreadable_input_exits_with_2(tmp_path, demo_root, kind, where):
    bad = tmp_path / "model.safetensors"
    if kind == "garbage":
        bad.write_bytes(b"\x00\x01 this is not a checkpoint " * 20)
    paths = {"a": (str(bad), str(demo_root / "finetune")), "b": (str(demo_root / "base"), str(bad)),
             "single": (str(bad),)}[where]
    app = open_app(*paths)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
    assert app.return_code == 2
    assert app.error is not None and "\n" not in app.error and str(bad) in app.error
    assert ("No such file" in app.error) if kind == "missing" else ("not a checkpoint" in app.error)


# Keys pressed before the headers are read


def hold_opening(app: WeightscopeApp) -> Gate:
    """Hold the headers back until the test opens the returned gate (as a big checkpoint on a
    slow disk makes the user wait)."""
    return Gate(app, msg.Opened)


@pytest.mark.parametrize("keys, pattern", [
    # harmless before the trees exist (one test for all, each is a no-op or opens and closes a screen)
    (["n", "N", "c", "L", "question_mark", "escape", "down", "right", "enter", "space", "o", "t", "e"], ""),
    (["slash", *"norm"], "norm"),  # the live filter waits for the names
    (["slash", *"norm", "enter"], "norm"),  # kept, and applied once the names are read
    (["slash", "escape"], ""),  # opened and closed again: nothing to apply
    (["a"], ""),  # next anomaly: nothing to look at yet
], ids=["other-keys", "filter-typed", "filter-entered", "filter-escaped", "next-anomaly"])
async def test_keys_before_the_headers_are_read(demo, keys, pattern):
    app = open_app(*demo)
    gate = hold_opening(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*keys)
        assert "reading headers" in screen_text(app)
        gate.open()
        await settle(pilot)
        assert app.return_code is None and app.error is None
        box = app.query_one("#filter", Input)
        assert box.display == bool(pattern) and box.value == pattern
        expected = matching(app, lambda n: pattern in n)
        assert len(expected) == (9 if pattern else 40)
        assert sorted(leaf_names(app)) == sorted(expected)
        if "enter" in keys or not pattern:
            assert app.query_one(DiffTree).has_focus


async def test_a_filter_typed_while_opening_applies_once_open(demo):
    app = open_app(*demo)
    gate = hold_opening(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_filter(pilot, "norm")
        await pilot.pause(3 * app_module.FILTER_DELAY)  # the live filter's moment has come, with no names yet
        assert "reading headers" in screen_text(app)
        gate.open()
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        box = app.query_one("#filter", Input)
        assert box.display and box.value == "norm"
        expected = matching(app, lambda n: "norm" in n)
        assert len(expected) == 9 and leaf_names(app) == expected
        assert tree_leaves(app) == expected  # few matches: every one on a line


async def test_a_filter_typed_while_opening_keeps_the_focus(demo):
    app = open_app(*demo)
    gate = hold_opening(app)
    async with app.run_test(size=SIZE) as pilot:
        await type_filter(pilot, "nor")
        gate.open()
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        box = app.query_one("#filter", Input)
        assert box.has_focus
        await pilot.press("m")
        assert box.value == "norm"


async def test_a_filter_during_the_scan_keeps_no_node_of_the_tree_before(demo):
    """The scan's redraw between a filtered tree and its cursor's first line names no node of
    the tree shown before (it did: an IndexError, the app gone, in a tmux test under load)."""
    from weightscope.analysis.hierarchy import of_names

    app = open_app(*demo)
    Gate(app, msg.Results)  # the scan goes on for as long as the test needs
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.ready)
        deep = len(app.names) - 1
        app.diff_tree.reveal(deep)
        await wait_for(pilot, lambda: app.shown == deep)
        small = of_names(app.catalog.names, "lm_head")
        assert len(small) <= deep
        app.filtered("lm_head", small)
        app.group_drawn = 0.0
        app.redraw_scan()  # as the scan's timer may, before the new tree's cursor is highlighted
        await wait_for(pilot, lambda: app.shown is not None)
        assert app.names is small and app.shown < len(small)


async def test_select_opens_at_a_tensor(demo):
    """`--select NAME` puts the cursor on that tensor once the tree is there (deep in a closed
    group); a name that is not there says so and leaves the cursor on the first line."""
    name = "model.layers.2.self_attn.k_proj.weight"
    app = WeightscopeApp(msg.Job(*demo), select=name)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.shown is not None and app.names.path(app.shown) == name)
        tree = app.query_one(DiffTree)
        assert tree.cursor_node.data == app.shown and app.focused is tree
    app = WeightscopeApp(msg.Job(*demo), select="model.nowhere.weight")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("no tensor named model.nowhere.weight" in n.message
                                          for n in app._notifications))
        assert app.query_one(DiffTree).cursor_line == 1


async def test_the_tree_has_the_focus_as_it_comes(demo):
    """The tree is focused as it is mounted: a key pressed as it appears moves its cursor, and
    never goes to the detail pane (next in line once the placeholder is gone)."""
    app = open_app(*demo)
    gate = hold_opening(app)
    async with app.run_test(size=SIZE) as pilot:
        gate.open()
        # as it appears: mounted, its cursor on the first line of tensors (a key can't come earlier)
        await wait_for(pilot, lambda: bool(app.query(DiffTree)) and app.query_one(DiffTree).cursor_line >= 0)
        assert app.focused is app.query_one(DiffTree)
        before = app.query_one(DiffTree).cursor_line
        await pilot.press("down")
        assert app.query_one(DiffTree).cursor_line == before + 1


async def test_a_key_right_after_expanding_moves_among_the_new_lines(demo):
    """→ then ↓ at once, as a terminal sends them: ↓ goes to the first child, not nowhere (the
    children were added only when the expansion's message came, after ↓ found no line)."""
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        node = tree.cursor_node
        assert node.allow_expand and not node.is_expanded
        for key in ("right", "down"):
            app._driver.send_message(events.Key(key, None))  # queued together, as typed
        await wait_for(pilot, lambda: tree.cursor_node is not node)
        assert tree.cursor_node.parent is node


# Smaller findings


async def test_a_filter_that_matches_nothing(demo):
    app = open_app(*demo)
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert cursor_path(app) == "lm_head" and "lm_head" in static_text(app, "#detail-title")
        await type_filter(pilot, "zzz")
        await pilot.press("enter")
        await settle(pilot, until=lambda: not leaf_names(app))
        assert app.query_one(DiffTree).cursor_node is None and app.shown is None
        assert static_text(app, "#detail-title").strip() == "no tensor matches 'zzz'"
        assert all(static_text(app, part).strip() == "" for part in ("#detail-sides", "#detail-stats",
                                                                      "#detail-verdict"))
        assert not app.query_one("#detail-plots").display
        await pilot.press("c")
        assert app.clipboard == "" and not any(note.startswith("copied") for note in notes)


FOOTER_SHOWN = ("n Next diff", "/ Filter", "o Overview", "t Table", "a Anomaly", "v View", "? Help", "q Quit")
FOOTER_HIDDEN = ("N Prev diff", "L Log scale", "c Copy name", "e Export")


async def test_the_footer_shows_help_and_quit(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        footer = screen_text(app).splitlines()[-1]
        assert all(key in footer for key in FOOTER_SHOWN), footer
        assert not any(key in footer for key in FOOTER_HIDDEN), footer  # left out, to make room; in the help
        await pilot.press("question_mark")
        text = help_text(app)
        assert all(key.split(" ", 1)[0] in text for key in FOOTER_HIDDEN)


async def test_the_footer_fits_80_columns_and_the_help_names_the_palette(demo):
    app = open_app(*demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        footer = screen_text(app).splitlines()[-1]
        assert all(key in footer for key in FOOTER_SHOWN), footer  # the palette key left out, to make room
        await pilot.press("question_mark")
        assert "Ctrl+P" in help_text(app)


async def test_e_exports_though_the_footer_leaves_it_out(pair, tmp_path, monkeypatch):
    """N, L and c are tested above; `e` writes the comparison as Markdown and JSON into the working directory."""
    monkeypatch.chdir(tmp_path)
    app = open_app(*sync_pair(pair))
    notes = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot, until=lambda: any(note.startswith("wrote ") for note in notes))
        written = sorted(path.suffix for path in tmp_path.glob("weightscope-*"))
        assert written == [".json", ".md"]
        assert any(note.startswith("wrote ") for note in notes), notes


def test_a_histogram_title_is_shortened_to_fit_rather_than_dropped():
    """plotext leaves out a title wider than the plot: what fell outside the range is said shorter."""
    outside = [("A", 170, 175), ("B", 1172, 180)]
    assert fitted_title("values", [], 10) == "values"
    assert fitted_title("values", outside, 80) == "values  (A: 170 below, 175 above; B: 1,172 below, 180 above)"
    assert fitted_title("values", outside, 50) == "values (outside: A ↓170 ↑175, B ↓1,172 ↑180)"
    assert fitted_title("values", outside, 30) == "values (outside: A ↓170 ↑175,…"
    assert fitted_title("values", outside, 0).startswith("values  (A: 170 below")  # not laid out yet


async def test_histograms_fit_in_80_columns(demo):
    """Under 110 columns the plots stack below the figures, in the figures' columns; wider, beside them."""
    app = open_app(*demo)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await press_until(pilot, "n", lambda: shown_status(app) == "changed")
        await settle(pilot)
        pane = app.query_one(DetailPane)
        assert pane.has_class("narrow")
        figures = app.query_one("#detail-figures").region
        plots = list(app.query(HistogramPlot))
        assert len(plots) == 2 and all(plot.display for plot in plots)
        for plot in plots:
            region = plot.region
            assert region.x == figures.x and region.right == figures.right <= 80, (region, figures)
            assert region.y >= figures.bottom and region.height > 0, (region, figures)
        assert set(histograms_of(app, shown_name(app))) >= {"a", "b", "diff"}
        await pilot.resize_terminal(*SIZE)
        await settle(pilot)
        assert not pane.has_class("narrow")
        figures = app.query_one("#detail-figures").region
        for plot in plots:
            assert plot.region.x >= figures.right and plot.region.right <= SIZE[0], (plot.region, figures)


async def test_the_cursor_starts_on_the_first_line(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        tree = app.query_one(DiffTree)
        assert tree.cursor_line == 1 and cursor_path(app) == "lm_head"  # below the verdict's line
        assert app.shown == tree.cursor_node.data and "lm_head" in static_text(app, "#detail-title")
        await pilot.press("right")
        assert cursor_path(app) == "lm_head" and tree.cursor_node.is_expanded
        await pilot.press("k", "k")  # stays at the top, not round to the last line
        assert tree.cursor_line == 0


async def test_a_tensor_that_doubled_reads_100_percent(pair):
    app = open_app(*pair({"w": torch.ones(4)}, {"w": torch.full((4,), 2.0)}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert tree_lines(app)[1].split()[-1] == "100%"
    assert [badges.percent(rel) for rel in (1.5, 0.1, 0.031, 2e-6, 0)] == ["150%", "10%", "3.1%", "0.0002%", "0%"]


async def test_a_tensor_that_is_also_a_group_can_be_inspected(pair):
    app = open_app(*pair({"enc": torch.ones(4), "enc.weight": torch.ones(3)},
                               {"enc": torch.full((4,), 2.0), "enc.weight": torch.ones(3)}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert cursor_path(app) == "enc"
        await settle(pilot)
        assert set(histograms_of(app, "enc")) >= {"a", "b", "diff"}
        title = static_text(app, "#detail-title")
        assert title.split() == [badges.symbol("changed"), "changed", "enc"]
        assert static_text(app, "#detail-stats").splitlines()[0].split() == ["A", "B", "Δ", "=", "B", "−", "A"]
        assert app.query_one("#detail-plots").display  # its figures, not the group's counts
        await pilot.press("right", "down")
        await settle(pilot)
        assert cursor_path(app) == "enc.weight" and "enc.weight" in static_text(app, "#detail-title")
        await pilot.press("up")  # back: its own figures again, from the cache
        assert "Δ = B − A" in static_text(app, "#detail-stats") and "tensors" not in static_text(app, "#detail-stats")


async def test_a_filter_shows_the_first_match_in_the_detail_pane(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert cursor_path(app) == "lm_head"
        await type_filter(pilot, "norm")
        await pilot.press("enter")
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        assert cursor_path(app) == "model"
        assert app.shown == app.query_one(DiffTree).cursor_node.data
        assert static_text(app, "#detail-title").split()[-1] == "model"
        await pilot.press("c")
        assert app.clipboard == "model"


async def test_escape_rebuilds_the_tree_once(demo):
    app = open_app(*demo)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_filter(pilot, "norm")
        await pilot.press("enter")
        await settle(pilot, until=lambda: len(leaf_names(app)) < 40)
        sent = record_requests(app)
        await pilot.press("escape")
        await settle(pilot, until=lambda: len(leaf_names(app)) == 40)
        await pilot.press("down")  # onto model, before or after the second rebuild
        # Waiting for something that must not happen: long enough for the live filter's timer.
        deadline = time.monotonic() + 10 * app_module.FILTER_DELAY
        while time.monotonic() < deadline:
            await pilot.pause(app_module.FILTER_DELAY / 3)
        await settle(pilot)
        assert [r.args for r in sent if isinstance(r, msg.Ask) and r.kind == "tree"] == [("",)]
        assert cursor_path(app) == "model"


async def test_app_and_diff_agree_whoever_wrote_the_cache(ck, tmp_path, capsys, monkeypatch):
    """On a LoRA pair: the app first (it stores the scan), then `diff` from that cache; and
    `diff` first, then the app. The document and the notes are the ones a fresh scan gives:
    derived notes are worked out again by whoever reads, never stored twice or lost."""
    import json

    from weightscope.cli import main

    base, adapter = lora_over_base(ck, tmp_path)

    def document(*extra) -> dict:
        main(["diff", str(base), str(adapter), "--json", *extra])
        return json.loads(capsys.readouterr().out)

    async def notes_in_the_app() -> dict:
        app = open_app(base, adapter)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            return {app.catalog.names[i]: list(notes) for i, notes in app.table.notes.items() if notes}

    fresh = document("--no-cache")
    expected = {t["name"]: t["notes"] for t in fresh["tensors"] if t["notes"]}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first-the-app"))
    assert await notes_in_the_app() == expected
    assert document() == fresh
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first-diff"))
    assert document() == fresh
    assert await notes_in_the_app() == expected
