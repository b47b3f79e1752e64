"""Layers and module types from names, the overview grid, anomalies and the exported report."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from weightscope.analysis.anatomy import OUTSIDE, Anomaly, PackedCells, anomalies, grid, place
from weightscope.demo import write_demo
from weightscope.report.export import export, markdown


@pytest.mark.parametrize("name, layer, module", [
    ("model.layers.12.self_attn.q_proj.weight", 12, "q"),
    ("model.layers.0.mlp.down_proj.weight", 0, "down"),
    ("model.layers.3.post_attention_layernorm.weight", 3, "norm 2"),
    ("transformer.h.3.attn.c_attn.weight", 3, "qkv"),
    ("transformer.h.3.attn.c_proj.bias", 3, "o"),
    ("transformer.h.3.mlp.c_fc.weight", 3, "up"),
    ("transformer.h.3.mlp.c_proj.weight", 3, "down"),
    ("transformer.h.0.ln_1.weight", 0, "norm 1"),
    ("encoder.layer.5.attention.self.query.weight", 5, "q"),
    ("encoder.layer.5.attention.output.dense.weight", 5, "o"),
    ("encoder.layer.5.attention.output.LayerNorm.weight", 5, "norm 1"),
    ("encoder.layer.5.intermediate.dense.weight", 5, "up"),
    ("encoder.layer.5.output.dense.weight", 5, "down"),
    ("encoder.layer.5.output.LayerNorm.bias", 5, "norm 2"),
    ("model.layers.7.block_sparse_moe.experts.3.w2.weight", 7, "experts.down"),
    ("model.layers.7.mlp.experts.120.gate_proj.weight", 7, "experts.gate"),
    ("model.layers.7.mlp.gate.weight", 7, "router"),
    ("model.layers.7.self_attn.rotary_emb.inv_freq", 7, "self_attn.rotary_emb.inv_freq"),
])
def test_place_finds_layer_and_module_across_architectures(name, layer, module):
    where = place(name)
    assert (where.layer, where.module, where.row) == (layer, module, str(layer))


def test_tensors_outside_the_layers_get_their_own_row():
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "wte.weight"):
        assert place(name).row == OUTSIDE and place(name).layer is None


def test_two_stacks_never_share_a_row():
    stacks = {"model.layers", "vision_model.encoder.layers"}
    assert place("model.layers.2.mlp.up_proj.weight", stacks).row == "model.layers.2"
    assert place("vision_model.encoder.layers.2.mlp.fc1.weight", stacks).row == "vision_model.encoder.layers.2"


@pytest.fixture
def tuned_pair(tmp_path, ck, diff):
    """Base and fine-tune: frozen embeddings, NaN in layer 1's up_proj, one outlier change."""
    base = ck.llama_like(0, layers=6, hidden=16)
    tuned = {k: v.clone() for k, v in base.items()}
    gen = torch.Generator().manual_seed(1)
    for i in range(6):
        for proj in ("q", "k", "v", "o"):
            name = f"model.layers.{i}.self_attn.{proj}_proj.weight"
            scale = 1e-1 if (i, proj) == (4, "v") else 1e-3  # layer 4's v moved 100× the others
            tuned[name] = base[name] + scale * torch.randn(base[name].shape, generator=gen)
    tuned["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    ck.write_safetensors(tmp_path / "a.safetensors", base)
    ck.write_safetensors(tmp_path / "b.safetensors", tuned)
    return diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")


def test_grid_puts_each_change_in_its_cell(tuned_pair):
    g = grid(tuned_pair.catalog, tuned_pair.table)
    assert g.rows == [str(i) for i in range(6)]
    assert g.columns[:4] == ["q", "k", "v", "o"] and {"gate", "up", "down", "norm 1", "norm 2"} <= set(g.columns)
    assert g.cells[("1", "up")].statuses == {"nonfinite"}
    assert g.cells[("0", "gate")].statuses == {"identical"}
    assert g.cells[(OUTSIDE, "model.embed_tokens")].statuses == {"identical"}
    r = tuned_pair.result("model.layers.2.self_attn.q_proj.weight")
    assert g.cells[("2", "q")].rel_l2 == pytest.approx(r.diff.rel_l2, rel=1e-6)
    series = g.column_series("v")
    assert max(series) == series[4] and series[4] > 10 * series[3]


def test_a_grid_crosses_a_pipe_as_columns_and_reads_the_same(tuned_pair):
    g = grid(tuned_pair.catalog, tuned_pair.table)
    got = pickle.loads(pickle.dumps(g))
    assert isinstance(got.cells, PackedCells)  # no object per cell on the wire
    assert got == g and list(got.cells) == list(g.cells) and len(got.cells) == len(g.cells)
    assert list(got.cells.keys()) == list(g.cells.keys()) and list(got.cells.values()) == list(g.cells.values())
    for key, cell in g.cells.items():
        assert got.cells[key] == cell and got.cells.get(key) == cell
    assert got.cells.get(("no such row", "q")) is None
    assert got.column_series("v") == g.column_series("v")
    assert pickle.loads(pickle.dumps(got)) == g  # and again, as received
    got.cells[("1", "up")].names.append("changed here")  # each lookup is a fresh cell
    assert got.cells[("1", "up")] == g.cells[("1", "up")]


def test_anomalies_name_nan_and_outlier_change(tuned_pair):
    found = {a.name: a.reason for a in anomalies(tuned_pair.catalog, tuned_pair.table)}
    assert found["model.layers.1.mlp.up_proj.weight"] == "holds NaN or Inf"
    assert "larger than typical for v" in found["model.layers.4.self_attn.v_proj.weight"]
    assert "model.layers.3.self_attn.v_proj.weight" not in found
    assert list(found)[0] == "model.layers.1.mlp.up_proj.weight"  # most serious first


def moved_pair(tmp_path, ck, diff, scales: dict[int, float], layers: int = 6):
    """A pair where only q moved, layer i by about `scales[i]` rel L2 (layers not named stay put)."""
    base = ck.llama_like(0, layers=layers, hidden=32)
    tuned = dict(base)
    gen = torch.Generator().manual_seed(2)
    for i, scale in scales.items():
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        tuned[name] = base[name] + scale * torch.randn(base[name].shape, generator=gen)
    ck.write_safetensors(tmp_path / "a.safetensors", base)
    ck.write_safetensors(tmp_path / "b.safetensors", tuned)
    return diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")


def outliers(d) -> dict[str, str]:
    return {a.name: a.reason for a in anomalies(d.catalog, d.table) if "typical" in a.reason}


def test_demo_layer_3_mlp_is_an_outlier_with_three_layers_moved(tmp_path, diff):
    """The demo's MLP moved in layers 1–3 only (layer 0 frozen), layer 3's 8× the others':
    three members a module type, under a decade from the median, and still caught."""
    base, tuned = write_demo(root=tmp_path / "demo")
    found = outliers(diff(base, tuned))
    assert set(found) == {f"model.layers.3.mlp.{proj}_proj.weight" for proj in ("gate", "up", "down")}
    assert found["model.layers.3.mlp.up_proj.weight"] == "change 8× larger than typical for up across layers"


def test_one_layer_many_times_its_module_median_is_an_outlier(tmp_path, ck, diff):
    found = outliers(moved_pair(tmp_path, ck, diff, {0: 1e-3, 1: 1e-3, 2: 5e-3}))
    assert list(found) == ["model.layers.2.self_attn.q_proj.weight"]
    assert "5× larger than typical for q" in found["model.layers.2.self_attn.q_proj.weight"]


@pytest.mark.parametrize("scales", [
    {0: 1e-3, 1: 1e-3, 2: 3e-3},  # 3× the others: under the factor
    {i: 10 ** (-3 + 0.25 * i) for i in range(8)},  # falling steadily with depth: ends 7× off the median, ordinary
    {0: 2e-3, 1: 1e-3, 2: 4e-3, 3: 1.5e-3, 4: 3e-3, 5: 6e-4},  # noisy, but no layer stands out
], ids=["under-the-factor", "trend-with-depth", "noisy"])
def test_ordinary_spread_is_no_outlier(tmp_path, ck, diff, scales):
    assert outliers(moved_pair(tmp_path, ck, diff, scales, layers=8)) == {}


def test_dtype_changes_come_one_entry_per_kind(tmp_path, ck, diff):
    """A cast pair changes every dtype: one entry per kind; NaN and shape changes stay per tensor."""
    base = ck.llama_like(0, layers=3, hidden=16)
    cast = {name: t.to(torch.bfloat16) for name, t in base.items()}
    cast["model.norm.weight"] = base["model.norm.weight"].to(torch.float16)
    cast["lm_head.weight"] = torch.cat([cast["lm_head.weight"], cast["lm_head.weight"][:2]])  # resized too
    cast["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    ck.write_safetensors(tmp_path / "a.safetensors", base)
    ck.write_safetensors(tmp_path / "b.safetensors", cast)
    d = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    to_bf16 = [n for n in d.catalog.names if n not in
               {"model.norm.weight", "lm_head.weight", "model.layers.1.mlp.up_proj.weight"}]
    assert anomalies(d.catalog, d.table) == [
        Anomaly("model.layers.1.mlp.up_proj.weight", "holds NaN or Inf"),
        Anomaly("lm_head.weight", "shape changed"),
        Anomaly(to_bf16[0], f"{len(to_bf16)} tensors changed dtype float32 → bfloat16"),
        Anomaly("model.norm.weight", "dtype changed float32 → float16"),
    ]


def test_export_writes_markdown_and_the_diff_json(tuned_pair, tmp_path):
    d = tuned_pair
    md, js = export(d.catalog, d.table, tmp_path)
    document = json.loads(js.read_text())
    assert set(document) >= {"version", "a", "b", "tensors", "summary"}
    assert document["summary"]["identical"] == sum(r.status == "identical" for r in d.results)
    text = md.read_text()
    assert "## Anomalies" in text and "`model.layers.1.mlp.up_proj.weight`: holds NaN or Inf" in text
    assert "| `model.layers.4.self_attn.v_proj.weight` | changed |" in text
    assert text == markdown(d.catalog, d.table)
