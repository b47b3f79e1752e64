"""PEFT LoRA adapters against their base (issue 6): names, scaling, ΔW, merge checks, alarms.

Adapters are written here as PEFT writes them: `save_pretrained`'s `adapter_model.safetensors`
with keys `base_model.model.<module>.lora_A.weight` (the adapter name removed), embeddings'
`lora_embedding_A/B` parameters, `modules_to_save` copies under the module's own name, and
an `adapter_config.json` with PEFT's field names; full PEFT-wrapped state dicts keep
`base_layer`, the adapter name (`lora_A.default.weight`) and `modules_to_save.default`.
ΔW is checked against scaling · B@A computed here in float64.
"""

import json
import math

import pytest
import torch

from weightscope.cli import main
from weightscope.sources.pair import open_merge_check, open_pair
from weightscope.compare.align import align
from weightscope.sources.checkpoint import Checkpoint
from weightscope.sources.errors import CheckpointError
from weightscope.compare.catalog import KNOWN, build
from weightscope.sources.lora.checkpoint import LoraCheckpoint
from weightscope.analysis.lora_notes import annotate_results
from weightscope.compare.scan import scan

P = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj"
V0 = "model.layers.0.self_attn.v_proj"
Q1 = "model.layers.1.self_attn.q_proj"
HIDDEN, VOCAB = 16, 64


def factors(module: str, r: int, fan_in: int, fan_out: int, seed: int, adapter: str = "") -> dict[str, torch.Tensor]:
    """lora_A (r × in) and lora_B (out × r) of one module, trained (B not zero)."""
    gen = torch.Generator().manual_seed(seed)
    name = f".{adapter}" if adapter else ""
    return {f"{P}{module}.lora_A{name}.weight": torch.randn(r, fan_in, generator=gen) * 0.1,
            f"{P}{module}.lora_B{name}.weight": torch.randn(fan_out, r, generator=gen) * 0.1}


def config(**fields) -> dict:
    """adapter_config.json as PEFT writes it (the fields weightscope reads, and some it does not)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama", "r": 8,
            "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
            "use_dora": False, "target_modules": ["q_proj", "v_proj"], "modules_to_save": None,
            "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True, "inference_mode": True,
            "peft_version": "0.21.2"} | fields


def write_adapter(ck, directory, tensors: dict[str, torch.Tensor], **fields):
    directory.mkdir(parents=True, exist_ok=True)
    ck.write_safetensors(directory / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(config(**fields), indent=2))
    return directory


def delta(tensors: dict[str, torch.Tensor], module: str, scaling: float, transpose: bool = False,
          a: str = "lora_A", b: str = "lora_B", suffix: str = ".weight") -> torch.Tensor:
    """scaling · B@A in float64, (B@A)ᵀ where PEFT transposes."""
    product = tensors[f"{P}{module}.{b}{suffix}"].double() @ tensors[f"{P}{module}.{a}{suffix}"].double()
    return scaling * (product.T if transpose else product)


def assert_delta(a: Checkpoint, b: LoraCheckpoint, name: str, expected: torch.Tensor) -> None:
    """ΔW alone is `expected` to 1e-6 relative, and B's tensor is A's plus `expected` to that
    plus float32's rounding of the sum (2⁻²⁴ relative per element)."""
    assert torch.linalg.norm(b.delta(name).double() - expected) <= 1e-6 * torch.linalg.norm(expected)
    merged = a.load(name).double() + expected
    error = torch.linalg.norm(b.load(name).double() - merged)
    assert error <= 1e-6 * torch.linalg.norm(expected) + 2 ** -24 * torch.linalg.norm(merged)


@pytest.fixture
def base(ck, tmp_path):
    sd = ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB)
    return sd, ck.write_safetensors(tmp_path / "base.safetensors", sd)


@pytest.fixture
def opened_pair():
    """`opened_pair(a, b)` opens with `open_pair`; both are closed when the test ends."""
    pairs = []

    def open_(path_a, path_b, adapter=None, **scaling):
        pairs.append(open_pair(str(path_a), str(path_b), **scaling) if adapter is None
                     else open_merge_check(str(path_a), str(path_b), str(adapter)))
        return pairs[-1]

    yield open_
    for a, b in pairs:
        a.close()
        b.close()


def statuses(a, b) -> dict[str, str]:
    return {r.pair.name: r.status for r in scan(align(a, b), a, b)}


class TestNames:
    def test_adapted_tensors_take_the_base_names(self, ck, tmp_path, base, opened_pair):
        """Adapted tensors are the base's names (computed, float32); factors sit beside their
        module as B-only tensors marked as factors; every other tensor is the base's own."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        assert isinstance(b, LoraCheckpoint)
        assert set(b.modules) == {f"{Q0}.weight", f"{V0}.weight"}
        info = b.tensors[f"{Q0}.weight"]
        assert (info.dtype, info.shape) == ("float32", (HIDDEN, HIDDEN))
        assert info.origin == "W + ΔW, LoRA r=8, alpha 16, scaling 2"
        found = statuses(a, b)
        assert found[f"{Q0}.weight"] == found[f"{V0}.weight"] == "changed"
        assert found[f"{Q0}.lora_A.weight"] == found[f"{Q0}.lora_B.weight"] == "only_b"
        assert "LoRA factor A" in b.roles[f"{Q0}.lora_A.weight"]
        assert {n for n, s in found.items() if s == "identical"} == set(sd) - set(b.modules)

    def test_factors_are_not_differences(self, ck, tmp_path, base, capsys):
        """`diff` shows the factors with status "factor" and counts them apart: an untrained
        adapter (lora_B zero) over its base differs in nothing, exit 0, though B has 4 tensors more."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        untrained = write_adapter(ck, tmp_path / "untrained", {n: torch.zeros_like(t) if ".lora_B." in n else t
                                                               for n, t in tensors.items()})
        assert main(["diff", str(path), str(untrained), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        found = {t["name"]: t["status"] for t in doc["tensors"]}
        assert found[f"{Q0}.lora_A.weight"] == found[f"{V0}.lora_B.weight"] == "factor"
        assert doc["lora_factors"] == 4 and "only_b" not in found.values()
        assert doc["summary"]["identical"] == len(doc["tensors"]) - 4
        assert main(["diff", str(path), str(write_adapter(ck, tmp_path / "trained", tensors))]) == 1
        assert "summary: 19 identical, 2 changed; 4 LoRA factors beside them, not counted" in capsys.readouterr().out

    def test_base_without_model_prefix(self, ck, tmp_path, opened_pair):
        """A base saved without the `model.` prefix (the bare transformer) still takes the adapter."""
        sd = {n.removeprefix("model."): t for n, t in ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB).items()}
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        a, b = opened_pair(ck.write_safetensors(tmp_path / "bare.safetensors", sd),
                           write_adapter(ck, tmp_path / "adapter", tensors))
        name = "layers.0.self_attn.q_proj.weight"
        assert name in b.modules
        assert_delta(a, b, name, delta(tensors, Q0, 2.0))
        assert any("'model.' prefix" in n for n in b.notes)

    def test_bin_adapter_and_the_weights_file_itself(self, ck, tmp_path, base, opened_pair):
        """adapter_model.bin (torch.save) reads as the safetensors adapter does, and so does naming
        the weights file instead of its directory."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        torch.save(tensors, adapter / "adapter_model.bin")
        (adapter / "adapter_config.json").write_text(json.dumps(config()))
        for b_path in (adapter, adapter / "adapter_model.bin"):
            a, b = opened_pair(path, b_path)
            assert_delta(a, b, f"{Q0}.weight", delta(tensors, Q0, 2.0))

    def test_plain_checkpoint_stays_plain(self, ck, tmp_path, base, opened_pair):
        sd, path = base
        a, b = opened_pair(path, ck.write_safetensors(tmp_path / "other.safetensors", sd))
        assert type(b) is Checkpoint


class TestScaling:
    @pytest.mark.parametrize("fields, r, scaling", [
        ({"r": 8, "lora_alpha": 16}, 8, 2.0),
        ({"r": 4, "lora_alpha": 32}, 4, 8.0),
        ({"r": 16, "lora_alpha": 8, "use_rslora": True}, 16, 8 / math.sqrt(16)),
        ({"r": 16, "lora_alpha": 16}, 16, 1.0),
    ])
    def test_alpha_over_r(self, ck, tmp_path, base, opened_pair, fields, r, scaling):
        """scaling = lora_alpha / r, or lora_alpha / √r with use_rslora; ΔW = scaling · B@A."""
        _, path = base
        tensors = factors(Q0, r, HIDDEN, HIDDEN, 3)
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, **fields))
        module = b.modules[f"{Q0}.weight"]
        assert (module.r, module.scaling) == (r, pytest.approx(scaling, rel=1e-12))
        assert_delta(a, b, f"{Q0}.weight", delta(tensors, Q0, scaling))

    def test_rank_and_alpha_patterns(self, ck, tmp_path, base, opened_pair):
        """rank_pattern and alpha_pattern keys match the end of the module name, first match wins."""
        _, path = base
        tensors = (factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(Q1, 2, HIDDEN, HIDDEN, 2)
                   | factors(V0, 8, HIDDEN, HIDDEN, 3))
        adapter = write_adapter(ck, tmp_path / "adapter", tensors, r=8, lora_alpha=16,
                                rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 4})
        a, b = opened_pair(path, adapter)
        expected = {Q0: (8, 2.0), Q1: (2, 8.0), V0: (8, 0.5)}
        for module, (r, scaling) in expected.items():
            found = b.modules[f"{module}.weight"]
            assert (found.r, found.scaling) == (r, scaling), module
            assert_delta(a, b, f"{module}.weight", delta(tensors, module, scaling))

    def test_fan_in_fan_out(self, ck, tmp_path, opened_pair):
        """GPT-2's Conv1D stores W as (in, out): with fan_in_fan_out, ΔW = scaling · (B@A)ᵀ."""
        module = "transformer.h.0.attn.c_attn"
        gen = torch.Generator().manual_seed(0)
        sd = {f"{module}.weight": torch.randn(HIDDEN, 3 * HIDDEN, generator=gen),
              f"{module}.bias": torch.randn(3 * HIDDEN, generator=gen)}
        tensors = factors(module, 4, HIDDEN, 3 * HIDDEN, 5)
        a, b = opened_pair(ck.write_safetensors(tmp_path / "gpt2.safetensors", sd),
                           write_adapter(ck, tmp_path / "adapter", tensors, r=4, lora_alpha=8, fan_in_fan_out=True,
                                         target_modules=["c_attn"]))
        assert b.modules[f"{module}.weight"].transpose
        assert_delta(a, b, f"{module}.weight", delta(tensors, module, 2.0, transpose=True))

    def test_fan_in_fan_out_is_off_for_linear(self, ck, tmp_path, base, opened_pair):
        """PEFT turns fan_in_fan_out off for nn.Linear: on a square q_proj, where the shapes cannot
        tell, ΔW is still B@A (a transposed ΔW is a different matrix), and a note says so."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors("model.layers.0.mlp.up_proj", 8, HIDDEN, 2 * HIDDEN, 2)
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, fan_in_fan_out=True))
        assert not torch.allclose(delta(tensors, Q0, 2.0), delta(tensors, Q0, 2.0, transpose=True))
        assert not b.modules[f"{Q0}.weight"].transpose
        assert_delta(a, b, f"{Q0}.weight", delta(tensors, Q0, 2.0))
        assert_delta(a, b, "model.layers.0.mlp.up_proj.weight", delta(tensors, "model.layers.0.mlp.up_proj", 2.0))
        assert any("fan_in_fan_out is true" in n and "2 modules are nn.Linear" in n for n in b.notes)

    @pytest.mark.parametrize("targets", [("attn.c_attn", "attn.c_proj"), ("attn.c_proj",)])
    def test_fan_in_fan_out_is_on_for_conv1d(self, ck, tmp_path, opened_pair, targets):
        """PEFT turns fan_in_fan_out on for GPT-2's Conv1D whatever the config says: a square
        c_proj transposes too, told by c_attn's shape beside it, or alone by its name."""
        gen = torch.Generator().manual_seed(0)
        sd = {"transformer.h.0.attn.c_attn.weight": torch.randn(HIDDEN, 3 * HIDDEN, generator=gen),
              "transformer.h.0.attn.c_proj.weight": torch.randn(HIDDEN, HIDDEN, generator=gen)}
        outs = {"attn.c_attn": 3 * HIDDEN, "attn.c_proj": HIDDEN}
        tensors = {}
        for i, target in enumerate(targets):
            tensors |= factors(f"transformer.h.0.{target}", 4, HIDDEN, outs[target], i)
        a, b = opened_pair(ck.write_safetensors(tmp_path / "gpt2.safetensors", sd),
                           write_adapter(ck, tmp_path / "adapter", tensors, r=4, lora_alpha=8, fan_in_fan_out=False))
        for target in targets:
            module = f"transformer.h.0.{target}"
            assert b.modules[f"{module}.weight"].transpose
            assert_delta(a, b, f"{module}.weight", delta(tensors, module, 2.0, transpose=True))
        assert any("fan_in_fan_out is false" in n and "Conv1D" in n for n in b.notes)

    def test_embeddings(self, ck, tmp_path, base, opened_pair):
        """lora_embedding_A (r × vocab) and lora_embedding_B (hidden × r): ΔW = scaling · (B@A)ᵀ."""
        _, path = base
        gen = torch.Generator().manual_seed(7)
        module = "model.embed_tokens"
        tensors = {f"{P}{module}.lora_embedding_A": torch.randn(8, VOCAB, generator=gen),
                   f"{P}{module}.lora_embedding_B": torch.randn(HIDDEN, 8, generator=gen)}
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, target_modules=["embed_tokens"]))
        assert b.tensors[f"{module}.weight"].shape == (VOCAB, HIDDEN)
        expected = delta(tensors, module, 2.0, transpose=True, a="lora_embedding_A", b="lora_embedding_B", suffix="")
        assert_delta(a, b, f"{module}.weight", expected)
        assert f"{module}.lora_embedding_A" in b.tensors

    def test_modules_to_save(self, ck, tmp_path, base, opened_pair):
        """A module in modules_to_save is saved whole under its own name and replaces the base's."""
        sd, path = base
        head = torch.randn(VOCAB, HIDDEN)
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | {f"{P}lm_head.weight": head}
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, modules_to_save=["lm_head"]))
        assert torch.equal(b.load("lm_head.weight"), head)
        assert b.roles["lm_head.weight"] == "replaced whole by the adapter (modules_to_save)"
        assert statuses(a, b)["lm_head.weight"] == "changed"


class TestWrappedStateDict:
    def wrapped(self, sd: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                adapter: str = "default") -> dict[str, torch.Tensor]:
        """`PeftModel.state_dict()`: the base under base_model.model., adapted weights as base_layer,
        factors with their adapter name, lm_head in modules_to_save."""
        out = {}
        modules = {n.rsplit(".lora_", 1)[0].removeprefix(P) for n in tensors}
        for name, t in sd.items():
            module = name.removesuffix(".weight")
            if module in modules:
                out[f"{P}{module}.base_layer.weight"] = t
            elif name == "lm_head.weight":
                out[f"{P}lm_head.original_module.weight"] = t
                out[f"{P}lm_head.modules_to_save.{adapter}.weight"] = t + 1
            else:
                out[P + name] = t
        return out | tensors

    def test_pairs_with_its_base(self, ck, tmp_path, base, opened_pair):
        """base_layer weights, `.default` factors and modules_to_save pair with the base's names."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "default") | factors(V0, 8, HIDDEN, HIDDEN, 2, "default")
        directory = tmp_path / "wrapped"
        directory.mkdir()
        torch.save(self.wrapped(sd, tensors), directory / "pytorch_model.bin")
        (directory / "adapter_config.json").write_text(json.dumps(config(modules_to_save=["lm_head"])))
        a, b = opened_pair(path, directory)
        found = statuses(a, b)
        for module in (Q0, V0):
            assert found[f"{module}.weight"] == "changed"
            expected = delta({n.replace(".default", ""): t for n, t in tensors.items()}, module, 2.0)
            assert_delta(a, b, f"{module}.weight", expected)
        assert found["lm_head.weight"] == "changed"
        assert "modules_to_save" in b.roles["lm_head.weight"]
        assert found["lm_head.original_module.weight"] == "only_b"
        assert found["model.layers.1.mlp.up_proj.weight"] == "identical"

    def test_other_adapter_names(self, ck, tmp_path, base, opened_pair):
        """With two adapters in one state dict, 'default' is applied and the other's factors are shown, marked."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "default") | factors(Q0, 8, HIDDEN, HIDDEN, 9, "sql")
        directory = tmp_path / "wrapped"
        directory.mkdir()
        ck.write_safetensors(directory / "model.safetensors", self.wrapped(sd, tensors))
        (directory / "adapter_config.json").write_text(json.dumps(config()))
        a, b = opened_pair(path, directory)
        expected = delta({n.replace(".default", ""): t for n, t in tensors.items() if ".sql." not in n}, Q0, 2.0)
        assert_delta(a, b, f"{Q0}.weight", expected)
        assert "not applied" in b.roles[f"{Q0}.lora_A.sql.weight"]
        assert any("'default' is applied" in n for n in b.notes)

    def test_single_named_adapter(self, ck, tmp_path, base, opened_pair):
        """An adapter named other than 'default' is applied when it is the only one."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "mine")
        directory = tmp_path / "wrapped"
        directory.mkdir()
        ck.write_safetensors(directory / "model.safetensors", self.wrapped(sd, tensors, "mine"))
        (directory / "adapter_config.json").write_text(json.dumps(config()))
        a, b = opened_pair(path, directory)
        assert_delta(a, b, f"{Q0}.weight", delta({n.replace(".mine", ""): t for n, t in tensors.items()}, Q0, 2.0))
        assert "modules_to_save" in b.roles["lm_head.weight"]

    def test_without_config_w_compares_as_w(self, ck, tmp_path, base, opened_pair):
        """No adapter_config.json beside a wrapped state dict: ΔW is not guessed, but W (the
        base_layer) is right there and compares as W, with the alarm that ΔW is not applied."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "default") | factors(V0, 8, HIDDEN, HIDDEN, 2, "default")
        a, b = opened_pair(path, ck.write_safetensors(tmp_path / "wrapped.safetensors", self.wrapped(sd, tensors)))
        found = statuses(a, b)
        for module in (Q0, V0):
            assert found[f"{module}.weight"] == "identical"
            assert "ALARM ΔW not applied" in b.roles[f"{module}.weight"]
            assert found[f"{module}.lora_A.default.weight"] == "only_b"
        assert "error" not in found.values()
        assert any(n.startswith("ALARM") and "scaling is unknown" in n and "2 adapted modules" in n for n in b.notes)

    @pytest.mark.parametrize("given, scaling", [({"lora_alpha": 16}, 2.0), ({"lora_alpha": 4}, 0.5),
                                                ({"lora_scaling": 3.0}, 3.0)])
    def test_scaling_from_the_user(self, ck, tmp_path, base, opened_pair, given, scaling):
        """--lora-alpha A (scaling A/r, r from the factors) or --lora-scaling S applies ΔW as a config would."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "default")
        a, b = opened_pair(path, ck.write_safetensors(tmp_path / "wrapped.safetensors", self.wrapped(sd, tensors)),
                           **given)
        assert b.modules[f"{Q0}.weight"].scaling == pytest.approx(scaling, rel=1e-12)
        saved = {n.replace(".default", ""): t for n, t in tensors.items()}
        assert_delta(a, b, f"{Q0}.weight", delta(saved, Q0, scaling))
        assert any("as given" in n for n in b.notes) and not any(n.startswith("ALARM") for n in b.notes)

    def test_saved_adapter_without_config(self, ck, tmp_path, base, opened_pair):
        """An adapter_model.safetensors alone: B is the base with the alarm; with --lora-alpha, W + ΔW."""
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        adapter = ck.write_safetensors(tmp_path / "adapter_model.safetensors", tensors)
        a, b = opened_pair(path, adapter)
        assert statuses(a, b)[f"{Q0}.weight"] == "identical"
        a, b = opened_pair(path, adapter, lora_alpha=16)
        assert_delta(a, b, f"{Q0}.weight", delta(tensors, Q0, 2.0))

    def test_config_wins_over_the_user(self, ck, tmp_path, base, opened_pair):
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors), lora_scaling=5.0)
        assert b.modules[f"{Q0}.weight"].scaling == 2.0
        assert any("scaling 5 given is not used" in n for n in b.notes)

    def test_both_or_nonfinite_refused(self, ck, tmp_path, base):
        _, path = base
        with pytest.raises(ValueError, match="either"):
            open_pair(str(path), str(path), lora_alpha=16, lora_scaling=2)
        with pytest.raises(ValueError, match="finite"):
            open_pair(str(path), str(path), lora_alpha=float("nan"))

    def test_cli_options(self, ck, tmp_path, base, capsys):
        sd, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1, "default")
        wrapped = ck.write_safetensors(tmp_path / "wrapped.safetensors", self.wrapped(sd, tensors))
        runs = (([], "identical"), (["--lora-alpha", "16"], "changed"), (["--lora-scaling", "0"], "identical"))
        for argv, status in runs:
            assert main(["diff", str(path), str(wrapped), "--json", *argv]) == 1  # lm_head, saved whole, changed
            doc = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
            assert doc[f"{Q0}.weight"]["status"] == status, argv  # never a result cached for another scaling
        assert main(["diff", str(path), str(wrapped), "--lora-alpha", "16", "--lora-scaling", "2"]) == 2
        assert "either a LoRA alpha or a LoRA scaling" in capsys.readouterr().err


class TestMergeCheck:
    def merged(self, sd, tensors, modules, scaling: float, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
        """The base with ΔW merged, then stored in `dtype` (as merge_and_unload and save_pretrained do)."""
        out = {n: t.clone() for n, t in sd.items()}
        for module in modules:
            out[f"{module}.weight"] = (out[f"{module}.weight"].double() + delta(tensors, module, scaling)).float()
        return {n: t.to(dtype) for n, t in out.items()}

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
    def test_right_merge_leaves_rounding(self, ck, tmp_path, opened_pair, dtype):
        """BASE + ΔW against a model merged right: residuals at the stored dtype's rounding, nothing else."""
        sd = {n: t.to(dtype) for n, t in ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB).items()}
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        merged = ck.write_safetensors(tmp_path / "merged.safetensors", self.merged(sd, tensors, (Q0, V0), 2.0, dtype))
        adapter = write_adapter(ck, tmp_path / "adapter", tensors)
        a, b = opened_pair(base, merged, adapter)
        results = {r.pair.name: r for r in scan(align(a, b), a, b)}
        eps = torch.finfo(dtype).eps
        for module in (Q0, V0):
            r = results[f"{module}.weight"]
            assert r.status in ("close", "identical", "value_equal")
            assert r.diff.max_abs <= eps * float(a.load(f"{module}.weight").abs().max())  # half an ulp, with room
        assert {r.status for n, r in results.items() if n not in a.modules} == {"identical"}

    def test_wrong_merge_shows(self, ck, tmp_path, opened_pair):
        """A merge with the wrong scaling (alpha taken as 2·alpha) leaves ΔW-sized residuals."""
        sd = ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB)
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        wrong = self.merged(sd, tensors, (Q0,), 4.0, torch.float32)
        merged = ck.write_safetensors(tmp_path / "merged.safetensors", wrong)
        a, b = opened_pair(base, merged, write_adapter(ck, tmp_path / "adapter", tensors))
        result = next(r for r in scan(align(a, b), a, b) if r.pair.name == f"{Q0}.weight")
        assert result.status == "changed"
        assert result.diff.rel_l2 > 1e-2

    def test_cli(self, ck, tmp_path, capsys):
        """`weightscope diff BASE MERGED --adapter ADAPTER`: the merge's residuals, reported like any diff."""
        sd = ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB, dtype=torch.bfloat16)
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1)
        base = ck.write_safetensors(tmp_path / "base.safetensors", sd)
        merged = ck.write_safetensors(tmp_path / "merged.safetensors", self.merged(sd, tensors, (Q0,), 2.0))
        adapter = write_adapter(ck, tmp_path / "adapter", tensors)
        assert main(["diff", str(base), str(merged), "--adapter", str(adapter), "--json"]) == 0  # rounding only
        doc = json.loads(capsys.readouterr().out)
        by_name = {t["name"]: t for t in doc["tensors"]}
        assert by_name[f"{Q0}.weight"]["status"] in ("close", "identical")
        assert by_name[f"{Q0}.weight"]["dtype_a"] == "float32"
        assert doc["summary"]["changed"] == doc["summary"]["only_a"] == doc["summary"]["only_b"] == 0
        assert doc["a"]["format"] == "peft-lora" and str(adapter / "adapter_config.json") in doc["a"]["files"]

    def test_not_an_adapter(self, ck, tmp_path, base):
        _, path = base
        with pytest.raises(CheckpointError, match="not a PEFT adapter"):
            open_merge_check(str(path), str(path), str(path))


class TestAlarms:
    def test_untrained_adapter(self, ck, tmp_path, base, opened_pair, capsys):
        """lora_B all zero everywhere (PEFT's initial state): an alarm on the checkpoint and each module."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        tensors = {n: torch.zeros_like(t) if ".lora_B." in n else t for n, t in tensors.items()}
        adapter = write_adapter(ck, tmp_path / "adapter", tensors)
        a, b = opened_pair(path, adapter)
        assert any("lora_B is all zero in every module" in n for n in b.alarms)
        assert "ALARM lora_B is all zero" in b.roles[f"{Q0}.weight"]
        assert statuses(a, b)[f"{Q0}.weight"] == "identical"  # W + 0 in float32 against float32 W
        main(["diff", str(path), str(adapter)])
        out = capsys.readouterr().out
        assert "ALARM: lora_B is all zero in every module" in out

    def test_some_modules_untrained(self, ck, tmp_path, base, opened_pair):
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        tensors[f"{P}{V0}.lora_B.weight"].zero_()
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        assert not b.alarms
        assert any(n.startswith("ΔW is zero") and V0 in n for n in b.notes)

    def test_modules_matching_no_base_tensor(self, ck, tmp_path, base, opened_pair):
        """Factors for a module the base lacks: an alarm naming it; the factors stay visible, marked."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors("model.layers.7.self_attn.q_proj", 8, HIDDEN, HIDDEN, 2)
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        assert any("1 adapter module match no tensor of A: model.layers.7.self_attn.q_proj" in n for n in b.alarms)
        assert "matches no tensor of A" in b.roles["model.layers.7.self_attn.q_proj.lora_A.weight"]

    def test_negligible_delta(self, ck, tmp_path, base, opened_pair):
        """‖ΔW‖/‖W‖ below 1e-6 in every module: an alarm once the scan has ‖W‖; per pair too."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | factors(V0, 8, HIDDEN, HIDDEN, 2)
        tensors = {n: t * 1e-4 for n, t in tensors.items()}
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        results = annotate_results(a, b, scan(align(a, b), a, b))
        assert any("negligible next to W in every module" in n for n in b.alarms)
        q = next(r for r in results if r.pair.name == f"{Q0}.weight")
        assert any("ΔW negligible" in n for n in q.notes)
        assert "B: computed: W + ΔW, LoRA r=8, alpha 16, scaling 2" in q.notes

    def test_trained_adapter_raises_none(self, ck, tmp_path, base, opened_pair):
        _, path = base
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", factors(Q0, 8, HIDDEN, HIDDEN, 1)))
        annotate_results(a, b, scan(align(a, b), a, b))
        assert b.alarms == []
        assert any(n.startswith("‖ΔW‖/‖W‖ over 1 modules") for n in b.notes)


class TestUnsupported:
    def test_dora_is_named(self, ck, tmp_path, base, opened_pair):
        """DoRA's magnitude vector and use_dora: the modules are errors naming DoRA, never W + ΔW."""
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | {f"{P}{Q0}.lora_magnitude_vector": torch.ones(HIDDEN)}
        a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, use_dora=True))
        assert "DoRA (use_dora) is not supported" in b.tensors[f"{Q0}.weight"].error
        assert "unsupported: DoRA (use_dora)" in b.notes
        assert "DoRA magnitude vector" in b.roles[f"{Q0}.lora_magnitude_vector"]
        assert statuses(a, b)[f"{Q0}.weight"] == "error"

    def test_magnitude_vector_without_the_switch(self, ck, tmp_path, base, opened_pair):
        _, path = base
        tensors = factors(Q0, 8, HIDDEN, HIDDEN, 1) | {f"{P}{Q0}.lora_magnitude_vector": torch.ones(HIDDEN)}
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        assert "DoRA is not supported" in b.tensors[f"{Q0}.weight"].error

    def test_other_peft_types(self, ck, tmp_path, base, opened_pair):
        """A LoHa adapter is not read as LoRA: its tensors are shown as stored, with a note."""
        _, path = base
        tensors = {f"{P}{Q0}.hada_w1_a": torch.ones(8, HIDDEN)}
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors, peft_type="LOHA"))
        assert not isinstance(b, LoraCheckpoint)
        assert any("PEFT type LOHA is not supported" in n for n in b.notes)

    def test_rank_disagreeing_with_the_config(self, ck, tmp_path, base, opened_pair):
        _, path = base
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", factors(Q0, 4, HIDDEN, HIDDEN, 1), r=8))
        assert "gives r=8 for this module but its factors have rank 4" in b.tensors[f"{Q0}.weight"].error

    def test_shape_disagreeing_with_w(self, ck, tmp_path, base, opened_pair):
        """Factors whose product fits W neither way are an error, not a guess."""
        _, path = base
        tensors = factors("model.layers.0.mlp.up_proj", 8, 3 * HIDDEN, 2 * HIDDEN, 1)
        _, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
        assert ("B@A has shape [32, 48] and (B@A)ᵀ [48, 32], but W has [32, 16]"
                in b.tensors["model.layers.0.mlp.up_proj.weight"].error)

    @pytest.mark.parametrize("fields, why", [({"r": True}, "r is True"), ({"lora_alpha": "16"}, "lora_alpha"),
                                             ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
                                             ({"rank_pattern": {"(": 4}}, "not a regex")])
    def test_bad_config(self, ck, tmp_path, base, fields, why):
        _, path = base
        adapter = write_adapter(ck, tmp_path / "adapter", factors(Q0, 8, HIDDEN, HIDDEN, 1), **fields)
        with pytest.raises(CheckpointError, match=why):
            open_pair(str(path), str(adapter))


def test_computed_float32_is_not_a_dtype_change(ck, tmp_path, opened_pair):
    """W + ΔW is float32 by computation: against a bf16 base it is pending, not a dtype change."""
    sd = ck.llama_like(0, hidden=HIDDEN, vocab=VOCAB, dtype=torch.bfloat16)
    path = ck.write_safetensors(tmp_path / "base.safetensors", sd)
    tensors = {n: t.bfloat16() for n, t in factors(Q0, 8, HIDDEN, HIDDEN, 1).items()}
    a, b = opened_pair(path, write_adapter(ck, tmp_path / "adapter", tensors))
    catalog = build(a, b, align(a, b))
    i = catalog.index(f"{Q0}.weight")
    assert (catalog.a.dtype[i], catalog.b.dtype[i]) == ("bfloat16", "float32")
    assert KNOWN[catalog.known[i]] == "pending"
