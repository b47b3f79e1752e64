"""The heads view (issue 15): `v` on an attention tensor, the grid of a layer's attention, and the
overview's layers × heads and layers × experts, on pairs written here beside a config.json."""

from __future__ import annotations

import json

import torch

from weightscope.analysis.heads import Breakdown
from weightscope.ui.screens.overview import OverviewScreen
from weightscope.ui.widgets.heads_view import HeadsPlot

from weightscope.engine import protocol as msg
from weightscope.ui.messages import FromEngine

from .helpers import SIZE, cursor_path, open_app, record_requests, screen_text, settle, static_text, wait_for

H, KV, D = 8, 2, 8
HIDDEN = H * D
Q = "model.layers.1.self_attn.q_proj.weight"


def model(changed: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(2):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = torch.randn(H * D, HIDDEN, generator=gen)
        sd[p + "self_attn.k_proj.weight"] = torch.randn(KV * D, HIDDEN, generator=gen)
        sd[p + "self_attn.v_proj.weight"] = torch.randn(KV * D, HIDDEN, generator=gen)
        sd[p + "self_attn.o_proj.weight"] = torch.randn(HIDDEN, H * D, generator=gen)
        sd[p + "mlp.experts.gate_up_proj"] = torch.randn(4, HIDDEN, 16, generator=gen)
    if changed:
        sd[Q][3 * D:4 * D] += 0.5
        sd["model.layers.1.self_attn.k_proj.weight"][D:2 * D] += 0.5
        sd["model.layers.0.mlp.experts.gate_up_proj"][2] += 0.1
    return sd


def write_pair(pair, tmp_path, config: bool = True) -> tuple[str, str]:
    if config:
        (tmp_path / "config.json").write_text(json.dumps(
            {"model_type": "llama", "num_attention_heads": H, "num_key_value_heads": KV, "hidden_size": HIDDEN}))
    return pair(model(False), model(True))


async def onto(pilot, name: str) -> None:
    pilot.app.show_in_tree(name)
    await settle(pilot)


async def heads_view(pilot) -> None:
    while pilot.app.detail_view != "heads":
        await pilot.press("v")
    await settle(pilot)


async def test_v_on_q_proj_draws_a_bar_per_head_with_head_three_alone(pair, tmp_path):
    app = open_app(*write_pair(pair, tmp_path), use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await onto(pilot, Q)
        await heads_view(pilot)
        await wait_for(pilot, lambda: app.query_one(HeadsPlot).drawn is not None)
        found, name = app.query_one(HeadsPlot).drawn
        assert isinstance(found, Breakdown) and name == Q
        assert [u.unit.index for u in found.units if u.delta_sq > 0] == [3]
        text = screen_text(app)
        assert "q_proj: 1 of 8 heads changed, most q 3 " in text
        assert "key/value group" in text  # the colours' meaning, under the bars


def hold_detail_answers(app) -> list:
    """Hold back the engine's answers to `detail` asks (the others go on); returns the held ones."""
    held, post = [], app.post_message

    def post_message(message) -> bool:
        reply = message.message if isinstance(message, FromEngine) else None
        if isinstance(reply, msg.Reply) and app.asked.get(reply.ticket, ("",))[0] == "detail":
            held.append(message)
            return True
        return post(message)

    app.post_message = post_message
    return held


async def test_a_tensor_selected_in_the_heads_view_asks_its_heads_first_and_keeps_them(pair, tmp_path):
    """The heads are asked before the tensor's figures (the engine takes asks in turn), and the
    figures coming after the heads leave the bars drawn."""
    app = open_app(*write_pair(pair, tmp_path), use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await heads_view(pilot)  # on the first line (a group)
        sent = record_requests(app)
        held = hold_detail_answers(app)
        app.show_in_tree(Q)
        await wait_for(pilot, lambda: held and (app.query_one(HeadsPlot).drawn or (None, ""))[1] == Q)
        asks = [request.kind for request in sent if isinstance(request, msg.Ask)]
        assert asks[:2] == ["heads", "detail"]
        del app.post_message  # the figures come now, after the heads
        for message in held:
            app.post_message(message)
        await settle(pilot)
        assert (app.query_one(HeadsPlot).drawn or (None, ""))[1] == Q
        assert "q_proj: 1 of 8 heads changed" in screen_text(app)


async def test_without_a_config_the_view_says_how_to_give_the_counts(pair, tmp_path):
    app = open_app(*write_pair(pair, tmp_path, config=False), use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await onto(pilot, Q)
        await heads_view(pilot)
        assert static_text(app, "#heads-grid-text").strip() == \
            "head count unknown: no config.json beside the weights (use --heads N[,KV])"
        assert "head count unknown" in screen_text(app)  # on screen, where the chart would be


async def test_a_layers_self_attn_is_a_grid_of_heads_and_projections(pair, tmp_path):
    app = open_app(*write_pair(pair, tmp_path), use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await onto(pilot, Q)
        await heads_view(pilot)
        await pilot.press("left", "left", "left")  # the tensor, q_proj collapsed, up to self_attn
        await settle(pilot)
        assert cursor_path(app) == "model.layers.1.self_attn"
        await wait_for(pilot, lambda: "head  kv" in static_text(app, "#heads-grid-text"))
        rows = {line.split()[0]: line.split()[1:] for line in static_text(app, "#heads-grid-text").splitlines()
                if line.strip() and line.split()[0].isdigit()}
        assert rows["3"][0] == "0" and rows["3"][1] != "0%" and rows["3"][2:] == ["0%", "0%", "0%"]  # q alone
        for reader in "4567":  # k of key/value head 1, read by query heads 4–7
            assert rows[reader][0] == "1" and rows[reader][1:] == ["0%", rows["4"][2], "0%", "0%"]
        assert rows["4"][2] != "0%"
        assert all(rows[h][1:] == ["0%"] * 4 for h in "012")


async def test_overview_turns_to_heads_and_experts_and_enter_selects_a_tensor(pair, tmp_path):
    app = open_app(*write_pair(pair, tmp_path), use_cache=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, OverviewScreen) and len(app.screen.grids) == 3)
        await pilot.press("v")
        screen = app.screen
        assert screen.shown_layer == "heads" and screen.grid.columns == [f"h{h}" for h in range(H)]
        cells = screen.grid.cells
        assert [h for h in range(H) if cells[("1", f"h{h}")].delta_sq > 0] == [3, 4, 5, 6, 7]
        assert all(cells[("0", f"h{h}")].delta_sq == 0 for h in range(H))
        await pilot.press("v")
        assert screen.shown_layer == "experts"
        assert [e for e in range(4) if screen.grid.cells[("0", f"e{e}")].delta_sq > 0] == [2]
        await pilot.press("v", "v", "down", "right", "right", "right", "enter")  # modules, heads: layer 1, head 3
        await settle(pilot)
        assert not isinstance(app.screen, OverviewScreen)
        assert cursor_path(app) == Q
