"""`weightscope diff` and `weightscope inspect` in process: the JSON figures, histograms,
tolerance options, the CI checks (--expect-identical, --expect-changed, --fail-on-nonfinite)
and their exit codes and failure lines."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from weightscope.cli import main

SIDE_KEYS = {"min", "max", "mean", "std", "absmax", "l2", "nan", "posinf", "neginf", "zeros"}
DIFF_KEYS = {"max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "cosine", "changed_fraction", "mismatched",
             "atol", "rtol"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Nothing is written to the real home: the result cache lives under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def randn(seed: int, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def write(path, sd) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.fixture
def trained(tmp_path):
    """A base model and a fine-tune: embeddings frozen, three layers moved (one only
    within float32's tolerance), a NaN in B's o_proj, an Inf in the (frozen) norm."""
    a = {
        "model.embed_tokens.weight": randn(0, 32, 8),
        "model.layers.0.q_proj.weight": randn(1, 8, 8),
        "model.layers.0.o_proj.weight": randn(2, 8, 8),
        "model.layers.1.q_proj.weight": randn(3, 8, 8),
        "model.norm.weight": torch.ones(8),
    }
    a["model.norm.weight"][2] = math.inf
    b = dict(a)
    b["model.embed_tokens.weight"] = a["model.embed_tokens.weight"].clone()
    b["model.layers.0.q_proj.weight"] = a["model.layers.0.q_proj.weight"] + 0.05 * randn(4, 8, 8)
    b["model.layers.0.o_proj.weight"] = a["model.layers.0.o_proj.weight"] + 0.05 * randn(5, 8, 8)
    b["model.layers.0.o_proj.weight"][1, 1] = math.nan
    b["model.layers.1.q_proj.weight"] = a["model.layers.1.q_proj.weight"] * (1 + 1e-6)
    b["model.norm.weight"] = a["model.norm.weight"].clone()
    return write(tmp_path / "a.safetensors", a), write(tmp_path / "b.safetensors", b), a, b


def run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line]


def diff_json(capsys, *argv) -> tuple[int, dict]:
    code, out, _ = run(capsys, "diff", *argv, "--json")
    return code, json.loads(out)


def tensors(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["tensors"]}


class TestDiffJson:
    def test_figures_and_keys(self, capsys, trained):
        path_a, path_b, a, b = trained
        code, doc = diff_json(capsys, path_a, path_b)
        assert code == 1
        by_name = tensors(doc)
        for t in by_name.values():
            assert SIDE_KEYS <= set(t["a"]) and SIDE_KEYS <= set(t["b"]) and DIFF_KEYS <= set(t["diff"])
            assert "histograms" not in t
        assert {n: t["status"] for n, t in by_name.items()} == {
            "model.embed_tokens.weight": "identical", "model.layers.0.q_proj.weight": "changed",
            "model.layers.0.o_proj.weight": "changed", "model.layers.1.q_proj.weight": "close",
            "model.norm.weight": "identical"}
        assert doc["summary"]["close"] == 1 and doc["summary"]["identical"] == 2 and doc["summary"]["changed"] == 2

        q = by_name["model.layers.0.q_proj.weight"]
        qa, qb = a["model.layers.0.q_proj.weight"].double(), b["model.layers.0.q_proj.weight"].double()
        d = qb - qa
        assert q["diff"]["rel_l2"] == pytest.approx(float(d.norm() / qa.norm()), rel=1e-6)
        assert q["diff"]["max_abs"] == pytest.approx(float(d.abs().max()), rel=1e-6)
        assert q["diff"]["max_abs_index"] == list(divmod(int(d.abs().argmax()), 8))
        assert q["diff"]["cosine"] == pytest.approx(float(qa.flatten() @ qb.flatten() / (qa.norm() * qb.norm())),
                                                    rel=1e-6)
        assert q["diff"]["atol"] == 1e-5 and q["diff"]["rtol"] == 1.3e-6
        assert q["a"]["std"] == pytest.approx(float(qa.std(unbiased=False)), rel=1e-6)

        o = by_name["model.layers.0.o_proj.weight"]
        assert o["b"]["nan"] == 1 and o["a"]["nan"] == 0
        norm = by_name["model.norm.weight"]
        assert norm["a"]["posinf"] == norm["b"]["posinf"] == 1 and norm["a"]["max"] == 1.0

    def test_histograms_add_bins(self, capsys, trained):
        path_a, path_b, *_ = trained
        _, doc = diff_json(capsys, path_a, path_b, "--histograms")
        q = tensors(doc)["model.layers.0.q_proj.weight"]
        assert set(q["histograms"]) == {"a", "b", "diff"}
        h = q["histograms"]["a"]
        assert {"lo", "hi", "counts", "below", "above"} <= set(h) and len(h["counts"]) > 1
        assert sum(h["counts"]) + h["below"] + h["above"] == 64
        assert (h["lo"], h["hi"]) == (q["histograms"]["b"]["lo"], q["histograms"]["b"]["hi"])

    def test_tolerances_change_the_verdict(self, capsys, trained):
        path_a, path_b, *_ = trained
        _, doc = diff_json(capsys, path_a, path_b, "--atol", "1.0")
        by_name = tensors(doc)
        assert by_name["model.layers.0.q_proj.weight"]["status"] == "close"
        assert by_name["model.layers.0.q_proj.weight"]["diff"]["atol"] == 1.0
        assert by_name["model.layers.0.o_proj.weight"]["status"] == "changed"  # its NaN is never close
        _, doc = diff_json(capsys, path_a, path_b, "--rtol", "0", "--atol", "0")
        assert tensors(doc)["model.layers.1.q_proj.weight"]["status"] == "changed"
        _, doc = diff_json(capsys, path_a, path_b, "--rtol", "0.5")
        q = tensors(doc)["model.layers.0.q_proj.weight"]["diff"]
        assert (q["rtol"], q["atol"]) == (0.5, 1e-5)  # the other keeps its dtype default

    def test_equal_checkpoints_exit_0(self, capsys, trained):
        path_a, *_ = trained
        code, doc = diff_json(capsys, path_a, path_a)
        assert code == 0 and doc["summary"]["identical"] == 5 and doc["summary"]["close"] == 0


class TestDiffText:
    def test_table_has_the_key_figures(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, out, err = run(capsys, "diff", path_a, path_b)
        assert code == 1 and err == []  # no progress bar when stderr is not a terminal
        lines = out.splitlines()
        header = next(k for k, line in enumerate(lines) if line.startswith("status"))
        for column in ("rel_l2", "max|Δ|", "cosine", "NaN/Inf"):
            assert column in lines[header]
        o_row = next(line for line in lines[header:] if "model.layers.0.o_proj.weight" in line)
        assert "1 NaN" in o_row
        assert "1 close" in out.splitlines()[-1] and "2 changed" in out.splitlines()[-1]


class TestChecks:
    def test_expect_identical_holds(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-identical", "model.embed*")
        assert code == 0 and err == []

    def test_expect_identical_fails_per_tensor(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-identical", "model.layers.*",
                           "--expect-identical", "model.embed*")
        assert code == 1
        assert len(err) == 3
        for name in ("model.layers.0.q_proj.weight", "model.layers.0.o_proj.weight", "model.layers.1.q_proj.weight"):
            line = next(line for line in err if name in line)
            assert "identical" in line
        assert any("close" in line for line in err if "model.layers.1.q_proj.weight" in line)

    def test_expect_changed(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-changed", "model.layers.*")
        assert code == 0 and err == []  # `close` counts as moved
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-changed", "model.layers.*",
                           "--expect-changed", "model.embed*")
        assert code == 1 and len(err) == 1
        assert "model.embed_tokens.weight" in err[0] and "changed" in err[0] and "identical" in err[0]

    def test_expect_changed_glob_matching_nothing(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-changed", "*lora_B*")
        assert code == 1 and len(err) == 1
        assert "*lora_B*" in err[0] and "no tensor matches" in err[0]

    def test_expect_identical_glob_matching_nothing(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--expect-identical", "vision.*")
        assert code == 1 and len(err) == 1 and "vision.*" in err[0]

    def test_globs_match_either_sides_name(self, capsys, tmp_path):
        """A pair whose names differ by a `model.` prefix matches a glob on either name."""
        x = randn(8, 4)
        path_a = write(tmp_path / "a.safetensors", {"model.x.weight": x})
        path_b = write(tmp_path / "b.safetensors", {"x.weight": x.clone()})
        for pattern in ("x.*", "model.x.*"):
            code, _, err = run(capsys, "diff", path_a, path_b, "--expect-identical", pattern)
            assert code == 0 and err == []

    def test_fail_on_nonfinite(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "diff", path_a, path_b, "--fail-on-nonfinite")
        assert code == 1 and len(err) == 2
        o = next(line for line in err if "model.layers.0.o_proj.weight" in line)
        assert "NaN" in o and "B" in o
        norm = next(line for line in err if "model.norm.weight" in line)
        assert "+Inf" in norm

    def test_fail_on_nonfinite_passes_on_finite_weights(self, capsys, tmp_path):
        path_a = write(tmp_path / "a.safetensors", {"w": randn(6, 10)})
        path_b = write(tmp_path / "b.safetensors", {"w": randn(7, 10)})
        code, _, err = run(capsys, "diff", path_a, path_b, "--fail-on-nonfinite")
        assert code == 0 and err == []  # the values changed, but the only check holds

    def test_checks_combine(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, out, err = run(capsys, "diff", path_a, path_b, "--json", "--expect-identical", "model.embed*",
                             "--expect-changed", "model.layers.0.*", "--fail-on-nonfinite")
        assert code == 1 and len(err) == 2 and json.loads(out)["summary"]["changed"] == 2
        assert all("model.embed" not in line for line in err)


class TestInspect:
    def test_json(self, capsys, trained):
        path_a, _, a, _ = trained
        code, out, err = run(capsys, "inspect", path_a, "--json")
        assert code == 0 and err == []
        doc = json.loads(out)
        by_name = {t["name"]: t for t in doc["tensors"]}
        assert set(by_name) == set(a)
        for name, t in by_name.items():
            assert SIDE_KEYS <= set(t["stats"])
            x = a[name].double()
            finite = x[torch.isfinite(x)]
            assert t["stats"]["mean"] == pytest.approx(float(finite.mean()), rel=1e-6, abs=1e-12)
            assert t["stats"]["l2"] == pytest.approx(float(finite.norm()), rel=1e-6)
        assert by_name["model.norm.weight"]["stats"]["posinf"] == 1
        assert doc["summary"]["nonfinite"] == 1 and doc["summary"]["tensors"] == 5

    def test_text(self, capsys, trained):
        path_a, *_ = trained
        code, out, _ = run(capsys, "inspect", path_a)
        assert code == 0
        norm_row = next(line for line in out.splitlines() if "model.norm.weight" in line)
        assert "+Inf" in norm_row
        assert "1 with NaN/Inf" in out.splitlines()[-1]

    def test_fail_on_nonfinite(self, capsys, trained):
        path_a, path_b, *_ = trained
        code, _, err = run(capsys, "inspect", path_b, "--fail-on-nonfinite")
        assert code == 1 and len(err) == 2
        assert any("model.layers.0.o_proj.weight" in line and "NaN" in line for line in err)
        assert any("model.norm.weight" in line and "+Inf" in line for line in err)


class TestDevice:
    def test_cuda_without_cuda_exits_2(self, capsys, trained, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        path_a, path_b, *_ = trained
        for argv in (("diff", path_a, path_b), ("inspect", path_a)):
            code, out, err = run(capsys, *argv, "--device", "cuda")
            assert code == 2 and out == ""
            assert len(err) == 1 and "cuda" in err[0].lower() and "Traceback" not in err[0]

    def test_cpu_and_auto_agree(self, capsys, trained):
        path_a, path_b, *_ = trained
        _, cpu = diff_json(capsys, path_a, path_b, "--device", "cpu", "--no-cache")
        _, auto = diff_json(capsys, path_a, path_b, "--device", "auto", "--no-cache")
        assert cpu["tensors"] == auto["tensors"]
