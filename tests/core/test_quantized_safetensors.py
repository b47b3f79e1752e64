"""Quantized safetensors against their BF16 source: FP8 with 128×128 block scales
(DeepSeek-V3's `weight_scale_inv`), FP8 with per-channel or per-tensor scales
(compressed-tensors' and FBGEMM's `weight_scale`), and MXFP4 (gpt-oss's `_blocks`/`_scales`).

Each quantized checkpoint is made here from a BF16 source written with safetensors, the way
its tool makes it: block or channel maxima mapped to FP8's largest value 448, and for MXFP4
triton_kernels' `downcast_to_mxfp_torch` (the power-of-two scale at or above the group's
maximum / 6, values rounded to E2M1, two a byte, low nibble first), stored in transformers'
layout. The decoded values are checked against each tool's own dequantization formula, and
the comparison's SNR against what the format can keep:

- FP8 e4m3 keeps 3 mantissa bits, so rounding leaves each value a relative error of up to
  2⁻⁴, about 2⁻⁴/√3 RMS over a binade: 10·log₁₀(3·2⁸) ≈ 29 dB for the largest values of a
  binade and more for the smallest; 31.5 dB measured on normal weights. Scaling each block
  or channel to the range's top keeps values normal, so the granularity of the scales
  hardly matters: expect 30–33 dB for every FP8 variant.
- MXFP4 (E2M1) keeps 1 mantissa bit and, below a quarter of its group's maximum, rounds to
  the few subnormal steps (0, ±0.5): 18.5 dB measured on normal weights in groups of 32;
  expect 17–20 dB.
"""

import json
import math
import tracemalloc

import numpy as np
import pytest
import torch

from weightscope.cli import main
from weightscope.sources.formats import scaled

FP8_MAX = 448.0
BLOCK = 128
E, HIDDEN, INTER = 4, 256, 96  # experts of a small gpt-oss MLP


def normal(gen, *shape) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)


def source_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small BF16 Llama-style model whose linear weights fill 128×128 blocks raggedly."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = 320, 704
    sd = {"model.embed_tokens.weight": normal(gen, 500, hidden)}
    for i in range(2):
        p = f"model.layers.{i}."
        for proj, shape in (("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (64, hidden)),
                            ("self_attn.v_proj", (64, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                            ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)),
                            ("mlp.down_proj", (hidden, inter))):
            sd[f"{p}{proj}.weight"] = normal(gen, *shape)
        sd[f"{p}input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    sd["lm_head.weight"] = normal(gen, 500, hidden)
    return sd


def linear(name: str) -> bool:
    """What FP8 tools quantize: the decoder's linear layers (embeddings, norms and the head stay BF16)."""
    return name.startswith("model.layers.") and name.endswith("proj.weight")


def fp8_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, weight_scale_inv): each 128×128 block's maximum maps to 448; scale_inv = max / 448."""
    rows, cols = w.shape
    sr, sc = -(-rows // BLOCK), -(-cols // BLOCK)
    padded = torch.zeros(sr * BLOCK, sc * BLOCK)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(sr, BLOCK, sc, BLOCK)
    scale_inv = blocks.abs().amax(dim=(1, 3)) / FP8_MAX
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(sr * BLOCK, sc * BLOCK)[:rows, :cols].contiguous(), scale_inv


def fp8_scaled(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, weight_scale) as compressed-tensors writes them: scale = max / 448 per output
    channel ([out, 1], in the model's dtype) or per tensor ([1], float32)."""
    if per_channel:
        scale = (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).to(w.dtype)
    else:
        scale = (w.float().abs().amax() / FP8_MAX).reshape(1)
    return (w.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def unsigned_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    return (x >> shift) & ((1 << (32 - shift)) - 1)


def to_mxfp4(src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """triton_kernels' `downcast_to_mxfp_torch` along the last axis (rounding the scale up):
    (blocks [..., n/32, 16] of two E2M1 codes a byte, scales [..., n/32] of E8M0 exponents)."""
    *lead, n = src.shape
    groups = src.float().reshape(*lead, n // 32, 32)
    scale_bits = ((groups.abs().amax(dim=-1, keepdim=True) / 6.0).view(torch.int32) + 0x007FFFFF) & 0x7F800000
    scale = scale_bits.view(torch.float32)
    bits = (groups * torch.where(scale == 0, torch.tensor(0.0), 1.0 / scale)).reshape(*lead, n).view(torch.int32)
    signs, exponents, mantissas = bits & 0x80000000, unsigned_shift(bits, 23) & 0xFF, bits & 0x7FFFFF
    mantissas = torch.where(exponents < 127, (0x400000 | unsigned_shift(mantissas, 1)) >> (127 - exponents - 1),
                            mantissas)
    exponents = torch.maximum(exponents, torch.tensor(126)) - 126
    codes = torch.minimum(unsigned_shift(((exponents << 2) | unsigned_shift(mantissas, 21)) + 1, 1), torch.tensor(7))
    codes = (unsigned_shift(signs, 28) | codes).to(torch.uint8).reshape(*lead, n // 2, 2)
    packed = codes[..., 0] | (codes[..., 1] << 4)
    return packed.reshape(*lead, n // 32, 16), (scale_bits.reshape(*lead, n // 32) >> 23).to(torch.uint8)


def mxfp4_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """gpt-oss's `_get_mxfp4_tensor` in float32: E2M1 table, low nibble first, ldexp by scale − 127."""
    lut = torch.tensor(scaled.FP4.tolist())
    *lead, groups, _ = blocks.shape
    out = torch.empty(*lead, groups, 32)
    out[..., 0::2] = lut[(blocks & 0x0F).long()]
    out[..., 1::2] = lut[(blocks >> 4).long()]
    return torch.ldexp(out, (scales.int() - 127)[..., None]).reshape(*lead, groups * 32)


def run_json(capsys, a, b) -> tuple[dict, dict]:
    assert main(["diff", str(a), str(b), "--json", "--no-cache"]) == 1
    doc = json.loads(capsys.readouterr().out)
    return doc, {t["name"]: t for t in doc["tensors"]}


class TestFp8:
    def test_block_scales_against_the_bf16_source(self, ck, tmp_path, capsys):
        """DeepSeek-V3 style: every source tensor pairs by name; the FP8 weights show their format
        as the dtype and compare as their dequantized values, 30–33 dB; their scales are B-only."""
        sd = source_model()
        source = ck.write_safetensors(tmp_path / "source.safetensors", sd)
        quantized = {}
        for name, w in sd.items():
            if linear(name):
                quantized[name], quantized[name + "_scale_inv"] = fp8_blocks(w)
            else:
                quantized[name] = w
        path = ck.write_sharded_safetensors(tmp_path / "fp8", quantized, shards=3)
        doc, found = run_json(capsys, source, path)
        assert {n for n, t in found.items() if t["status"] != "only_b"} == set(sd)
        for name in sd:
            t = found[name]
            if not linear(name):
                assert t["status"] == "identical"
                continue
            assert (t["dtype_a"], t["dtype_b"], t["name_b"]) == ("bfloat16", "fp8_e4m3 128×128", name)
            assert t["shape_b"] == t["shape_a"] and t["status"] == "changed"
            assert 30 < t["diff"]["snr_db"] < 33, (name, t["diff"]["snr_db"])
            assert found[name + "_scale_inv"]["status"] == "only_b"
        assert any("fp8_e4m3 128×128 ×14" in n and "already applied" in n for n in doc["b"]["notes"])

    def test_values_are_deepseeks_dequantization(self, ck, tmp_path, opened):
        """Each value is the FP8 value times the scale of its 128×128 block (DeepSeek's weight_dequant)."""
        w = source_model()["model.layers.0.mlp.down_proj.weight"]
        q, scale_inv = fp8_blocks(w)
        c = opened(ck.write_safetensors(tmp_path / "fp8.safetensors", {"w.weight": q, "w.weight_scale_inv": scale_inv}))
        rows, cols = torch.meshgrid(torch.arange(q.shape[0]), torch.arange(q.shape[1]), indexing="ij")
        expected = q.float() * scale_inv[rows // BLOCK, cols // BLOCK]
        assert torch.equal(c.load("w.weight"), expected)
        info = c.tensors["w.weight"]
        assert (info.dtype, info.quant, info.nbytes) == ("float32", "fp8_e4m3 128×128", q.numel())

    @pytest.mark.parametrize("per_channel, label", [(True, "fp8_e4m3 per-channel"), (False, "fp8_e4m3 per-tensor")])
    def test_channel_and_tensor_scales(self, ck, tmp_path, capsys, opened, per_channel, label):
        """compressed-tensors style `weight_scale` ([out, 1] in BF16, or [1]), with a static
        `input_scale` that is listed, not applied."""
        sd = source_model(1)
        source = ck.write_safetensors(tmp_path / "source.safetensors", sd)
        quantized = {}
        for name, w in sd.items():
            if linear(name):
                stem = name.removesuffix(".weight")
                quantized[name], quantized[f"{stem}.weight_scale"] = fp8_scaled(w, per_channel)
                quantized[f"{stem}.input_scale"] = torch.tensor([0.05])
            else:
                quantized[name] = w
        path = ck.write_safetensors(tmp_path / "fp8.safetensors", quantized)
        doc, found = run_json(capsys, source, path)
        for name in filter(linear, sd):
            assert found[name]["dtype_b"] == label
            assert 30 < found[name]["diff"]["snr_db"] < 33, (name, found[name]["diff"]["snr_db"])
        assert any("activation scales (input_scale ×14)" in n for n in doc["b"]["notes"])
        name = "model.layers.1.mlp.up_proj.weight"
        q, scale = quantized[name], quantized[name.replace(".weight", ".weight_scale")]
        assert torch.equal(opened(path).load(name), q.float() * scale.float())

    def test_scale_of_the_wrong_shape_spoils_only_its_weight(self, ck, tmp_path, opened):
        q, scale_inv = fp8_blocks(source_model()["model.layers.0.mlp.up_proj.weight"])
        c = opened(ck.write_safetensors(tmp_path / "fp8.safetensors", {
            "bad.weight": q, "bad.weight_scale_inv": scale_inv[:, :2].contiguous(),
            "good.weight": q.clone(), "good.weight_scale_inv": scale_inv}))
        assert "neither per tensor, per channel ([704, 1]) nor in 128×128 blocks" in c.tensors["bad.weight"].error
        assert c.tensors["good.weight"].error is None and c.load("good.weight").shape == q.shape

    def test_scale_without_an_fp8_weight_is_named(self, ck, tmp_path, opened):
        """A scale beside a weight that is not FP8 (int8, packed NVFP4) is not applied, and a note says so."""
        c = opened(ck.write_safetensors(tmp_path / "int8.safetensors", {
            "x.weight": torch.ones(4, 4, dtype=torch.int8), "x.weight_scale": torch.ones(4, 1)}))
        assert c.tensors["x.weight"].quant is None and c.tensors["x.weight"].dtype == "int8"
        assert any("1 weight scales have no FP8 weight beside them" in n and "x.weight_scale" in n for n in c.notes)

    def test_chunks_bound_memory_and_change_nothing(self, ck, tmp_path, opened, monkeypatch):
        """Decoding goes a chunk of rows at a time: beyond the output it allocates a few chunks'
        worth, and any chunk size gives the same values."""
        gen = torch.Generator().manual_seed(3)
        q, scale_inv = fp8_blocks(normal(gen, 2000, 1000))
        path = ck.write_safetensors(tmp_path / "fp8.safetensors", {"w.weight": q, "w.weight_scale_inv": scale_inv})
        c = opened(path)
        scaled.fp8_values("float8_e4m3fn")  # the table is built once per process, with torch
        tracemalloc.start()
        whole = c.raw("w.weight")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < whole.nbytes + 4 * scaled.CHUNK_BYTES, peak
        monkeypatch.setattr(scaled, "CHUNK_BYTES", 3000)  # steps of a row, across block edges
        assert np.array_equal(opened(path).raw("w.weight"), whole)


class TestMxfp4:
    def gpt_oss(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """A gpt-oss MLP in transformers' BF16 layout: experts' weights [experts, in, out]."""
        gen = torch.Generator().manual_seed(seed)
        return {"model.layers.0.mlp.experts.gate_up_proj": normal(gen, E, HIDDEN, 2 * INTER),
                "model.layers.0.mlp.experts.down_proj": normal(gen, E, INTER, HIDDEN),
                "model.layers.0.mlp.experts.gate_up_proj_bias": normal(gen, E, 2 * INTER),
                "model.layers.0.mlp.router.weight": normal(gen, E, HIDDEN)}

    def quantized(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The experts' weights as MXFP4, as gpt-oss ships them: quantized along the input
        dimension in [experts, out, in] layout; everything else as it was."""
        out = {}
        for name, w in sd.items():
            if name.endswith("_proj"):
                out[f"{name}_blocks"], out[f"{name}_scales"] = to_mxfp4(w.transpose(1, 2).contiguous())
            else:
                out[name] = w
        return out

    def test_against_the_bf16_source(self, ck, tmp_path, capsys):
        """`gate_up_proj_blocks` + `_scales` pair with the source's `gate_up_proj` in its shape, as
        mxfp4, 17–20 dB; the scales are B-only and name_b is the blocks' stored name."""
        sd = self.gpt_oss()
        source = ck.write_safetensors(tmp_path / "source.safetensors", sd)
        path = ck.write_safetensors(tmp_path / "mxfp4.safetensors", self.quantized(sd))
        doc, found = run_json(capsys, source, path)
        assert {n for n, t in found.items() if t["status"] != "only_b"} == set(sd)
        for proj in ("gate_up_proj", "down_proj"):
            t = found[f"model.layers.0.mlp.experts.{proj}"]
            assert (t["dtype_b"], t["shape_b"]) == ("mxfp4", list(sd[f"model.layers.0.mlp.experts.{proj}"].shape))
            assert t["name_b"] == f"model.layers.0.mlp.experts.{proj}_blocks"
            assert 17 < t["diff"]["snr_db"] < 20, (proj, t["diff"]["snr_db"])
            assert found[f"model.layers.0.mlp.experts.{proj}_scales"]["status"] == "only_b"
        assert found["model.layers.0.mlp.router.weight"]["status"] == "identical"
        assert any("mxfp4 ×2" in n for n in doc["b"]["notes"])

    def test_values_are_gpt_oss_dequantization(self, ck, tmp_path, opened, monkeypatch):
        """transformers' layout: gpt-oss's decoding, last two dimensions swapped; the original
        checkpoint's `.blocks`/`.scales`: gpt-oss's decoding as is. Any chunk size, same values."""
        q = self.quantized(self.gpt_oss(1))
        blocks, scales = (q[f"model.layers.0.mlp.experts.down_proj_{part}"] for part in ("blocks", "scales"))
        reference = mxfp4_reference(blocks, scales)
        path = ck.write_safetensors(tmp_path / "mxfp4.safetensors", {
            "experts.down_proj_blocks": blocks, "experts.down_proj_scales": scales,
            "block.0.mlp.mlp2_weight.blocks": blocks.clone(), "block.0.mlp.mlp2_weight.scales": scales.clone()})
        c = opened(path)
        assert torch.equal(c.load("experts.down_proj"), reference.transpose(1, 2))
        assert torch.equal(c.load("block.0.mlp.mlp2_weight"), reference)
        monkeypatch.setattr(scaled, "CHUNK_BYTES", 1000)
        assert torch.equal(opened(path).load("experts.down_proj"), reference.transpose(1, 2))

    def test_nan_scale_and_bad_shapes(self, ck, tmp_path, opened):
        """Exponent 255 is NaN (OCP MX): its 32 values read as NaN; scales that do not fit their
        blocks spoil only that weight."""
        q = self.quantized(self.gpt_oss(2))
        blocks, scales = (q[f"model.layers.0.mlp.experts.down_proj_{part}"] for part in ("blocks", "scales"))
        scales = scales.clone()
        scales[0, 0, 0] = 255
        c = opened(ck.write_safetensors(tmp_path / "mxfp4.safetensors", {
            "a.w_blocks": blocks, "a.w_scales": scales,
            "b.w_blocks": blocks.clone(), "b.w_scales": scales[..., :1].contiguous()}))
        values = c.load("a.w")
        assert int(values.isnan().sum()) == 32 and values[0, :32, 0].isnan().all()
        assert "MXFP4 blocks of shape" in c.tensors["b.w"].error
        assert math.isfinite(float(values[1].abs().max()))
