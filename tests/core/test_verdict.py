"""The verdict and its flags, on checkpoints written by the real writers, through `weightscope diff`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from weightscope.analysis.verdict import FLAGS, KINDS, SEVERITIES
from weightscope.cli import main

HIDDEN, LAYERS, VOCAB = 64, 4, 128


def verdict_of(capsys, a, b, *options) -> tuple[dict, int, str]:
    """(the JSON verdict, the exit status, stderr) of `weightscope diff A B --json`."""
    code = main(["diff", str(a), str(b), "--json", "--no-cache", *options])
    out, err = capsys.readouterr()
    return json.loads(out)["verdict"], code, err


def codes(verdict: dict) -> dict[str, dict]:
    return {flag["code"]: flag for flag in verdict["flags"]}


@pytest.fixture
def base(ck):
    return ck.llama_like(0, layers=LAYERS, hidden=HIDDEN, vocab=VOCAB)


def noised(sd: dict, where=lambda name: True, scale: float = 0.05, seed: int = 1) -> dict:
    """A fine-tune: every chosen matrix moved by full-rank noise."""
    gen = torch.Generator().manual_seed(seed)
    return {n: t + scale * torch.randn(t.shape, generator=gen) if t.ndim == 2 and where(n) else t.clone()
            for n, t in sd.items()}


def save(ck, tmp_path, name: str, sd: dict):
    return ck.write_safetensors(tmp_path / f"{name}.safetensors", sd)


def test_the_same_weights_saved_twice_are_identical_and_flagged_as_nothing_changed(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    torch.save(base, tmp_path / "b.bin")
    verdict, code, _ = verdict_of(capsys, a, tmp_path / "b.bin")
    assert verdict["kind"] == "identical" and verdict["confidence"] == "high"
    assert codes(verdict)["nothing_changed"]["severity"] == "warn"
    assert code == 0  # the exit status follows the flags only when asked
    verdict, code, err = verdict_of(capsys, a, tmp_path / "b.bin", "--fail-on", "warn")
    assert code == 1 and err.startswith("FLAG warn nothing_changed: B equals A")
    assert verdict_of(capsys, a, tmp_path / "b.bin", "--fail-on", "error")[1] == 0


def test_float32_against_bfloat16_is_a_cast(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", {n: t.to(torch.bfloat16) for n, t in base.items()})
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "cast" and verdict["confidence"] == "high"
    assert "float32 → bfloat16" in verdict["summary"]
    assert "dtype_upcast" not in codes(verdict)


def test_bfloat16_widened_to_float32_is_a_cast_flagged_as_an_upcast(capsys, ck, tmp_path, base):
    narrow = {n: t.to(torch.bfloat16) for n, t in base.items()}
    a = save(ck, tmp_path, "a", narrow)
    b = save(ck, tmp_path, "b", {n: t.float() for n, t in narrow.items()})
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "cast"
    upcast = codes(verdict)["dtype_upcast"]
    assert upcast["severity"] == "warn" and "bfloat16 → float32" in upcast["message"]
    assert len(upcast["tensors"]) == len(base)


def test_a_q8_0_gguf_export_is_quantized(capsys, ck, tmp_path, base):
    from test_gguf import write_gguf  # the converter's layout: q and k rows permuted, 2-D weights quantized

    a = save(ck, tmp_path, "a", base)
    verdict, _, _ = verdict_of(capsys, a, write_gguf(tmp_path / "model-Q8_0.gguf", base, Q.Q8_0))
    assert verdict["kind"] == "quantized" and verdict["confidence"] == "high", verdict
    assert "Q8_0" in verdict["summary"]
    assert any("Q8_0: SNR median" in fact for fact in verdict["facts"])


def merged_lora(sd: dict, rank: int = 8, seed: int = 2) -> dict:
    """The base with a rank-`rank` ΔW = 2 · B@A merged into q_proj and v_proj of every layer."""
    gen = torch.Generator().manual_seed(seed)
    out = {n: t.clone() for n, t in sd.items()}
    for name in sd:
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            lora_a, lora_b = torch.randn(rank, HIDDEN, generator=gen) * 0.1, torch.randn(HIDDEN, rank, generator=gen) * 0.1
            out[name] = sd[name] + 2.0 * lora_b @ lora_a
    return out


def test_a_merged_rank_8_lora_is_low_rank_with_rank_8(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", merged_lora(base))
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "low_rank" and verdict["rank"] == 8 and verdict["confidence"] == "high", verdict
    assert "attention of layers 0–3" in verdict["summary"]


def test_a_lora_adapter_is_low_rank_from_its_factors(capsys, ck, tmp_path, base):
    """B a PEFT adapter over A: the sampled spectra come from the factors, exactly."""
    a = save(ck, tmp_path, "a", base)
    gen = torch.Generator().manual_seed(3)
    factors = {}
    for layer in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            factors[f"{prefix}.lora_A.weight"] = torch.randn(8, HIDDEN, generator=gen) * 0.1
            factors[f"{prefix}.lora_B.weight"] = torch.randn(HIDDEN, 8, generator=gen) * 0.1
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ck.write_safetensors(adapter / "adapter_model.safetensors", factors, metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
         "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}))
    verdict, _, _ = verdict_of(capsys, a, adapter)
    assert verdict["kind"] == "low_rank" and verdict["rank"] == 8, verdict


def test_an_adapter_whose_lora_b_is_zero_raises_lora_zero(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ck.write_safetensors(adapter / "adapter_model.safetensors",
                         {f"{prefix}.lora_A.weight": torch.randn(8, HIDDEN), f"{prefix}.lora_B.weight": torch.zeros(HIDDEN, 8)})
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                             "target_modules": ["q_proj"]}))
    verdict, _, _ = verdict_of(capsys, a, adapter)
    flag = codes(verdict)["lora_zero"]
    assert flag["severity"] == "warn" and "all zero" in flag["message"]


def test_frozen_embeddings_and_first_layers_make_a_partial_fine_tune_naming_them(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", noised(base, lambda n: n.startswith(("model.layers.2.", "model.layers.3.", "lm_head"))))
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "partial" and verdict["frozen"] == ["embeddings", "layers 0–1"], verdict
    assert "attention and MLP of layers 2–3" in verdict["summary"] and "output head" in verdict["summary"]
    assert "frozen_suspect" not in codes(verdict)  # the first layers frozen on purpose: a run at one end


def test_every_matrix_moved_is_a_full_fine_tune(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", noised(base))
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "full" and verdict["confidence"] == "high", verdict
    assert verdict["rank"] is None and verdict["frozen"] == []


def test_two_random_inits_are_unrelated(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", ck.llama_like(1, layers=LAYERS, hidden=HIDDEN, vocab=VOCAB))
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["kind"] == "unrelated" and verdict["confidence"] == "high", verdict
    assert "uncorrelated" in verdict["summary"]


def test_nan_injected_into_one_tensor_is_an_error_flag_naming_it(capsys, ck, tmp_path, base):
    tuned = noised(base)
    tuned["model.layers.1.mlp.up_proj.weight"][3, :5] = float("nan")
    a, b = save(ck, tmp_path, "a", base), save(ck, tmp_path, "b", tuned)
    verdict, code, err = verdict_of(capsys, a, b, "--fail-on", "error")
    flag = codes(verdict)["nonfinite"]
    assert flag["severity"] == "error" and flag["tensors"] == ["model.layers.1.mlp.up_proj.weight"]
    assert "5 NaN" in flag["message"]
    assert verdict["flags"][0]["code"] == "nonfinite"  # the most severe first
    assert code == 1 and "FLAG error nonfinite: NaN/Inf in B that A did not have" in err


def test_a_tied_head_untied_and_changed_breaks_the_tie(capsys, ck, tmp_path, base):
    torch.save(ck.tied(base), tmp_path / "a.bin")  # one storage under both names, as a tied model saves
    untied = ck.tied(base)
    untied["lm_head.weight"] = untied["model.embed_tokens.weight"].clone() + 0.01
    torch.save(untied, tmp_path / "b.bin")
    verdict, _, _ = verdict_of(capsys, tmp_path / "a.bin", tmp_path / "b.bin")
    flag = codes(verdict)["tie_broken"]
    assert flag["tensors"] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert "tied to model.embed_tokens.weight in A (shared storage)" in flag["message"]


def test_a_module_type_frozen_in_scattered_layers_is_suspect(capsys, ck, tmp_path):
    sd = ck.llama_like(0, layers=6, hidden=HIDDEN, vocab=VOCAB)
    a = save(ck, tmp_path, "a", sd)
    b = save(ck, tmp_path, "b", noised(sd, lambda n: ".layers.3.mlp." not in n))
    verdict, _, _ = verdict_of(capsys, a, b)
    suspect = [f for f in verdict["flags"] if f["code"] == "frozen_suspect"]
    assert {f["message"].split()[0] for f in suspect} == {"gate", "up", "down"}
    assert all("bit-identical in layer 3" in f["message"] for f in suspect)


def test_a_layer_changed_far_more_than_its_peers_is_an_outlier(capsys, ck, tmp_path):
    sd = ck.llama_like(0, layers=6, hidden=HIDDEN, vocab=VOCAB)
    a = save(ck, tmp_path, "a", sd)
    tuned = noised(sd, scale=0.01)
    tuned["model.layers.4.self_attn.o_proj.weight"] = sd["model.layers.4.self_attn.o_proj.weight"] * 3
    b = save(ck, tmp_path, "b", tuned)
    verdict, _, _ = verdict_of(capsys, a, b)
    outliers = {f["tensors"][0] for f in verdict["flags"] if f["code"] == "outlier"}
    assert outliers == {"model.layers.4.self_attn.o_proj.weight"}


def test_the_verdict_is_first_in_the_text_and_documented_in_json(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", merged_lora(base))
    assert main(["diff", str(a), str(b), "--no-cache"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("verdict: low_rank (high confidence): a low-rank change (rank 8)")
    verdict, _, _ = verdict_of(capsys, a, b)
    assert set(verdict) == {"kind", "confidence", "summary", "facts", "rank", "frozen", "flags"}
    assert verdict["kind"] in KINDS and verdict["confidence"] in ("high", "medium", "low")
    assert all(isinstance(f, str) for f in verdict["facts"]) and isinstance(verdict["summary"], str)
    for flag in verdict["flags"]:
        assert set(flag) == {"code", "severity", "tensors", "message"}
        assert flag["code"] in FLAGS and flag["severity"] in SEVERITIES


def test_the_readme_lists_every_kind_and_flag(ck):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### The verdict"):]
    for word in (*KINDS, *FLAGS):
        assert f"`{word}`" in section, word


def test_figures_behind_the_verdict_agree_with_a_float64_reference(capsys, ck, tmp_path, base):
    """The median cosine the verdict quotes is the scan's, which agrees with float64."""
    a = save(ck, tmp_path, "a", base)
    tuned = noised(base)
    b = save(ck, tmp_path, "b", tuned)
    verdict, _, _ = verdict_of(capsys, a, b)
    fact = next(f for f in verdict["facts"] if f.startswith("cosine of A and B"))
    quoted = float(fact.split("median ")[1].split()[0])
    names = [n for n, t in base.items() if t.ndim == 2]
    cosines = [float(torch.nn.functional.cosine_similarity(base[n].double().reshape(1, -1),
                                                           tuned[n].double().reshape(1, -1))) for n in names]
    weights = [base[n].numel() for n in names]
    order = np.argsort(cosines)
    cumulative = np.cumsum(np.array(weights)[order])
    expected = np.array(cosines)[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    assert quoted == pytest.approx(expected, rel=1e-3)


def test_a_vocabulary_grown_by_8_rows_at_the_mean_is_flagged_with_its_audit(capsys, ck, tmp_path, base):
    """resize_token_embeddings with mean init: the old rows stay, 8 new ones equal the old rows' mean."""
    grown = {n: t.clone() for n, t in base.items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old = base[name]
        grown[name] = torch.cat([old, old.double().mean(dim=0).float().expand(8, -1)])
    a, b = save(ck, tmp_path, "a", base), save(ck, tmp_path, "b", noised(grown, lambda n: ".layers." in n))
    code = main(["diff", str(a), str(b), "--json", "--no-cache"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    flags = [f for f in doc["verdict"]["flags"] if f["code"] == "vocab_resized"]
    assert [f["tensors"] for f in flags] == [["model.embed_tokens.weight"], ["lm_head.weight"]] or \
        sorted(f["tensors"][0] for f in flags) == ["lm_head.weight", "model.embed_tokens.weight"]
    for flag in flags:
        assert flag["severity"] == "info"  # no zero, NaN/Inf or far rows: nothing wrong with it
        assert f"resized [{VOCAB}, {HIDDEN}] → [{VOCAB + 8}, {HIDDEN}]" in flag["message"]
        assert f"common [{VOCAB}, {HIDDEN}] identical" in flag["message"] and "mean of old rows" in flag["message"]
    entry = next(t for t in doc["tensors"] if t["name"] == "model.embed_tokens.weight")
    assert entry["overlap"]["status"] == "identical" and entry["overlap"]["shape"] == [VOCAB, HIDDEN]
    added = entry["added"]
    assert (added["side"], added["shape"], added["zero_rows"], added["nonfinite_rows"], added["duplicate_rows"]) == \
        ("b", [8, HIDDEN], 0, 0, 8)
    mean = base["model.embed_tokens.weight"].double().mean(dim=0)
    assert added["norm_mean"] == pytest.approx(float(mean.float().double().norm()), rel=1e-6)
    assert added["norm_mean_old"] == pytest.approx(float(base["model.embed_tokens.weight"].double().norm(dim=1).mean()),
                                                   rel=1e-6)
    # the rest of the verdict still reads the fine-tune: the layers moved, the resized tensors apart
    assert doc["verdict"]["kind"] in ("full", "partial")


def test_zero_rows_added_to_the_vocabulary_are_a_warning(capsys, ck, tmp_path, base):
    grown = dict(base)
    grown["model.embed_tokens.weight"] = torch.cat([base["model.embed_tokens.weight"], torch.zeros(8, HIDDEN)])
    a, b = save(ck, tmp_path, "a", base), save(ck, tmp_path, "b", grown)
    verdict, _, _ = verdict_of(capsys, a, b)
    flag = codes(verdict)["vocab_resized"]
    assert flag["severity"] == "warn" and "zeros" in flag["message"]


def test_a_lora_adapter_over_a_bfloat16_base_is_no_cast_and_no_upcast(capsys, ck, tmp_path, base):
    """W + ΔW is computed in float32: no stored type changed."""
    a = save(ck, tmp_path, "a", {n: t.to(torch.bfloat16) for n, t in base.items()})
    gen = torch.Generator().manual_seed(4)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    ck.write_safetensors(adapter / "adapter_model.safetensors", {
        f"{prefix}.lora_A.weight": torch.randn(8, HIDDEN, generator=gen), f"{prefix}.lora_B.weight": torch.zeros(HIDDEN, 8)})
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                             "target_modules": ["q_proj"]}))
    verdict, _, _ = verdict_of(capsys, a, adapter)
    assert verdict["kind"] == "identical" and "dtype_upcast" not in codes(verdict)  # ΔW = 0: nothing moved
    assert {"lora_zero", "nothing_changed"} <= set(codes(verdict))


def test_a_merged_rank_64_lora_reads_rank_64(capsys, ck, tmp_path):
    """Ranks past the 32 singular values a spectrum view keeps: the verdict's blocks keep them all."""
    hidden = 128
    sd = ck.llama_like(0, layers=2, hidden=hidden, vocab=VOCAB)
    gen = torch.Generator().manual_seed(5)
    merged = {n: t.clone() for n, t in sd.items()}
    for name in sd:
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            merged[name] = sd[name] + torch.randn(hidden, 64, generator=gen) @ torch.randn(64, hidden, generator=gen) * 0.01
    verdict, _, _ = verdict_of(capsys, save(ck, tmp_path, "a", sd), save(ck, tmp_path, "b", merged))
    assert verdict["kind"] == "low_rank" and verdict["rank"] == 64, verdict


def test_a_grown_vocabulary_on_a_model_mostly_embeddings_is_not_unrelated(capsys, ck, tmp_path):
    sd = ck.llama_like(0, layers=2, hidden=HIDDEN, vocab=4096)
    grown = noised(sd, lambda n: ".layers." in n)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        grown[name] = torch.cat([sd[name], torch.randn(8, HIDDEN)])
    verdict, _, _ = verdict_of(capsys, save(ck, tmp_path, "a", sd), save(ck, tmp_path, "b", grown))
    assert verdict["kind"] != "unrelated", verdict
    assert any("2 resized in one dimension" in fact for fact in verdict["facts"])


def test_unreadable_tensors_lower_the_confidence_and_say_so(capsys, ck, tmp_path, base):
    a = save(ck, tmp_path, "a", base)
    b = save(ck, tmp_path, "b", base)
    data = b.read_bytes()
    b.write_bytes(data[:len(data) - 4 * HIDDEN * HIDDEN])  # the last tensors' bytes cut off
    verdict, _, _ = verdict_of(capsys, a, b)
    assert verdict["confidence"] == "low" and "nothing_changed" not in codes(verdict)
    assert any("unreadable, not compared" in fact for fact in verdict["facts"]), verdict


def test_a_head_stored_in_b_where_a_saved_it_tied_breaks_the_tie_only_if_it_differs(capsys, ck, tmp_path, base):
    """safetensors drops a tied head: A has none. B storing a head equal to its embeddings keeps
    the tie (made explicit); B storing a different one breaks it."""
    untied = {n: t for n, t in base.items() if n != "lm_head.weight"}
    a = save(ck, tmp_path, "a", untied)
    same = save(ck, tmp_path, "same", untied | {"lm_head.weight": base["model.embed_tokens.weight"].clone()})
    verdict, _, _ = verdict_of(capsys, a, same)
    assert "tie_broken" not in codes(verdict)
    other = save(ck, tmp_path, "other", untied | {"lm_head.weight": base["model.embed_tokens.weight"] + 0.01})
    verdict, _, _ = verdict_of(capsys, a, other)
    assert "(no head stored)" in codes(verdict)["tie_broken"]["message"]
