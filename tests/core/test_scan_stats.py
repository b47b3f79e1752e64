"""The whole-checkpoint scan on real safetensors and torch.save files: statuses, figures,
identical pairs decided from bytes, cancellation, progress, histograms and `inspect`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weightscope.compare import catalog as cat
from weightscope.compare import pieces, stats
from weightscope.compare import plan as plans
from weightscope.compare import scan as scan_module
from weightscope.compare.align import align
from weightscope.sources.discover import open_checkpoint
from weightscope.compare.scan import ScanOptions, inspect, scan


def write(path, sd: dict[str, torch.Tensor]):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def randn(seed: int, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def nudged_bf16(t: torch.Tensor) -> torch.Tensor:
    """`t` (bf16) with every other element one bf16 step away: inside bf16's tolerance."""
    bits = t.view(torch.int16).clone()
    bits.view(-1)[::2] += 1
    return bits.view(torch.bfloat16)


def pair_files(tmp_path):
    """A and B with one pair of every status; returns (path A, path B, A's dict, B's dict)."""
    embed = randn(0, 32, 16)
    norm = torch.ones(16)
    base_bf16 = randn(1, 24, 16, dtype=torch.bfloat16)
    q = randn(2, 16, 16)
    k = randn(3, 16, 16)
    a = {
        "model.embed_tokens.weight": embed,                       # identical
        "model.norm.weight": norm,                                # value_equal: f32 -> f64, same values
        "model.layers.0.mlp.weight": base_bf16,                   # close: one bf16 step
        "model.layers.0.q_proj.weight": q,                        # close under bf16 defaults: f32 -> bf16
        "model.layers.0.k_proj.weight": k,                        # changed
        "model.layers.0.resized.weight": randn(4, 4, 16),         # shape_mismatch
        "model.gone.weight": randn(5, 8),                         # only_a
    }
    b = {
        "model.embed_tokens.weight": embed.clone(),
        "model.norm.weight": norm.to(torch.float64),
        "model.layers.0.mlp.weight": nudged_bf16(base_bf16),
        "model.layers.0.q_proj.weight": q.to(torch.bfloat16),
        "model.layers.0.k_proj.weight": k + 0.1 * randn(6, 16, 16),
        "model.layers.0.resized.weight": randn(7, 6, 16),
        "model.new.weight": randn(8, 3),                          # only_b
    }
    b["model.layers.0.k_proj.weight"][0, 0] = math.nan
    return write(tmp_path / "a.safetensors", a), write(tmp_path / "b.safetensors", b), a, b


EXPECTED = {
    "model.embed_tokens.weight": "identical",
    "model.norm.weight": "value_equal",
    "model.layers.0.mlp.weight": "close",
    "model.layers.0.q_proj.weight": "close",
    "model.layers.0.k_proj.weight": "changed",
    "model.layers.0.resized.weight": "shape_mismatch",
    "model.gone.weight": "only_a",
    "model.new.weight": "only_b",
}


@pytest.fixture
def opened_pair(tmp_path):
    path_a, path_b, sd_a, sd_b = pair_files(tmp_path)
    a, b = open_checkpoint(path_a), open_checkpoint(path_b)
    yield a, b, align(a, b), sd_a, sd_b
    a.close()
    b.close()


def by_name(results):
    return {r.pair.name: r for r in results}


def assert_side_matches(side: stats.SideStats, t: torch.Tensor) -> None:
    x = t.reshape(-1).to(torch.float64).numpy()
    f = x[np.isfinite(x)]
    assert (side.nan, side.finite) == (int(np.isnan(x).sum()), f.size)
    np.testing.assert_allclose([side.min, side.max, side.mean, side.std, side.l2],
                               [f.min(), f.max(), f.mean(), f.std(), np.sqrt(f @ f)], rtol=1e-6, atol=1e-12)


class TestStatuses:
    def test_every_status(self, opened_pair):
        a, b, alignment, sd_a, sd_b = opened_pair
        results = by_name(scan(alignment, a, b))
        assert {n: r.status for n, r in results.items()} == EXPECTED
        assert [r.pair.name for r in scan(alignment, a, b)] == [p.name for p in alignment.pairs]

    def test_figures_per_status(self, opened_pair):
        a, b, alignment, sd_a, sd_b = opened_pair
        r = by_name(scan(alignment, a, b))
        same = r["model.embed_tokens.weight"]
        assert same.a == same.b and same.diff.max_abs == 0 and same.diff.changed == 0
        assert same.diff.rel_l2 == 0.0 and same.diff.cosine == 1.0
        assert_side_matches(same.a, sd_a["model.embed_tokens.weight"])

        close = r["model.layers.0.mlp.weight"].diff
        assert close.mismatched == 0 and close.changed == 24 * 16 // 2
        assert (close.atol, close.rtol) == (1e-5, 1.6e-2)

        mixed = r["model.layers.0.q_proj.weight"]
        assert mixed.diff.rtol == 1.6e-2 and mixed.diff.mismatched == 0 and mixed.diff.changed > 0
        assert_side_matches(mixed.b, sd_b["model.layers.0.q_proj.weight"])

        changed = r["model.layers.0.k_proj.weight"]
        assert changed.diff.mismatched > 0 and changed.b.nan == 1 and changed.a.nan == 0
        ka, kb = sd_a["model.layers.0.k_proj.weight"].double(), sd_b["model.layers.0.k_proj.weight"].double()
        both = torch.isfinite(kb)
        expected_rel = float((kb - ka)[both].norm() / ka[both].norm())
        assert changed.diff.rel_l2 == pytest.approx(expected_rel, rel=1e-6)
        assert changed.diff.changed_fraction == 1.0

        for name in ("model.layers.0.resized.weight",):
            assert r[name].a is not None and r[name].b is not None and r[name].diff is None
        assert r["model.gone.weight"].a is not None and r["model.gone.weight"].b is None
        assert r["model.new.weight"].b is not None and r["model.new.weight"].a is None
        assert_side_matches(r["model.new.weight"].b, sd_b["model.new.weight"])

    def test_atol_override_makes_changed_close(self, opened_pair):
        a, b, alignment, *_ = opened_pair
        loose = by_name(scan(alignment, a, b, ScanOptions(atol=10.0)))
        k = loose["model.layers.0.k_proj.weight"]
        # the NaN position stays a mismatch, whatever the tolerance
        assert k.status == "changed" and k.diff.mismatched == 1 and k.diff.atol == 10.0

        strict = by_name(scan(alignment, a, b, ScanOptions(atol=0.0, rtol=0.0)))
        assert strict["model.layers.0.mlp.weight"].status == "changed"
        assert strict["model.layers.0.q_proj.weight"].status == "changed"
        assert strict["model.norm.weight"].status == "value_equal"
        assert strict["model.embed_tokens.weight"].status == "identical"

    def test_tolerance_turns_changed_into_close(self, tmp_path):
        base = randn(9, 64)
        path_a = write(tmp_path / "a.safetensors", {"w": base})
        path_b = write(tmp_path / "b.safetensors", {"w": base + 1e-3})
        with open_checkpoint(path_a) as a, open_checkpoint(path_b) as b:
            alignment = align(a, b)
            assert scan(alignment, a, b)[0].status == "changed"
            assert scan(alignment, a, b, ScanOptions(atol=2e-3))[0].status == "close"
            assert scan(alignment, a, b, ScanOptions(atol=0.0, rtol=1.0))[0].status == "close"

    def test_identical_pairs_are_summed_once(self, opened_pair):
        """Equal bytes are found by comparing bytes, and such a pair's pieces are summed as one
        side (flagged EQUAL); pairs that differ by one value are not."""
        a, b, alignment, sd_a, _ = opened_pair
        catalog = cat.build(a, b, alignment)
        plan = plans.build(catalog)
        (unit,) = plan.units
        output = scan_module.run_unit(unit)
        names = [catalog.names[o] for o in unit.owners]
        equal = {name for name, flags in zip(names, output.flags) if flags & pieces.EQUAL}
        assert equal == {"model.embed_tokens.weight"}

    def test_complex_gets_a_status_without_statistics(self, tmp_path):
        z = torch.randn(4, dtype=torch.complex64)
        path_a = write(tmp_path / "a.safetensors", {"same": z, "moved": z.clone()})
        path_b = write(tmp_path / "b.safetensors", {"same": z.clone(), "moved": z * 2})
        with open_checkpoint(path_a) as a, open_checkpoint(path_b) as b:
            results = by_name(scan(align(a, b), a, b))
        assert results["same"].status == "identical" and results["moved"].status == "changed"
        assert all(r.notes and r.a is None and r.diff is None for r in results.values())

    def test_unaligned_spans(self, tmp_path):
        """A float32 tensor after an odd number of bf16 values starts off a 4-byte boundary."""
        sd = {"a_odd": randn(10, 3, dtype=torch.bfloat16), "b_wide": randn(11, 1001), "c_f64": randn(12, 7).double()}
        moved = {**sd, "b_wide": sd["b_wide"] * 1.5, "c_f64": sd["c_f64"] - 1}
        with open_checkpoint(write(tmp_path / "a.safetensors", sd)) as a, \
                open_checkpoint(write(tmp_path / "b.safetensors", moved)) as b:
            results = by_name(scan(align(a, b), a, b))
        assert results["b_wide"].status == "changed"
        assert results["b_wide"].diff.rel_l2 == pytest.approx(0.5, rel=1e-6)
        assert results["c_f64"].diff.max_abs == pytest.approx(1.0, rel=1e-9)
        assert_side_matches(results["b_wide"].a, sd["b_wide"])

    def test_torch_device_path_agrees(self, opened_pair, monkeypatch):
        """A torch device other than the kernels' "cpu" (here "cpu:0") gives the same results."""
        a, b, alignment, *_ = opened_pair
        kernels = by_name(scan(alignment, a, b))
        torch_path = by_name(scan(alignment, a, b, ScanOptions(device="cpu:0")))
        assert {n: r.status for n, r in torch_path.items()} == EXPECTED
        for name, r in kernels.items():
            t = torch_path[name]
            for x, y in ((r.a, t.a), (r.b, t.b), (r.diff, t.diff)):
                assert (x is None) == (y is None)
                if x is not None:
                    for field, value in vars(x).items():
                        other = getattr(y, field)
                        if isinstance(value, float):
                            assert other == pytest.approx(value, rel=1e-9, abs=1e-15), (name, field)
                        else:
                            assert other == value, (name, field)


class TestSharded:
    def test_llama_like_shards(self, ck, tmp_path, monkeypatch):
        sd_a = ck.llama_like(0, layers=3, hidden=16)
        sd_b = dict(sd_a)
        sd_b["model.layers.1.mlp.up_proj.weight"] = sd_a["model.layers.1.mlp.up_proj.weight"] * 1.01
        sd_b["lm_head.weight"] = sd_a["lm_head.weight"].to(torch.bfloat16).float()  # bf16-level noise
        ck.write_sharded_safetensors(tmp_path / "a", sd_a, shards=3)
        ck.write_sharded_safetensors(tmp_path / "b", sd_b, shards=2)
        with open_checkpoint(str(tmp_path / "a")) as a, open_checkpoint(str(tmp_path / "b")) as b:
            alignment = align(a, b)
            statuses = {r.pair.name: r.status for r in scan(alignment, a, b)}
            catalog = cat.build(a, b, alignment)
            order = [catalog.names[o] for u in plans.build(catalog).units for o in dict.fromkeys(u.owners.tolist())]
            in_file_order = [n for n, _ in sorted(a.tensors.items(), key=lambda kv: (kv[1].file, kv[1].span[0]))]
        assert order == in_file_order
        assert statuses.pop("model.layers.1.mlp.up_proj.weight") == "changed"
        assert statuses.pop("lm_head.weight") == "changed"  # float32 tolerance: bf16 rounding is a change
        assert set(statuses.values()) == {"identical"}


@pytest.fixture
def small_units(monkeypatch):
    """Units of 1 KB: the test pair is several units, each a run of a few tensors."""
    monkeypatch.setattr(plans, "UNIT_BYTES", 1024)


class TestCancelAndProgress:
    def test_cancel_stops_early(self, opened_pair, small_units):
        a, b, alignment, *_ = opened_pair
        calls = []

        def should_cancel() -> bool:
            calls.append(1)
            return len(calls) > 1

        results = scan(alignment, a, b, should_cancel=should_cancel)
        assert 1 <= len(results) < len(alignment.pairs)
        catalog = cat.build(a, b, alignment)
        (first, *_) = plans.build(catalog).units
        assert {r.pair.name for r in results} == {catalog.names[o] for o in first.owners}  # the first unit's pairs

    def test_cancel_from_the_start(self, opened_pair):
        a, b, alignment, *_ = opened_pair
        assert scan(alignment, a, b, should_cancel=lambda: True) == []

    def test_progress_increases_to_the_total(self, opened_pair, small_units):
        a, b, alignment, *_ = opened_pair
        seen = []
        scan(alignment, a, b, progress=lambda done, total: seen.append((done, total)))
        assert len(seen) > 1
        totals = {t for _, t in seen}
        done = [d for d, _ in seen]
        assert totals == {a.nbytes + b.nbytes}
        assert done == sorted(done) and done[0] > 0 and done[-1] == a.nbytes + b.nbytes

    def test_unit_boundaries_change_nothing(self, opened_pair, monkeypatch):
        """Units that split a tensor, and pieces of 100 elements, give the same figures as one unit."""
        a, b, alignment, *_ = opened_pair
        whole = by_name(scan(alignment, a, b))
        monkeypatch.setattr(plans, "UNIT_BYTES", 700)
        monkeypatch.setattr(pieces, "PIECE", 100)
        split = by_name(scan(alignment, a, b))
        for name, r in whole.items():
            s = split[name]
            assert s.status == r.status, name
            for x, y in ((r.a, s.a), (r.b, s.b), (r.diff, s.diff)):
                assert (x is None) == (y is None)
                if x is not None:
                    for field, value in vars(x).items():
                        other = getattr(y, field)
                        if isinstance(value, float):
                            assert other == pytest.approx(value, rel=1e-9, abs=1e-15), (name, field)
                        else:
                            assert other == value, (name, field)


class TestHistograms:
    def test_sides_and_diff(self, opened_pair):
        a, b, alignment, *_ = opened_pair
        results = by_name(scan(alignment, a, b, ScanOptions(histograms=True)))
        assert set(results["model.layers.0.k_proj.weight"].histograms) == {"a", "b", "diff"}
        frozen = results["model.embed_tokens.weight"].histograms  # identical: B's is A's, and Δ is zero
        assert set(frozen) == {"a", "b"} and frozen["a"] == frozen["b"]
        assert set(results["model.layers.0.mlp.weight"].histograms) == {"a", "b", "diff"}
        k = results["model.layers.0.k_proj.weight"]
        h = k.histograms
        assert (h["a"].lo, h["a"].hi) == (h["b"].lo, h["b"].hi)
        for side, figures in (("a", k.a), ("b", k.b)):
            assert sum(h[side].counts) + h[side].below + h[side].above == figures.finite
        assert not scan(alignment, a, b)[0].histograms  # only when asked

    def test_one_sided_and_mismatched_pairs_have_side_histograms(self, opened_pair):
        a, b, alignment, *_ = opened_pair
        results = by_name(scan(alignment, a, b, ScanOptions(histograms=True)))
        assert set(results["model.layers.0.resized.weight"].histograms) == {"a", "b"}
        assert set(results["model.gone.weight"].histograms) == {"a"}
        assert set(results["model.new.weight"].histograms) == {"b"}

    def test_same_numel_different_shape_has_no_diff(self, tmp_path):
        t = randn(13, 6, 4)
        with open_checkpoint(write(tmp_path / "a.safetensors", {"w": t})) as a, \
                open_checkpoint(write(tmp_path / "b.safetensors", {"w": t.reshape(4, 6)})) as b:
            (result,) = scan(align(a, b), a, b, ScanOptions(histograms=True))
        assert result.status == "shape_mismatch" and set(result.histograms) == {"a", "b"}


class TestInspect:
    def test_stats_per_tensor_and_tied_names(self, ck, tmp_path):
        sd = ck.tied(ck.llama_like(2, hidden=16))
        sd["model.norm.weight"] = sd["model.norm.weight"].clone()
        sd["model.norm.weight"][3] = math.inf
        torch.save(sd, tmp_path / "pytorch_model.bin")
        with open_checkpoint(str(tmp_path / "pytorch_model.bin")) as checkpoint:
            seen = []
            results = inspect(checkpoint, progress=lambda d, t: seen.append((d, t)))
            tied_info = checkpoint.tensors["lm_head.weight"]
        assert tied_info.tied_to == "model.embed_tokens.weight"
        found = {info.name: (side, error) for info, side, error in results}
        assert set(found) == set(sd) and all(error is None for _, error in found.values())
        assert found["lm_head.weight"][0] == found["model.embed_tokens.weight"][0]
        for name, (side, _) in found.items():
            assert_side_matches(side, sd[name])
        assert found["model.norm.weight"][0].posinf == 1
        assert seen[-1][0] == seen[-1][1] == checkpoint.nbytes  # tied data counted once

    def test_safetensors_and_torch_path(self, tmp_path):
        sd = {"x": randn(14, 50, dtype=torch.bfloat16), "e": torch.zeros(0), "s": torch.tensor(2.0)}
        with open_checkpoint(write(tmp_path / "m.safetensors", sd)) as checkpoint:
            kernels = {i.name: s for i, s, _ in inspect(checkpoint)}
            torch_path = {i.name: s for i, s, _ in inspect(checkpoint, device="cpu:0")}
        assert_side_matches(kernels["x"], sd["x"])
        assert kernels["e"].finite == 0 and kernels["e"].mean is None
        assert kernels["s"].mean == 2.0 and kernels["s"].std == 0.0
        for name in sd:
            assert kernels[name].finite == torch_path[name].finite
            if kernels[name].mean is not None:
                assert torch_path[name].mean == pytest.approx(kernels[name].mean, rel=1e-9)

    def test_cancel(self, tmp_path):
        with open_checkpoint(write(tmp_path / "m.safetensors", {"x": randn(15, 10), "y": randn(16, 10)})) as c:
            assert inspect(c, should_cancel=lambda: True) == []
