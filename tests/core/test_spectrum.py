"""The spectrum of a change (issue 6): singular values, effective and stable rank, energy shares.

Changes are built with known singular values (Δ = U diag(σ) Vᵀ with orthonormal U, V), so
the exact values are known without an SVD of the whole matrix.
"""

import json
import math

import pytest
import torch

from weightscope.cli import main
from weightscope.analysis import spectrum as sp
from weightscope.sources.pair import open_pair
from weightscope.compare.align import Pair, align
from weightscope.compare.stats import Cancelled


def low_rank(rows: int, cols: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(sigma), generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, len(sigma), generator=gen, dtype=torch.float64))[0]
    return (u * sigma.double()) @ v.T


def pair_of(ck, tmp_path, a: torch.Tensor, b: torch.Tensor, name: str = "w"):
    """Two one-tensor checkpoints, opened, and the pair of their tensor."""
    pa = ck.write_safetensors(tmp_path / "a.safetensors", {name: a})
    pb = ck.write_safetensors(tmp_path / "b.safetensors", {name: b})
    ca, cb = open_pair(str(pa), str(pb))
    return ca, cb, align(ca, cb).pairs[0]


def entropy_rank(sigma) -> float:
    energy = torch.tensor(sigma, dtype=torch.float64) ** 2
    p = energy / energy.sum()
    return math.exp(float(-(p * p.log()).sum()))


class TestRankEight:
    """The issue's case: a rank-8 change to a 4096 × 4096 matrix."""

    SIGMA = torch.linspace(1.0, 0.9, 8)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_effective_rank_and_singular_values(self, ck, tmp_path, dtype):
        """Effective rank ≈ 8 and σ₁…σ₈ within 1% of the exact values (randomized SVD)."""
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(4096, 4096, generator=gen) * 0.02
        changed = (w.double() + low_rank(4096, 4096, self.SIGMA)).to(dtype)
        a, b, pair = pair_of(ck, tmp_path, w.to(dtype), changed)
        with a, b:
            s = sp.pair_spectrum(a, b, pair)
        assert s.method == "randomized" and s.shape == (4096, 4096)
        assert len(s.singular_values) == sp.TOP
        for got, exact in zip(s.singular_values[:8], self.SIGMA.tolist()):
            assert got == pytest.approx(exact, rel=0.01)
        assert s.singular_values[8] < 0.01 * s.singular_values[7]  # rounding noise only
        assert s.effective_rank == pytest.approx(8, abs=0.1)
        assert s.share(8) > 0.99  # bf16's rounding of B holds the rest
        assert s.stable_rank == pytest.approx(float((self.SIGMA ** 2).sum() / self.SIGMA[0] ** 2), rel=0.01)

    def test_from_lora_factors(self):
        """From B (4096 × 8) and A (8 × 4096) via QR: exact, without forming B@A. The factors
        are U·diag(σ)·M and M⁻¹·Vᵀ, far from orthogonal, with the product's σ known."""
        gen = torch.Generator().manual_seed(2)
        u = torch.linalg.qr(torch.randn(4096, 8, generator=gen, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(4096, 8, generator=gen, dtype=torch.float64))[0]
        mix = torch.randn(8, 8, generator=gen, dtype=torch.float64) + 3 * torch.eye(8, dtype=torch.float64)
        b, a = (u * self.SIGMA.double()) @ mix, torch.linalg.solve(mix, v.T)
        s = sp.factor_spectrum(b.float(), a.float(), 0.5)
        exact = (0.5 * self.SIGMA).tolist()
        assert s.method == "factors" and s.shape == (4096, 4096)
        assert s.singular_values == pytest.approx(exact, rel=1e-5)  # the factors were rounded to float32
        assert s.effective_rank == pytest.approx(entropy_rank(exact), rel=1e-5)
        assert s.cumulative_share[-1] == pytest.approx(1, rel=1e-9)


class TestFigures:
    def test_exact_for_small_matrices(self, ck, tmp_path):
        """A small pair gets an exact SVD; the figures follow their definitions."""
        gen = torch.Generator().manual_seed(3)
        a = torch.randn(96, 64, generator=gen)
        b = a + torch.randn(96, 64, generator=gen)
        ca, cb, pair = pair_of(ck, tmp_path, a, b)
        with ca, cb:
            s = sp.pair_spectrum(ca, cb, pair)
        exact = torch.linalg.svdvals((b.double() - a.double())).tolist()
        assert s.method == "exact"
        assert s.singular_values == pytest.approx(exact[:sp.TOP], rel=1e-6)
        frobenius = float(torch.linalg.norm(b.double() - a.double()))
        assert s.frobenius == pytest.approx(frobenius, rel=1e-6)
        assert s.stable_rank == pytest.approx(frobenius ** 2 / exact[0] ** 2, rel=1e-5)
        assert s.effective_rank == pytest.approx(entropy_rank(exact[:sp.TOP]), rel=1e-6)
        assert s.share(1) == pytest.approx(exact[0] ** 2 / frobenius ** 2, rel=1e-5)
        assert s.share(sp.TOP) == pytest.approx(sum(x * x for x in exact[:sp.TOP]) / frobenius ** 2, rel=1e-5)
        assert s.share(1000) == s.share(sp.TOP) and s.share(0) is None

    def test_streamed_randomized_matches_exact(self, ck, tmp_path, monkeypatch):
        """Products read in row chunks give the same top values as the exact SVD."""
        monkeypatch.setattr(sp, "DENSE_MAX", 1000)
        monkeypatch.setattr(sp, "CHUNK", 5000)
        a = torch.zeros(600, 500)
        b = low_rank(600, 500, torch.tensor([5.0, 3.0, 2.0, 1.0])).float()
        ca, cb, pair = pair_of(ck, tmp_path, a, b)
        with ca, cb:
            s = sp.pair_spectrum(ca, cb, pair)
        assert s.method == "randomized"
        assert s.singular_values[:4] == pytest.approx([5, 3, 2, 1], rel=1e-5)
        assert s.frobenius == pytest.approx(math.sqrt(39), rel=1e-6)

    def test_zero_change(self, ck, tmp_path):
        ca, cb, pair = pair_of(ck, tmp_path, torch.ones(8, 8), torch.ones(8, 8))
        with ca, cb:
            s = sp.pair_spectrum(ca, cb, pair)
        assert (s.frobenius, s.effective_rank, s.stable_rank, s.cumulative_share) == (0, None, None, ())

    def test_nonfinite_counted_and_zeroed(self, ck, tmp_path):
        b = torch.ones(8, 8)
        b[2, 3] = float("nan")
        b[0, 0] = 3.0
        ca, cb, pair = pair_of(ck, tmp_path, torch.ones(8, 8), b)
        with ca, cb:
            s = sp.pair_spectrum(ca, cb, pair)
        assert s.nonfinite == 1
        assert s.singular_values[0] == pytest.approx(2.0)

    def test_no_spectrum_for_vectors_or_other_shapes(self, ck, tmp_path):
        ca, cb, pair = pair_of(ck, tmp_path, torch.ones(8), torch.zeros(8))
        with ca, cb:
            assert sp.pair_spectrum(ca, cb, pair) is None
            assert sp.pair_spectrum(ca, cb, Pair("w", pair.a, None)) is None

    def test_conv_kernels_are_flattened(self, ck, tmp_path):
        """A 4-D kernel is its first dimension by all the others."""
        ca, cb, pair = pair_of(ck, tmp_path, torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2))
        with ca, cb:
            s = sp.pair_spectrum(ca, cb, pair)
        assert s.shape == (4, 12)
        assert s.singular_values[0] == pytest.approx(math.sqrt(48))

    def test_cancel(self, ck, tmp_path, monkeypatch):
        monkeypatch.setattr(sp, "EXACT_WORK", 0)
        ca, cb, pair = pair_of(ck, tmp_path, torch.zeros(200, 200), torch.ones(200, 200))
        with ca, cb, pytest.raises(Cancelled):
            sp.pair_spectrum(ca, cb, pair, should_cancel=lambda: True)


class TestAdapters:
    def test_adapter_pair_uses_the_factors(self, ck, tmp_path):
        """Base against base + ΔW: the spectrum is ΔW's, from the factors, exactly r values."""
        sd = ck.llama_like(0, hidden=16, vocab=64)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        module = "model.layers.0.self_attn.q_proj"
        gen = torch.Generator().manual_seed(4)
        lora_a, lora_b = torch.randn(4, 16, generator=gen), torch.randn(16, 4, generator=gen)
        (tmp_path / "adapter").mkdir()
        ck.write_safetensors(tmp_path / "adapter" / "adapter_model.safetensors",
                             {f"base_model.model.{module}.lora_A.weight": lora_a,
                              f"base_model.model.{module}.lora_B.weight": lora_b})
        (tmp_path / "adapter" / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
        a, b = open_pair(str(base), str(tmp_path / "adapter"))
        with a, b:
            pair = next(p for p in align(a, b).pairs if p.name == f"{module}.weight")
            s = sp.pair_spectrum(a, b, pair)
            assert s == sp.module_spectrum(b, f"{module}.weight")
        exact = torch.linalg.svdvals(2 * lora_b.double() @ lora_a.double()).tolist()[:4]
        assert s.method == "factors" and len(s.singular_values) == 4
        assert s.singular_values == pytest.approx(exact, rel=1e-9)

    def test_cli_spectrum(self, ck, tmp_path, capsys):
        """`diff --json --spectrum` adds a spectrum object to changed pairs of 2+ dimensions, null elsewhere."""
        sd = ck.llama_like(0, hidden=16, vocab=64)
        tuned = dict(sd)
        up = "model.layers.0.mlp.up_proj.weight"
        tuned[up] = sd[up] + low_rank(32, 16, torch.tensor([1.0, 0.5])).float()
        tuned["model.norm.weight"] = sd["model.norm.weight"] + 1
        a = ck.write_safetensors(tmp_path / "a.safetensors", sd)
        b = ck.write_safetensors(tmp_path / "b.safetensors", tuned)
        main(["diff", str(a), str(b), "--json", "--spectrum", "--no-cache"])
        doc = json.loads(capsys.readouterr().out)
        by_name = {t["name"]: t for t in doc["tensors"]}
        up = by_name[up]["spectrum"]
        assert set(up) == {"shape", "method", "singular_values", "frobenius", "effective_rank", "stable_rank",
                           "cumulative_share", "nonfinite"}
        assert up["singular_values"][:2] == pytest.approx([1.0, 0.5], rel=1e-5)
        assert by_name["model.norm.weight"]["spectrum"] is None
        assert by_name["lm_head.weight"]["spectrum"] is None
        assert main(["diff", str(a), str(b), "--spectrum"]) == 2  # JSON only
