"""Inside a layer (issue 15): a change split by attention head and by MoE expert.

Known answers: checkpoints written with safetensors (and gguf's writer) beside a config.json
as transformers writes one, with a change put into one head's (or expert's) slice only; that
head alone must light, with figures equal to a float64 reference over its slice.
"""

import json
import math

import gguf
import numpy as np
import pytest
import torch

from weightscope.analysis import heads as hd
from weightscope.cli import main

H, KV, D = 8, 2, 8  # query heads, key/value heads, head size
HIDDEN = H * D


def write_model(directory, sd: dict, config: dict | None, ck) -> str:
    """A model directory as `save_pretrained` leaves it: model.safetensors and config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    ck.write_safetensors(directory / "model.safetensors", sd)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
    return str(directory)


def llama_gqa(seed: int = 0, layers: int = 2, dtype=torch.float32) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    sd = {"model.embed_tokens.weight": rand(32, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}.self_attn."
        sd[p + "q_proj.weight"] = rand(H * D, HIDDEN)
        sd[p + "k_proj.weight"] = rand(KV * D, HIDDEN)
        sd[p + "v_proj.weight"] = rand(KV * D, HIDDEN)
        sd[p + "o_proj.weight"] = rand(HIDDEN, H * D)
        sd[f"model.layers.{i}.mlp.down_proj.weight"] = rand(HIDDEN, 2 * HIDDEN)
    return sd


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
                "num_attention_heads": H, "num_key_value_heads": KV, "num_hidden_layers": 2, "torch_dtype": "float32"}


def breakdowns(result, override=None) -> tuple[hd.Known, dict]:
    """The head counts and every tensor's breakdown of a scanned pair (the `diff` fixture's)."""
    catalog = result.catalog
    known = hd.known_heads([catalog.summary_a, catalog.summary_b], override)
    found = {}
    for i, name in enumerate(catalog.names):
        pair = catalog.pair(i)
        same = pair.a is not None and pair.b is not None and pair.a.shape == pair.b.shape
        sides = (result.a.raw(pair.a.name), result.b.raw(pair.b.name)) if same else (None, None)
        found[name] = hd.pair_breakdown(name, (pair.a and pair.a.shape, pair.b and pair.b.shape),
                                        (pair.a and pair.a.dtype, pair.b and pair.b.dtype), sides, known)
    return known, found


def lit(found: hd.Breakdown, part: str | None = None) -> list[int]:
    """The units whose slice changed."""
    return [u.unit.index for u in found.units if u.delta_sq > 0 and (part is None or u.unit.part == part)]


def lit_parts(found: hd.Breakdown) -> list[tuple[str, int]]:
    """(part, index) of the units whose slice changed."""
    return [(u.unit.part, u.unit.index) for u in found.units if u.delta_sq > 0]


def scanned(ck, tmp_path, diff, a: dict, b: dict, config: dict) -> dict:
    """Every tensor's breakdown of a pair written with safetensors beside `config`."""
    result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
    return breakdowns(result)[1]


def reference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """rel L2, max |Δ|, cosine of one slice, in float64."""
    a, b = a.double(), b.double()
    delta = b - a
    return (float(delta.norm() / a.norm()), float(delta.abs().max()),
            float((a * b).sum() / (a.norm() * b.norm())))


def check_figures(unit: hd.UnitFigures, a: torch.Tensor, b: torch.Tensor) -> None:
    rel, peak, cosine = reference(a, b)
    assert unit.rel_l2 == pytest.approx(rel, rel=1e-9)
    assert unit.max_abs == pytest.approx(peak, rel=1e-12)
    assert unit.cosine == pytest.approx(cosine, rel=1e-9)


class TestGroupedQueryAttention:
    """8 query heads, 2 key/value heads: query head h reads key/value head h // 4."""

    @pytest.fixture(params=[torch.float32, torch.bfloat16])
    def pair(self, request, ck, tmp_path, diff):
        dtype = request.param
        a = llama_gqa(0, dtype=dtype)
        b = {k: v.clone() for k, v in a.items()}
        q, o, k = (f"model.layers.1.self_attn.{p}_proj.weight" for p in "qok")
        b[q][3 * D:4 * D] += 0.25  # query head 3's rows
        b[o][:, 3 * D:4 * D] -= 0.5  # and its columns of the output projection
        b[k][1 * D:2 * D] *= 1.5  # key/value head 1's rows of k
        config = {**LLAMA_CONFIG, "torch_dtype": str(dtype).split(".")[-1]}
        result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
        return a, b, result

    def test_query_head_three_lights_alone_in_q_and_o(self, pair):
        a, b, result = pair
        known, found = breakdowns(result)
        assert (known.config.heads, known.config.kv_heads) == (H, KV)
        q, o = (found[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qo")
        assert lit(q) == [3] and lit(o) == [3]
        assert [u.unit.kv_head for u in q.units] == [0, 0, 0, 0, 1, 1, 1, 1]
        name = "model.layers.1.self_attn.q_proj.weight"
        check_figures(q.units[3], a[name][3 * D:4 * D], b[name][3 * D:4 * D])
        name = "model.layers.1.self_attn.o_proj.weight"
        check_figures(o.units[3], a[name][:, 3 * D:4 * D], b[name][:, 3 * D:4 * D])
        assert all(u.rel_l2 == 0 and u.max_abs == 0 for u in q.units if u.unit.index != 3)
        for layer0 in ("q", "k", "v", "o"):
            assert lit(found[f"model.layers.0.self_attn.{layer0}_proj.weight"]) == []

    def test_key_value_head_one_lights_alone_and_names_its_readers(self, pair):
        a, b, result = pair
        _, found = breakdowns(result)
        k = found["model.layers.1.self_attn.k_proj.weight"]
        assert [u.unit.index for u in k.units] == [0, 1]
        assert lit(k) == [1]
        assert k.units[1].unit.readers == (4, 5, 6, 7) and k.units[0].unit.readers == (0, 1, 2, 3)
        name = "model.layers.1.self_attn.k_proj.weight"
        check_figures(k.units[1], a[name][D:2 * D], b[name][D:2 * D])
        assert lit(found["model.layers.1.self_attn.v_proj.weight"]) == []

    def test_other_tensors_have_no_breakdown(self, pair):
        _, found = breakdowns(pair[2])
        assert found["model.layers.1.mlp.down_proj.weight"] is None
        assert found["model.embed_tokens.weight"] is None


def test_gpt2_c_attn_conv1d_splits_by_columns(ck, tmp_path, diff):
    """GPT-2's Conv1D c_attn [hidden, 3·hidden]: q | k | v by columns; its bias the same; c_proj by rows."""
    heads, d = 4, 8
    hidden = heads * d
    gen = torch.Generator().manual_seed(1)
    a = {"transformer.h.0.attn.c_attn.weight": torch.randn(hidden, 3 * hidden, generator=gen),
         "transformer.h.0.attn.c_attn.bias": torch.randn(3 * hidden, generator=gen),
         "transformer.h.0.attn.c_proj.weight": torch.randn(hidden, hidden, generator=gen),
         "transformer.h.0.attn.c_proj.bias": torch.randn(hidden, generator=gen)}
    b = {k: v.clone() for k, v in a.items()}
    b["transformer.h.0.attn.c_attn.weight"][:, hidden + 2 * d:hidden + 3 * d] += 1  # k of head 2
    b["transformer.h.0.attn.c_attn.bias"][1 * d:2 * d] += 1  # q of head 1
    b["transformer.h.0.attn.c_proj.weight"][3 * d:4 * d] += 1  # head 3's input rows
    b["transformer.h.0.attn.c_proj.bias"] += 1  # after the heads: no breakdown
    config = {"model_type": "gpt2", "n_head": heads, "n_embd": hidden, "n_layer": 1}
    result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
    _, found = breakdowns(result)
    weight = found["transformer.h.0.attn.c_attn.weight"]
    assert [(u.unit.part, u.unit.index) for u in weight.units if u.delta_sq > 0] == [("k", 2)]
    assert "columns" in weight.layout
    name = "transformer.h.0.attn.c_attn.weight"
    cols = slice(hidden + 2 * d, hidden + 3 * d)
    check_figures(next(u for u in weight.units if u.delta_sq > 0), a[name][:, cols], b[name][:, cols])
    bias = found["transformer.h.0.attn.c_attn.bias"]
    assert [(u.unit.part, u.unit.index) for u in bias.units if u.delta_sq > 0] == [("q", 1)]
    assert lit(found["transformer.h.0.attn.c_proj.weight"]) == [3]
    assert found["transformer.h.0.attn.c_proj.bias"] is None


def test_neox_query_key_value_is_interleaved_per_head(ck, tmp_path, diff):
    """GPT-NeoX's fused [3·hidden, hidden]: per head its q, k and v rows in turn."""
    heads, d = 4, 8
    hidden = heads * d
    gen = torch.Generator().manual_seed(2)
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    a = {name: torch.randn(3 * hidden, hidden, generator=gen),
         "gpt_neox.layers.0.attention.query_key_value.bias": torch.randn(3 * hidden, generator=gen)}
    b = {k: v.clone() for k, v in a.items()}
    rows = slice(2 * 3 * d + 2 * d, 2 * 3 * d + 3 * d)  # head 2's v rows
    b[name][rows] += 0.5
    b["gpt_neox.layers.0.attention.query_key_value.bias"][1 * 3 * d:1 * 3 * d + d] += 1  # head 1's q
    config = {"model_type": "gpt_neox", "num_attention_heads": heads, "hidden_size": hidden}
    result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
    _, found = breakdowns(result)
    weight = found[name]
    assert [(u.unit.part, u.unit.index) for u in weight.units][:6] == [("q", 0), ("k", 0), ("v", 0),
                                                                       ("q", 1), ("k", 1), ("v", 1)]
    changed = [u for u in weight.units if u.delta_sq > 0]
    assert [(u.unit.part, u.unit.index) for u in changed] == [("v", 2)]
    check_figures(changed[0], a[name][rows], b[name][rows])
    bias = found["gpt_neox.layers.0.attention.query_key_value.bias"]
    assert [(u.unit.part, u.unit.index) for u in bias.units if u.delta_sq > 0] == [("q", 1)]


def test_falcon_grouped_query_key_value(ck, tmp_path, diff):
    """Falcon-40B's new decoder: per key/value group its query heads, then its k and v."""
    heads, kv, d = 8, 2, 4
    hidden = heads * d
    name = "transformer.h.0.self_attention.query_key_value.weight"
    a = {name: torch.randn((heads + 2 * kv) * d, hidden, generator=torch.Generator().manual_seed(3))}
    b = {name: a[name].clone()}
    group = heads // kv + 2
    b[name][(1 * group + 4) * d:(1 * group + 5) * d] += 1  # group 1's k (after its 4 query heads)
    b[name][(0 * group + 2) * d:(0 * group + 3) * d] += 1  # query head 2
    config = {"model_type": "falcon", "num_attention_heads": heads, "num_kv_heads": kv, "hidden_size": hidden,
              "new_decoder_architecture": True}
    result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
    _, found = breakdowns(result)
    assert [(u.unit.part, u.unit.index) for u in found[name].units if u.delta_sq > 0] == [("q", 2), ("k", 1)]


def test_phi3_qkv_proj_blocks(ck, tmp_path, diff):
    heads, kv, d = 4, 2, 8
    hidden = heads * d
    name = "model.layers.0.self_attn.qkv_proj.weight"
    a = {name: torch.randn((heads + 2 * kv) * d, hidden, generator=torch.Generator().manual_seed(4))}
    b = {name: a[name].clone()}
    b[name][(heads + kv + 1) * d:(heads + kv + 2) * d] += 1  # v of key/value head 1
    config = {"model_type": "phi3", "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": hidden}
    result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
    _, found = breakdowns(result)
    assert [(u.unit.part, u.unit.index, u.unit.readers) for u in found[name].units if u.delta_sq > 0] == \
        [("v", 1, (2, 3))]


class TestLayouts:
    """One changed slice of each layout; it alone lights."""

    H, D = 4, 8
    HID = H * D

    def rand(self, *shape, seed=10):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))

    def test_falcon_7b_multi_query_block(self, ck, tmp_path, diff):
        """Falcon-7B: H query heads, then one k and one v head."""
        name = "transformer.h.0.self_attention.query_key_value.weight"
        a = {name: self.rand((self.H + 2) * self.D, self.HID)}
        b = {name: a[name].clone()}
        b[name][(self.H + 1) * self.D:] += 1  # the v head
        b[name][1 * self.D:2 * self.D] += 1  # query head 1
        config = {"model_type": "falcon", "num_attention_heads": self.H, "hidden_size": self.HID, "multi_query": True}
        found = scanned(ck, tmp_path, diff, a, b, config)[name]
        assert (found.heads, found.kv_heads) == (self.H, 1)
        assert lit_parts(found) == [("q", 1), ("v", 0)]
        assert found.units[-1].unit.readers == (0, 1, 2, 3)

    def test_bert_query_key_value_and_output_dense(self, ck, tmp_path, diff):
        p = "bert.encoder.layer.0.attention."
        a = {f"{p}self.{w}.weight": self.rand(self.HID, self.HID, seed=k)
             for k, w in enumerate(("query", "key", "value"))}
        a[f"{p}self.query.bias"] = self.rand(self.HID)
        a[f"{p}output.dense.weight"] = self.rand(self.HID, self.HID, seed=5)
        b = {k: v.clone() for k, v in a.items()}
        b[f"{p}self.value.weight"][2 * self.D:3 * self.D] += 1
        b[f"{p}self.query.bias"][3 * self.D:] += 1
        b[f"{p}output.dense.weight"][:, self.D:2 * self.D] += 1
        found = scanned(ck, tmp_path, diff, a, b, {"model_type": "bert", "num_attention_heads": self.H,
                                                   "hidden_size": self.HID})
        assert lit_parts(found[f"{p}self.value.weight"]) == [("v", 2)]
        assert lit_parts(found[f"{p}self.query.bias"]) == [("q", 3)]
        assert lit_parts(found[f"{p}self.key.weight"]) == []
        assert lit_parts(found[f"{p}output.dense.weight"]) == [("o", 1)]

    def test_gemma_head_dim_apart_from_hidden(self, ck, tmp_path, diff):
        """4 query heads of head_dim 16 over a hidden size of 32: q [64, 32], o [32, 64]."""
        p = "model.layers.0.self_attn."
        a = {p + "q_proj.weight": self.rand(64, 32), p + "k_proj.weight": self.rand(16, 32),
             p + "o_proj.weight": self.rand(32, 64)}
        b = {k: v.clone() for k, v in a.items()}
        b[p + "q_proj.weight"][32:48] += 1
        b[p + "o_proj.weight"][:, 48:64] += 1
        config = {"model_type": "gemma", "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
                  "hidden_size": 32}
        found = scanned(ck, tmp_path, diff, a, b, config)
        assert lit_parts(found[p + "q_proj.weight"]) == [("q", 2)] and found[p + "q_proj.weight"].head_dim == 16
        assert lit_parts(found[p + "o_proj.weight"]) == [("o", 3)]
        assert [u.unit.readers for u in found[p + "k_proj.weight"].units] == [(0, 1, 2, 3)]

    def test_qwen_v1_linear_c_attn(self, ck, tmp_path, diff):
        """Qwen (v1): `c_attn` and `c_proj` are Linear layers: q | k | v by rows, c_proj by columns."""
        p = "transformer.h.0.attn."
        a = {p + "c_attn.weight": self.rand(3 * self.HID, self.HID), p + "c_attn.bias": self.rand(3 * self.HID),
             p + "c_proj.weight": self.rand(self.HID, self.HID)}
        b = {k: v.clone() for k, v in a.items()}
        b[p + "c_attn.weight"][self.HID + self.D:self.HID + 2 * self.D] += 1  # k of head 1
        b[p + "c_attn.bias"][2 * self.HID:2 * self.HID + self.D] += 1  # v of head 0
        b[p + "c_proj.weight"][:, 3 * self.D:] += 1  # head 3's columns
        config = {"model_type": "qwen", "num_attention_heads": self.H, "hidden_size": self.HID, "kv_channels": self.D}
        found = scanned(ck, tmp_path, diff, a, b, config)
        assert lit_parts(found[p + "c_attn.weight"]) == [("k", 1)] and "rows" in found[p + "c_attn.weight"].layout
        assert lit_parts(found[p + "c_attn.bias"]) == [("v", 0)]
        assert lit_parts(found[p + "c_proj.weight"]) == [("o", 3)]

    def test_bloom_query_key_value_is_interleaved_per_head(self, ck, tmp_path, diff):
        name = "transformer.h.0.self_attention.query_key_value.weight"
        a = {name: self.rand(3 * self.HID, self.HID)}
        b = {name: a[name].clone()}
        b[name][(1 * 3 + 1) * self.D:(1 * 3 + 2) * self.D] += 1  # head 1's k
        config = {"model_type": "bloom", "n_head": self.H, "hidden_size": self.HID}
        assert lit_parts(scanned(ck, tmp_path, diff, a, b, config)[name]) == [("k", 1)]

    def test_starcoder_multi_query_c_attn(self, ck, tmp_path, diff):
        """gpt_bigcode (StarCoder): `multi_query` means one key/value head; its Linear c_attn is
        q (H·d) | k (d) | v (d) by rows."""
        name = "transformer.h.0.attn.c_attn.weight"
        a = {name: self.rand(self.HID + 2 * self.D, self.HID)}
        b = {name: a[name].clone()}
        b[name][self.HID:self.HID + self.D] += 1  # the k head
        b[name][2 * self.D:3 * self.D] += 1  # query head 2
        config = {"model_type": "gpt_bigcode", "n_head": self.H, "n_embd": self.HID, "multi_query": True}
        found = scanned(ck, tmp_path, diff, a, b, config)[name]
        assert (found.heads, found.kv_heads) == (self.H, 1)
        assert lit_parts(found) == [("q", 2), ("k", 0)]

    def test_t5_attention_splits_and_its_feed_forward_wo_does_not(self, ck, tmp_path, diff):
        """T5: `SelfAttention.q/k/v/o` and `EncDecAttention.*` by `num_heads` heads of `d_kv`
        (their inner size apart from d_model); `DenseReluDense.wo` is a feed-forward matrix."""
        model, inner = 48, self.HID  # d_model 48, 4 heads of d_kv 8
        enc, dec = "encoder.block.0.layer.", "decoder.block.0.layer."
        a = {enc + "0.SelfAttention.q.weight": self.rand(inner, model), enc + "0.SelfAttention.o.weight":
             self.rand(model, inner), dec + "1.EncDecAttention.k.weight": self.rand(inner, model),
             enc + "1.DenseReluDense.wo.weight": self.rand(model, 128), enc + "1.DenseReluDense.wi.weight":
             self.rand(128, model)}
        b = {k: v.clone() for k, v in a.items()}
        b[enc + "0.SelfAttention.q.weight"][2 * self.D:3 * self.D] += 1
        b[enc + "0.SelfAttention.o.weight"][:, self.D:2 * self.D] += 1
        b[dec + "1.EncDecAttention.k.weight"][3 * self.D:] += 1
        b[enc + "1.DenseReluDense.wo.weight"][:, :16] += 1
        config = {"model_type": "t5", "num_heads": self.H, "d_model": model, "d_kv": self.D, "d_ff": 128}
        found = scanned(ck, tmp_path, diff, a, b, config)
        assert lit_parts(found[enc + "0.SelfAttention.q.weight"]) == [("q", 2)]
        assert lit_parts(found[enc + "0.SelfAttention.o.weight"]) == [("o", 1)]
        assert lit_parts(found[dec + "1.EncDecAttention.k.weight"]) == [("k", 3)]
        assert found[enc + "1.DenseReluDense.wo.weight"] is None
        assert hd.role_of("layers.0.attention.wo.weight") == "o"  # Meta's Llama: wo inside attention


class TestMultimodal:
    """A LLaVA-style config: the text model's counts in `text_config`, the vision tower's in
    `vision_config`; neither's applies to the other's tensors."""

    TEXT = "language_model.model.layers.0.self_attn.q_proj.weight"
    VISION = "vision_tower.vision_model.encoder.layers.0.self_attn.{}_proj.weight"

    def pair(self):
        gen = torch.Generator().manual_seed(11)
        a = {self.TEXT: torch.randn(HIDDEN, HIDDEN, generator=gen),
             **{self.VISION.format(p): torch.randn(32, 32, generator=gen) for p in "qk"}}
        b = {k: v.clone() for k, v in a.items()}
        b[self.VISION.format("q")][8:16] += 1  # vision head 1 (4 heads of 8)
        b[self.TEXT][5 * D:6 * D] += 1  # text head 5
        return a, b

    def test_vision_head_one_lights_vision_head_one_alone(self, ck, tmp_path, diff):
        config = {"model_type": "llava_next",
                  "text_config": {"model_type": "mistral", "num_attention_heads": H, "num_key_value_heads": KV,
                                  "hidden_size": HIDDEN},
                  "vision_config": {"model_type": "clip_vision_model", "num_attention_heads": 4, "hidden_size": 32}}
        found = scanned(ck, tmp_path, diff, *self.pair(), config)
        vision = found[self.VISION.format("q")]
        assert (vision.heads, vision.kv_heads, len(vision.units)) == (4, 4, 4)
        assert lit_parts(vision) == [("q", 1)] and vision.source == "vision_config in config.json beside the weights"
        assert len(found[self.VISION.format("k")].units) == 4
        text = found[self.TEXT]
        assert (text.heads, text.kv_heads) == (H, KV) and lit_parts(text) == [("q", 5)]

    def test_a_tower_without_counts_says_so_per_tensor(self, ck, tmp_path, diff):
        config = {"model_type": "llava", "text_config": {"num_attention_heads": H, "num_key_value_heads": KV}}
        found = scanned(ck, tmp_path, diff, *self.pair(), config)
        why = found[self.VISION.format("q")]
        assert isinstance(why, hd.Unavailable) and why.why.startswith("head count unknown for the vision tower: ")
        assert "has no vision_config" in why.why
        assert lit_parts(found[self.TEXT]) == [("q", 5)]

    def test_a_vision_model_alone_keeps_its_own_counts(self):
        assert hd.towers_of({"model_type": "clip_vision_model", "num_attention_heads": 12}, "config.json") == ()


class TestExperts:
    def test_fused_gate_up_proj_splits_along_the_first_dimension(self, ck, tmp_path, diff):
        experts = 4
        gen = torch.Generator().manual_seed(5)
        fused = "model.layers.0.mlp.experts.gate_up_proj"
        a = {fused: torch.randn(experts, 16, 24, generator=gen),
             "model.layers.0.mlp.experts.gate_up_proj_bias": torch.randn(experts, 24, generator=gen),
             "model.layers.0.mlp.experts.down_proj": torch.randn(experts, 12, 16, generator=gen),
             "model.layers.0.mlp.router.weight": torch.randn(experts, 16, generator=gen),
             "model.layers.0.mlp.router.bias": torch.randn(experts, generator=gen)}
        b = {k: v.clone() for k, v in a.items()}
        b[fused][2, 3:7] += 0.5
        b["model.layers.0.mlp.experts.gate_up_proj_bias"][3, 5] += 1
        b["model.layers.0.mlp.router.weight"][1] += 0.1
        b["model.layers.0.mlp.router.bias"][0] += 0.1
        config = {"model_type": "gpt_oss", "num_local_experts": experts, "num_attention_heads": 4, "hidden_size": 16}
        result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", b, config, ck))
        _, found = breakdowns(result)
        split = found[fused]
        assert split.kind == "experts" and len(split.units) == experts and lit(split) == [2]
        check_figures(split.units[2], a[fused][2], b[fused][2])
        assert lit(found["model.layers.0.mlp.experts.down_proj"]) == []
        assert lit(found["model.layers.0.mlp.router.weight"]) == [1]
        assert lit(found["model.layers.0.mlp.router.bias"]) == [0]
        bias = found["model.layers.0.mlp.experts.gate_up_proj_bias"]
        assert bias.kind == "experts" and len(bias.units) == experts and lit(bias) == [3]
        rollup = hd.fused_rollups(result.catalog, {result.catalog.index(n): f for n, f in found.items()})
        block = rollup["model.layers.0.mlp.experts"]
        assert [e.expert for e in block if e.delta_sq > 0] == [2, 3] and block[2].tensors == 3

    def test_named_experts_roll_up_from_the_scan(self, ck, tmp_path, diff):
        gen = torch.Generator().manual_seed(6)
        a = {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": torch.randn(8, 8, generator=gen)
             for e in range(3) for w in ("w1", "w2", "w3")}
        b = {k: v.clone() for k, v in a.items()}
        b["model.layers.0.block_sparse_moe.experts.1.w2.weight"] += 1
        result = diff(write_model(tmp_path / "a", a, None, ck), write_model(tmp_path / "b", b, None, ck))
        rollup = hd.expert_rollups(result.catalog, result.table)["model.layers.0.block_sparse_moe.experts"]
        assert [(e.expert, e.tensors, e.changed) for e in rollup] == [(0, 3, 0), (1, 3, 1), (2, 3, 0)]
        a1 = torch.cat([a[f"model.layers.0.block_sparse_moe.experts.1.{w}.weight"].flatten() for w in ("w1", "w2", "w3")])
        b1 = torch.cat([b[f"model.layers.0.block_sparse_moe.experts.1.{w}.weight"].flatten() for w in ("w1", "w2", "w3")])
        assert rollup[1].rel_l2 == pytest.approx(reference(a1, b1)[0], rel=1e-6)


class TestHeadCounts:
    def test_a_missing_config_says_so(self, ck, tmp_path, diff):
        a = llama_gqa(0)
        result = diff(write_model(tmp_path / "a", a, None, ck), write_model(tmp_path / "b", a, None, ck))
        known, found = breakdowns(result)
        assert known.config is None
        assert known.why == "head count unknown: no config.json beside the weights (use --heads N[,KV])"
        assert found["model.layers.0.self_attn.q_proj.weight"] == hd.Unavailable(known.why)

    def test_heads_given_override_the_config(self, ck, tmp_path, diff):
        a = llama_gqa(0)
        config = {**LLAMA_CONFIG, "num_attention_heads": 4, "num_key_value_heads": 4}
        result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", a, config, ck))
        known, found = breakdowns(result, override=(H, KV))
        assert (known.config.heads, known.config.kv_heads, known.config.source) == (H, KV, "--heads")
        assert len(found["model.layers.0.self_attn.k_proj.weight"].units) == KV

    def test_a_config_that_is_not_json_is_one_note_naming_it(self, ck, tmp_path, diff):
        a = llama_gqa(0)
        path_a = write_model(tmp_path / "a", a, None, ck)
        (tmp_path / "a" / "config.json").write_text('{"num_attention_heads": 8,')
        result = diff(path_a, write_model(tmp_path / "b", a, None, ck))
        known, _ = breakdowns(result)
        assert known.config is None
        assert len(known.notes) == 1 and str(tmp_path / "a" / "config.json") in known.notes[0]
        assert "not JSON" in known.notes[0] and "\n" not in known.notes[0]

    @pytest.mark.parametrize("bad", [True, "8", 0, -4, 8.0, None])
    def test_counts_must_be_positive_integers(self, bad):
        config, _, why = hd.from_config({"num_attention_heads": bad}, "c.json")
        assert config is None and why == "c.json gives no head count (num_attention_heads / n_head)"

    def test_duplicate_keys_are_refused(self, tmp_path):
        (tmp_path / "config.json").write_text('{"num_attention_heads": 8, "num_attention_heads": 4}')
        with pytest.raises(ValueError, match="given twice"):
            hd.read_config(str(tmp_path / "config.json"))

    def test_heads_that_do_not_divide_the_shape_say_so(self, ck, tmp_path, diff):
        a = llama_gqa(0)
        config = {**LLAMA_CONFIG, "num_attention_heads": 6, "num_key_value_heads": 3}
        result = diff(write_model(tmp_path / "a", a, config, ck), write_model(tmp_path / "b", a, config, ck))
        _, found = breakdowns(result)
        assert found["model.layers.0.self_attn.q_proj.weight"] == \
            hd.Unavailable("model.layers.0.self_attn.q_proj.weight: 64 rows do not split into 6 heads")

    @pytest.mark.parametrize("config, counts", [
        ({"model_type": "gpt2", "n_head": 12, "n_embd": 768}, (12, 12, None)),
        ({"model_type": "gemma", "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
          "hidden_size": 3072}, (8, 1, 256)),
        ({"model_type": "falcon", "num_attention_heads": 71, "hidden_size": 4544}, (71, 1, None)),
        ({"model_type": "qwen2", "num_attention_heads": 28, "num_key_value_heads": 4}, (28, 4, None)),
        ({"model_type": "gpt_bigcode", "n_head": 48, "n_embd": 6144, "multi_query": True}, (48, 1, None)),
        ({"model_type": "gpt_bigcode", "n_head": 12, "n_embd": 768, "multi_query": False}, (12, 12, None)),
        ({"model_type": "t5", "num_heads": 12, "d_model": 768, "d_kv": 64}, (12, 12, 64)),
        ({"model_type": "llava", "text_config": {"num_attention_heads": 32, "num_key_value_heads": 8}}, (32, 8, None)),
    ])
    def test_config_spellings(self, config, counts):
        found, _, _ = hd.from_config(config, "config.json")
        assert (found.heads, found.kv_heads, found.head_dim) == counts

    def test_gguf_metadata(self, tmp_path, diff):
        """Head counts from a llama.cpp export's own metadata, with its Q rows put back in order."""
        d = HIDDEN // H
        gen = torch.Generator().manual_seed(7)
        q = torch.randn(H * d, HIDDEN, generator=gen).numpy()
        changed = q.copy()
        changed[5 * d:6 * d] += 1  # query head 5, in Hugging Face order
        paths = []
        for label, data in (("a", q), ("b", changed)):
            writer = gguf.GGUFWriter(str(tmp_path / f"{label}.gguf"), "llama")
            writer.add_block_count(1)
            writer.add_head_count(H)
            writer.add_head_count_kv(KV)
            # convert_hf_to_gguf.py's permutation of Q over its heads
            permuted = data.reshape(H, 2, d // 2, HIDDEN).swapaxes(1, 2).reshape(data.shape)
            writer.add_tensor("blk.0.attn_q.weight", np.ascontiguousarray(permuted))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            paths.append(tmp_path / f"{label}.gguf")
        known, found = breakdowns(diff(*paths))
        assert (known.config.heads, known.config.kv_heads, known.config.source) == (H, KV, "GGUF metadata")
        found = found["model.layers.0.self_attn.q_proj.weight"]
        assert lit(found) == [5]


class TestDiffHeads:
    """`weightscope diff --heads`, through the engine."""

    @pytest.fixture
    def models(self, ck, tmp_path):
        a = llama_gqa(0)
        b = {k: v.clone() for k, v in a.items()}
        b["model.layers.1.self_attn.q_proj.weight"][3 * D:4 * D] += 0.25
        b["model.layers.1.self_attn.k_proj.weight"][D:2 * D] += 0.25
        b["model.layers.1.mlp.experts.gate_up_proj"] = torch.zeros(4, 8, 8)
        a["model.layers.1.mlp.experts.gate_up_proj"] = torch.zeros(4, 8, 8)
        b["model.layers.1.mlp.experts.gate_up_proj"][1] = 1  # expert 1, from zero: rel L2 undefined
        return (write_model(tmp_path / "a", a, LLAMA_CONFIG, ck), write_model(tmp_path / "b", b, LLAMA_CONFIG, ck),
                write_model(tmp_path / "bare", b, None, ck))

    def test_json(self, models, capsys):
        assert main(["diff", models[0], models[1], "--json", "--heads", "--no-cache"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["head_counts"] == {"heads": H, "kv_heads": KV, "head_dim": None,
                                      "source": "config.json beside the weights", "unknown": None, "notes": [],
                                      "towers": []}
        tensors = {t["name"]: t for t in doc["tensors"]}
        q = tensors["model.layers.1.self_attn.q_proj.weight"]["heads"]
        assert [h["head"] for h in q if h["rel_l2"] > 0] == [3]
        assert q[3]["kv_head"] == 0 and set(q[3]) == {"part", "head", "kv_head", "rel_l2", "max_abs", "cosine",
                                                      "nonfinite"}
        k = tensors["model.layers.1.self_attn.k_proj.weight"]["heads"]
        assert [(h["head"], h["readers"]) for h in k if h["rel_l2"] > 0] == [(1, [4, 5, 6, 7])]
        experts = tensors["model.layers.1.mlp.experts.gate_up_proj"]["experts"]
        assert [e["expert"] for e in experts if e["max_abs"]] == [1]
        assert experts[1]["rel_l2"] is None and experts[1]["cosine"] is None  # A's slice is zero: null, never NaN
        assert tensors["model.layers.1.mlp.down_proj.weight"]["heads"] is None

    def test_text_names_the_heads_and_experts(self, models, capsys):
        assert main(["diff", models[0], models[1], "--heads", "--no-cache"]) == 1
        out = capsys.readouterr().out
        assert "heads: 8 heads, 2 key/value heads (config.json beside the weights)" in out
        assert "model.layers.1.self_attn.q_proj.weight: q head 3 " in out
        assert "k kv head 1 (read by 4–7)" in out
        assert "model.layers.1.mlp.experts: 1 of 4 experts changed: 1 n/a" in out
        assert "nan" not in out.lower().replace("nan/inf", "")

    def test_without_config_it_says_so_and_heads_given_override(self, models, capsys):
        assert main(["diff", models[0], models[2], "--heads", "--no-cache", "--json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        # A's config is used; B's absence does not matter
        assert doc["head_counts"]["heads"] == H
        bare = models[2]
        assert main(["diff", bare, bare, "--heads"]) == 0
        assert "heads: head count unknown: no config.json beside the weights (use --heads N[,KV])" in \
            capsys.readouterr().out
        assert main(["diff", bare, bare, "--heads", "4,2", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["head_counts"]["heads"] == 4 and doc["head_counts"]["source"] == "--heads"
        q = next(t for t in doc["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
        assert len(q["heads"]) == 4

    def test_bad_heads_option_is_one_line(self, models, capsys):
        assert main(["diff", models[0], models[1], "--heads", "8,3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "8 heads do not split into 3" in err


def test_undefined_figures_say_why():
    unit = hd.UnitFigures(hd.Unit("q", 0, 0), None, 0.5, None, 0.25, 0.0, 0)
    assert hd.undefined_why(unit) == {"rel_l2": "A's slice is all zeros", "cosine": "a side's slice is all zeros"}
    assert math.isfinite(unit.max_abs)


@pytest.mark.parametrize("role", ["q", "o"])
def test_nan_and_inf_are_counted_and_left_out(ck, tmp_path, diff, role):
    """A head holding NaN or Inf: its figures over the finite positions (float64 reference),
    the others counted; by rows (q) and by columns (o)."""
    a = llama_gqa(0)
    b = {k: v.clone() for k, v in a.items()}
    name = f"model.layers.0.self_attn.{role}_proj.weight"
    head = (slice(2 * D, 3 * D), slice(None)) if role == "q" else (slice(None), slice(2 * D, 3 * D))
    b[name][head] += 0.125
    b[name][head][1, 2] = float("nan")
    b[name][head][3, 4] = float("inf")
    result = diff(write_model(tmp_path / "a", a, LLAMA_CONFIG, ck), write_model(tmp_path / "b", b, LLAMA_CONFIG, ck))
    _, found = breakdowns(result)
    unit = found[name].units[2]
    assert unit.nonfinite == 2 and lit(found[name]) == [2]
    finite = torch.isfinite(b[name][head])
    check_figures(unit, a[name][head][finite], b[name][head][finite])
    assert all(u.nonfinite == 0 and u.delta_sq == 0 for u in found[name].units if u.unit.index != 2)


def test_a_views_heads_go_first_and_alone_on_two_workers():
    """The engine gives a view's heads the first free worker, and starts nothing else beside
    them on two workers (the other core is the app's, to draw them); once they are in, the
    rest goes on."""
    from types import SimpleNamespace

    from weightscope.engine import protocol as msg
    from weightscope.engine.server import Server, Worker
    from weightscope.engine.worker import Task

    class Conn:
        def __init__(self):
            self.sent = []

        def send(self, task):
            self.sent.append(task.kind)

    server = Server(None, msg.Job("a", "b"), helpers=0)
    server.options = SimpleNamespace(device="cpu")
    helpers = [Worker(Conn()), Worker(Conn())]
    server.local, server.helpers = helpers[0], helpers[1:]  # (the first stands for the engine's own)
    job = SimpleNamespace(needs_sources=False)
    server.units.extend(Task(0, "unit", (job,)) for _ in range(3))
    server.urgent.extend([Task(7, "detail", (job,)), Task(8, "heads", (job,))])
    server.gathered[8] = ({1}, {}, lambda found: found, True, "heads")
    server.dispatch()
    assert [w.conn.sent for w in helpers] == [["heads"], []]
    helpers[0].busy = None  # the heads are in
    del server.gathered[8]
    server.dispatch()
    assert [w.conn.sent for w in helpers] == [["heads", "detail"], ["unit"]]
    server.threads.shutdown()


def test_head_counts_that_are_digits_but_no_numbers_are_refused_in_words():
    """'²' is a digit to `str.isdigit` but no number to `int`: from a GGUF file's metadata or
    `--heads`, it is said, never a traceback."""
    config, why = hd.gguf_counts({"general.architecture": "llama", "llama.attention.head_count": "²"})
    assert config is None and "head counts per layer" in why
    with pytest.raises(ValueError, match="positive integers"):
        hd.parse_override("²")
