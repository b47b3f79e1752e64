"""Statuses of aligned pairs on checkpoints written by the real writers (issue 2, "Done when")."""

import pytest
import torch

from weightscope.compare import plan as plans
from weightscope.compare.align import align, unwrap
from weightscope.sources.checkpoint import Checkpoint, TensorInfo
from weightscope.report.diff import exit_status
from weightscope.compare.scan import scan


def all_status(d, status):
    """Every pair of the diff has `status`, and each side's tensor is paired with its namesake."""
    assert set(d.statuses.values()) == {status}, {n: s for n, s in d.statuses.items() if s != status}


def without(sd, *names):
    return {n: t for n, t in sd.items() if n not in names}


class TestSameWeights:
    def test_sharded_vs_single(self, ck, tmp_path, diff):
        """A sharded safetensors directory and the same weights in one file are identical."""
        sd = ck.llama_like(0)
        d = diff(ck.write_sharded_safetensors(tmp_path / "sharded", sd, shards=3),
                 ck.write_safetensors(tmp_path / "single.safetensors", sd))
        all_status(d, "identical")
        assert len(d.results) == len(sd)
        assert exit_status(d.catalog, d.table) == 0

    def test_sharded_bin_vs_single_safetensors(self, ck, tmp_path, diff):
        """Sharded .bin and single-file safetensors of the same weights are identical."""
        sd = ck.llama_like(1)
        d = diff(ck.write_sharded_bin(tmp_path / "bin", sd), ck.write_safetensors(tmp_path / "m.safetensors", sd))
        all_status(d, "identical")

    def test_safetensors_vs_bin(self, ck, tmp_path, diff):
        """safetensors and .bin of the same weights are identical, bf16 included."""
        bf16 = ck.llama_like(3, layers=1, dtype=torch.bfloat16)
        sd = ck.llama_like(2) | {f"bf16.{n}": t for n, t in bf16.items()}
        torch.save(sd, tmp_path / "pytorch_model.bin")
        d = diff(ck.write_safetensors(tmp_path / "model.safetensors", sd), tmp_path / "pytorch_model.bin")
        all_status(d, "identical")
        assert exit_status(d.catalog, d.table) == 0

    def test_edge_tensors_across_formats(self, ck, tmp_path, diff):
        """Zero-length tensors and 0-dim scalars compare identical between safetensors and .bin."""
        sd = {"empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5), "iscalar": torch.tensor(3),
              "empty_bf16": torch.zeros(0, dtype=torch.bfloat16), "scalar_bf16": torch.tensor(1.0, dtype=torch.bfloat16)}
        torch.save(sd, tmp_path / "m.bin")
        torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
        st = ck.write_safetensors(tmp_path / "m.safetensors", sd)
        all_status(diff(st, tmp_path / "m.bin"), "identical")
        all_status(diff(tmp_path / "legacy.bin", st), "identical")

    def test_edge_tensors_across_dtypes(self, ck, tmp_path, diff):
        """Zero-length and 0-dim tensors in fp32 and bf16 compare value_equal."""
        sd = {"empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5)}
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_safetensors(tmp_path / "b.safetensors", {n: t.bfloat16() for n, t in sd.items()}))
        all_status(d, "value_equal")

    def test_legacy_vs_zip(self, ck, tmp_path, diff):
        """A legacy torch file and a zip one of the same weights are identical."""
        sd = ck.llama_like(4)
        torch.save(sd, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
        torch.save(sd, tmp_path / "new.bin")
        all_status(diff(tmp_path / "old.bin", tmp_path / "new.bin"), "identical")

    def test_strided_vs_contiguous(self, ck, tmp_path, diff):
        """A transposed view saved by torch.save equals the same values stored contiguously."""
        x = torch.randn(4, 6)
        torch.save({"w": x.t(), "col": x[:, 1]}, tmp_path / "views.pt")
        d = diff(tmp_path / "views.pt", ck.write_safetensors(tmp_path / "c.safetensors", {"w": x.t(), "col": x[:, 1]}))
        all_status(d, "identical")

    def test_nested_training_checkpoint(self, ck, tmp_path, diff):
        """A training checkpoint's nested weights compare identical to the released weights."""
        sd = ck.llama_like(5)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
        torch.save({"model_state_dict": sd, "optimizer_state_dict": opt.state_dict(), "epoch": 3},
                   tmp_path / "ckpt.pt")
        d = diff(tmp_path / "ckpt.pt", ck.write_safetensors(tmp_path / "model.safetensors", sd))
        all_status(d, "identical")
        assert "epoch: int 3" in d.a.extras
        assert not any("optimizer" in n or "epoch" in n for n in d.a.tensors)


class TestTiedEmbeddings:
    def test_bin_keeps_tie_safetensors_drops_it(self, ck, tmp_path, diff):
        """.bin keeps lm_head.weight tied to the embeddings, safetensors drops it: only_a, noted, exit 0."""
        sd = ck.tied(ck.llama_like(6))
        torch.save(sd, tmp_path / "pytorch_model.bin")
        st = ck.write_safetensors(tmp_path / "model.safetensors", without(sd, "lm_head.weight"))
        d = diff(tmp_path / "pytorch_model.bin", st)
        head = d.result("lm_head.weight")
        assert head.status == "only_a"
        assert head.pair.notes == ("tied to model.embed_tokens.weight in A; B stores that tensor once",)
        assert all(s == "identical" for n, s in d.statuses.items() if n != "lm_head.weight")
        assert exit_status(d.catalog, d.table) == 0

    def test_reversed_sides(self, ck, tmp_path, diff):
        """The same pair the other way round gives only_b with the note, and exit 0."""
        sd = ck.tied(ck.llama_like(7))
        torch.save(sd, tmp_path / "pytorch_model.bin")
        st = ck.write_safetensors(tmp_path / "model.safetensors", without(sd, "lm_head.weight"))
        d = diff(st, tmp_path / "pytorch_model.bin")
        head = d.result("lm_head.weight")
        assert head.status == "only_b"
        assert "tied to model.embed_tokens.weight in B" in head.pair.notes[0]
        assert exit_status(d.catalog, d.table) == 0

    def test_untied_head_missing_is_a_difference(self, ck, tmp_path, diff):
        """A head that is its own tensor and missing on one side is only_a without a tie note, exit 1."""
        sd = ck.llama_like(8)
        torch.save(sd, tmp_path / "pytorch_model.bin")
        st = ck.write_safetensors(tmp_path / "model.safetensors", without(sd, "lm_head.weight"))
        d = diff(tmp_path / "pytorch_model.bin", st)
        assert d.result("lm_head.weight").status == "only_a"
        assert d.result("lm_head.weight").pair.notes == ()
        assert exit_status(d.catalog, d.table) == 1


class TestDtypes:
    def test_bf16_representable_values_are_value_equal(self, ck, tmp_path, diff):
        """fp32 weights that bf16 represents exactly compare value_equal with their bf16 copy, exit 0."""
        sd = {n: t.bfloat16().float() for n, t in ck.llama_like(9).items()}
        d = diff(ck.write_safetensors(tmp_path / "fp32.safetensors", sd),
                 ck.write_safetensors(tmp_path / "bf16.safetensors", {n: t.bfloat16() for n, t in sd.items()}))
        all_status(d, "value_equal")
        assert exit_status(d.catalog, d.table) == 0

    def test_bf16_rounding_is_not_equal(self, ck, tmp_path, diff):
        """General fp32 weights rounded to bf16 differ (changed, or close within bf16's tolerance once
        issue 3's `close` exists); the all-ones norms, exact in bf16, stay value_equal."""
        sd = ck.llama_like(10)
        torch.save({n: t.bfloat16() for n, t in sd.items()}, tmp_path / "bf16.bin")
        d = diff(ck.write_safetensors(tmp_path / "fp32.safetensors", sd), tmp_path / "bf16.bin")
        for name, status in d.statuses.items():
            assert status in (("value_equal",) if name.endswith("norm.weight") else ("changed", "close")), name
        assert exit_status(d.catalog, d.table) == 1

    def test_bf16_of_other_weights_is_changed(self, ck, tmp_path, diff):
        """bf16 weights of a different model against fp32 ones are changed."""
        d = diff(ck.write_safetensors(tmp_path / "fp32.safetensors", ck.llama_like(10)),
                 ck.write_safetensors(tmp_path / "bf16.safetensors", ck.llama_like(11, dtype=torch.bfloat16)))
        for name, status in d.statuses.items():
            assert status == ("value_equal" if name.endswith("norm.weight") else "changed"), name

    def test_nan_equals_nan_across_dtypes(self, ck, tmp_path, diff):
        """NaN and inf in the same places compare value_equal across dtypes."""
        x = torch.tensor([float("nan"), 1.0, float("inf"), -0.5])
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", {"x": x}),
                 ck.write_safetensors(tmp_path / "b.safetensors", {"x": x.half()}))
        assert d.statuses == {"x": "value_equal"}

    def test_int_vs_float(self, ck, tmp_path, diff):
        """Integer and float tensors with equal values are value_equal; different values are changed."""
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", {"i": torch.arange(5), "j": torch.arange(3)}),
                 ck.write_safetensors(tmp_path / "b.safetensors", {"i": torch.arange(5.0), "j": torch.arange(3.0) + 0.5}))
        assert d.statuses == {"i": "value_equal", "j": "changed"}


def rename(sd, fn):
    return {fn(n): t for n, t in sd.items()}


PREFIXES = {
    "ddp module.": (lambda n: "module." + n, ["names mapped: B: removed wrapper 'module.' ({n} tensors)"]),
    "torch.compile _orig_mod.": (lambda n: "_orig_mod." + n, ["names mapped: B: removed wrapper '_orig_mod.' ({n} tensors)"]),
    "fsdp inside names": (lambda n: n.replace("model.", "model._fsdp_wrapped_module.", 1).replace(
        "layers.0.", "layers.0._fsdp_wrapped_module."),
        ["names mapped: B: removed wrapper '_fsdp_wrapped_module.' ({n} tensors)"]),
    "ddp around compile": (lambda n: "module._orig_mod." + n,
                           ["names mapped: B: removed wrapper 'module.' ({n} tensors)",
                            "names mapped: B: removed wrapper '_orig_mod.' ({n} tensors)"]),
}


class TestPrefixedNames:
    @pytest.mark.parametrize("kind", list(PREFIXES))
    def test_wrappers_pair_up_and_are_reported(self, ck, tmp_path, diff, kind):
        """Names wrapped by DDP, torch.compile or FSDP pair with the bare names; the mapping is reported."""
        fn, notes = PREFIXES[kind]
        sd = ck.llama_like(11)
        torch.save(rename(sd, fn), tmp_path / "wrapped.bin")
        d = diff(ck.write_safetensors(tmp_path / "model.safetensors", sd), tmp_path / "wrapped.bin")
        all_status(d, "identical")
        assert {r.pair.a.name: r.pair.b.name for r in d.results} == {n: fn(n) for n in sd}
        renamed = sum(fn(n) != n for n in sd)
        assert d.alignment.notes == [note.format(n=renamed) for note in notes]

    def test_wrapped_on_side_a(self, ck, tmp_path, diff):
        """Wrappers on A are reported as A's; the pair takes A's name."""
        sd = ck.llama_like(12, layers=1)
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", rename(sd, lambda n: "module." + n)),
                 ck.write_safetensors(tmp_path / "b.safetensors", sd))
        all_status(d, "identical")
        assert d.alignment.notes == [f"names mapped: A: removed wrapper 'module.' ({len(sd)} tensors)"]
        assert all(r.pair.name.startswith("module.") for r in d.results)

    def test_missing_model_prefix(self, ck, tmp_path, diff):
        """A causal LM (model.*) against its base model (no model. prefix): pairs, reported; lm_head only_a."""
        sd = ck.llama_like(13)
        base = {n.removeprefix("model."): t for n, t in sd.items() if n.startswith("model.")}
        d = diff(ck.write_safetensors(tmp_path / "lm.safetensors", sd),
                 ck.write_safetensors(tmp_path / "base.safetensors", base))
        statuses = d.statuses
        assert statuses.pop("lm_head.weight") == "only_a"
        assert set(statuses.values()) == {"identical"}
        assert d.alignment.notes == [f"names mapped: 'model.' prefix in A, not in B ({len(base)} tensors)"]

    def test_extra_model_prefix_on_b(self, ck, tmp_path, diff):
        """B with an extra model. prefix on every name pairs with A, reported as B's prefix."""
        sd = ck.llama_like(14, layers=1)
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_safetensors(tmp_path / "b.safetensors", rename(sd, lambda n: "model." + n)))
        all_status(d, "identical")
        assert d.alignment.notes == [f"names mapped: 'model.' prefix in B, not in A ({len(sd)} tensors)"]

    def test_wrapper_and_missing_model_prefix_both_reported(self, ck, tmp_path, diff):
        """DDP's module. around a base model: both the wrapper and the model. prefix are reported."""
        sd = ck.llama_like(15, layers=1)
        base = {"module." + n.removeprefix("model."): t for n, t in sd.items() if n.startswith("model.")}
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_safetensors(tmp_path / "b.safetensors", base))
        statuses = d.statuses
        assert statuses.pop("lm_head.weight") == "only_a"
        assert set(statuses.values()) == {"identical"}
        assert sorted(d.alignment.notes) == sorted([
            f"names mapped: B: removed wrapper 'module.' ({len(base)} tensors)",
            f"names mapped: 'model.' prefix in A, not in B ({len(base)} tensors)"])

    def test_exact_names_win(self, ck, tmp_path, diff):
        """A name present on both sides pairs with itself even when a wrapped twin exists."""
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(2)}),
                 ck.write_safetensors(tmp_path / "b.safetensors", {"w": torch.ones(2), "module.w": torch.zeros(2)}))
        assert d.statuses == {"w": "identical", "module.w": "only_b"}
        assert d.alignment.notes == []

    def test_ambiguous_names_do_not_pair(self):
        """Two names that unwrap to the same name on one side pair with nothing (one-to-one only)."""
        def cp(names):
            return Checkpoint("x", "safetensors", [], {n: TensorInfo(n, "float32", (1,), "f") for n in names})

        alignment = align(cp(["w"]), cp(["module.w", "_orig_mod.w"]))
        assert [(p.name, p.a is not None, p.b is not None) for p in alignment.pairs] == [
            ("w", True, False), ("module.w", False, True), ("_orig_mod.w", False, True)]

    def test_unwrap(self):
        """`unwrap` strips a leading module. and wrapper modules anywhere, never the last part."""
        assert unwrap("module._orig_mod.model.layers.0.w") == ("model.layers.0.w", ("module", "_orig_mod"))
        assert unwrap("a._fsdp_wrapped_module.b._checkpoint_wrapped_module.c") == (
            "a.b.c", ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"))
        assert unwrap("module") == ("module", ())
        assert unwrap("encoder.module.w") == ("encoder.module.w", ())


class TestChanges:
    def test_resized_embedding(self, ck, tmp_path, diff):
        """A vocabulary resized by 8 rows is shape_mismatch for embeddings and head; the rest identical; exit 1."""
        sd = ck.llama_like(16)
        resized = dict(sd)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            resized[name] = torch.cat([sd[name], torch.randn(8, sd[name].shape[1])])
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_sharded_safetensors(tmp_path / "b", resized))
        mismatched = {n for n, s in d.statuses.items() if s == "shape_mismatch"}
        assert mismatched == {"model.embed_tokens.weight", "lm_head.weight"}
        assert {s for n, s in d.statuses.items() if n not in mismatched} == {"identical"}
        assert exit_status(d.catalog, d.table) == 1

    def test_fine_tune_with_frozen_tensors(self, ck, tmp_path, diff):
        """A fine-tune that trained layer 1 only: layer 1 changed, everything frozen identical."""
        sd = ck.llama_like(17)
        tuned = {n: t + 1e-3 if n.startswith("model.layers.1.") else t.clone() for n, t in sd.items()}
        torch.save(tuned, tmp_path / "tuned.bin")
        d = diff(ck.write_safetensors(tmp_path / "base.safetensors", sd), tmp_path / "tuned.bin")
        for name, status in d.statuses.items():
            assert status == ("changed" if name.startswith("model.layers.1.") else "identical"), name
        assert exit_status(d.catalog, d.table) == 1

    def test_one_element_changed(self, ck, tmp_path, diff):
        """Changing a single element of a tensor makes it changed."""
        sd = ck.llama_like(18, layers=1)
        other = {n: t.clone() for n, t in sd.items()}
        other["model.norm.weight"][3] = 1.5
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_safetensors(tmp_path / "b.safetensors", other))
        assert {n for n, s in d.statuses.items() if s != "identical"} == {"model.norm.weight"}
        assert d.result("model.norm.weight").status == "changed"

    def test_a_scalar_counts_one_element_beside_a_tensor_of_unknown_shape(self, ck, tmp_path, diff):
        """A scalar (shape ()) holds one element, also in a checkpoint where a bad header entry
        leaves another tensor without a shape: its size and the parameters count it."""
        import struct

        header = {"step": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                  "bad": {"dtype": "X9", "shape": [1], "data_offsets": [4, 8]}}
        path = tmp_path / "b.safetensors"
        path.write_bytes(ck.safetensors_bytes(header, struct.pack("<ff", 3.0, 1.0)))
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", {"step": torch.tensor(3.0), "bad": torch.ones(1)}),
                 path)
        step = d.catalog.index("step")
        assert d.catalog.b.shape[d.catalog.index("bad")] is None
        assert d.catalog.b.numel[step] == 1 and d.catalog.b.nbytes[step] == 4 and d.catalog.summary_b.parameters == 1
        assert d.statuses["step"] == "identical" and d.catalog.b.present.all()

    def test_only_b(self, ck, tmp_path, diff):
        """A tensor added in B is only_b and counts as a difference."""
        sd = ck.llama_like(19, layers=1)
        d = diff(ck.write_safetensors(tmp_path / "a.safetensors", sd),
                 ck.write_safetensors(tmp_path / "b.safetensors", {**sd, "score.weight": torch.ones(2, 8)}))
        assert d.statuses["score.weight"] == "only_b"
        assert exit_status(d.catalog, d.table) == 1


class TestScan:
    def test_progress_and_cancel(self, ck, tmp_path, opened, monkeypatch):
        """`scan` reports progress after each unit of work (here a tensor each) and stops when
        `should_cancel` says so."""
        monkeypatch.setattr(plans, "UNIT_BYTES", 1)
        sd = ck.llama_like(20, layers=1)
        a = opened(ck.write_safetensors(tmp_path / "a.safetensors", sd))
        b = opened(ck.write_safetensors(tmp_path / "b.safetensors", sd))
        alignment = align(a, b)
        calls = []
        results = scan(alignment, a, b, progress=lambda done, total: calls.append((done, total)))
        assert len(results) == len(calls) == len(sd)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)
        assert calls[-1][0] == calls[-1][1] > 0
        stopped = []
        partial = scan(alignment, a, b, progress=lambda done, total: stopped.append(done),
                       should_cancel=lambda: len(stopped) >= 3)
        assert len(partial) == 3
        assert all(r.status == "identical" for r in partial)
