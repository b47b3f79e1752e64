"""Resized tensors compared where they overlap: the common part's figures against a float64
reference, and the audit of the added rows (zeros, NaN/Inf, duplicates, norms, how they were
made), along rows and columns, grown and shrunk, through the engine, the JSON and the text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weightscope.cli import main
from weightscope.compare import overlap
from weightscope.compare.overlap import Layout, Slices
from weightscope.compare.reading import InMemory

OLD, NEW, HIDDEN = 32, 8, 8


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def save(path, sd: dict) -> str:
    """safetensors for .safetensors, torch.save otherwise: the real writers."""
    sd = {k: v.contiguous() for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return str(path)


def resized_of(diff, tmp_path, a: torch.Tensor, b: torch.Tensor, suffix: str = ".safetensors"):
    """What the scan found for one resized tensor `w` (beside an unchanged one), in files of new names
    (a process keeps its descriptors by path)."""
    other = randn(99, 4, 4)
    n = len(list(tmp_path.glob("a*")))
    d = diff(save(tmp_path / f"a{n}{suffix}", {"w": a, "other": other}),
             save(tmp_path / f"b{n}{suffix}", {"w": b, "other": other}))
    assert d.statuses == {"w": "shape_mismatch", "other": "identical"}
    assert set(d.table.resized) == {d.catalog.index("w")}  # only the resized pair has them
    found = d.result("w").resized
    assert found is not None and found.error is None
    return found


def reference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The figures of a pair of one shape, in float64 with torch."""
    a, b = a.double(), b.double()
    d = b - a
    return {"rel_l2": float(d.norm() / a.norm()), "max_abs": float(d.abs().max()), "mean_abs": float(d.abs().mean()),
            "rms": float(d.pow(2).mean().sqrt()), "cosine": float((a * b).sum() / (a.norm() * b.norm())),
            "mean_a": float(a.mean()), "std_a": float(a.std(unbiased=False)), "l2_b": float(b.norm()),
            "mean_b": float(b.mean()), "max_abs_index": tuple(int(i) for i in np.unravel_index(int(d.abs().argmax()),
                                                                                                tuple(d.shape)))}


def row_norms(rows: torch.Tensor) -> np.ndarray:
    return rows.double().reshape(len(rows), -1).norm(dim=1).numpy()


def check_common(found, a: torch.Tensor, b: torch.Tensor) -> None:
    """The common part's figures agree with the float64 reference to 1e-9 relative."""
    ref = reference(a, b)
    diff, side_a, side_b = found.diff, found.a, found.b
    assert found.shape == tuple(a.shape)
    for got, want in ((diff.rel_l2, ref["rel_l2"]), (diff.max_abs, ref["max_abs"]), (diff.mean_abs, ref["mean_abs"]),
                      (diff.rms, ref["rms"]), (diff.cosine, ref["cosine"]), (side_a.mean, ref["mean_a"]),
                      (side_a.std, ref["std_a"]), (side_b.l2, ref["l2_b"]), (side_b.mean, ref["mean_b"])):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert diff.max_abs_index == ref["max_abs_index"]
    assert side_a.finite == side_b.finite == a.numel()


class TestGrownVocabulary:
    def test_rows_set_to_the_mean_of_old_rows(self, diff, tmp_path):
        """32 rows grown by 8, each the mean of the old rows, the old rows unchanged: the common
        part identical, the 8 rows duplicates of each other, nearest the old rows' mean."""
        old = randn(0, OLD, HIDDEN)
        mean = old.mean(0, keepdim=True).expand(NEW, HIDDEN)
        found = resized_of(diff, tmp_path, old, torch.cat([old, mean]))
        assert found.status == "identical" and found.dim == 0 and found.shape == (OLD, HIDDEN)
        assert found.diff.max_abs == 0 and found.diff.mismatched == 0
        added = found.added
        assert (added.side, added.dim, added.rows, added.shape) == ("b", 0, (OLD, OLD + NEW), (NEW, HIDDEN))
        assert (added.zero_rows, added.nonfinite_rows, added.duplicate_rows, added.old_copies) == (0, 0, NEW, 0)
        assert added.mean_rows == NEW and added.init == "mean of old rows"
        assert added.norm_mean == pytest.approx(row_norms(mean).mean(), rel=1e-12)
        assert added.norm_mean_old == pytest.approx(row_norms(old).mean(), rel=1e-12)

    def test_zero_rows(self, diff, tmp_path):
        """New rows left at zero (torch.save files): zero_rows 8, initialised as zeros."""
        old = randn(1, OLD, HIDDEN)
        found = resized_of(diff, tmp_path, old, torch.cat([old, torch.zeros(NEW, HIDDEN)]), suffix=".bin")
        assert found.status == "identical"
        added = found.added
        assert (added.zero_rows, added.nonfinite_rows, added.far_rows, added.init) == (NEW, 0, NEW, "zeros")
        assert added.norm_mean == 0 and added.duplicate_rows == NEW

    def test_fine_tuned_old_rows_and_random_new_rows(self, diff, tmp_path):
        """Old rows moved by fine-tuning, new rows random at the old rows' scale: the common part
        changed, every figure as a float64 reference has it; no duplicates; random at init scale."""
        old = randn(2, OLD, HIDDEN) * 0.02
        tuned = old + randn(3, OLD, HIDDEN) * 0.001
        new = randn(4, NEW, HIDDEN) * 0.02
        found = resized_of(diff, tmp_path, old, torch.cat([tuned, new]))
        assert found.status == "changed"
        check_common(found, old, tuned)
        added = found.added
        assert (added.zero_rows, added.nonfinite_rows, added.duplicate_rows, added.mean_rows) == (0, 0, 0, 0)
        assert added.init == "random at init scale" and added.far_rows == 0
        assert added.norm_mean == pytest.approx(row_norms(new).mean(), rel=1e-12)
        assert added.norm_mean_old == pytest.approx(row_norms(tuned).mean(), rel=1e-12)

    def test_rows_far_from_the_old_scale_and_copies(self, diff, tmp_path):
        """Rows 10× the old rows' norm read as far from them; copies of old rows as copies."""
        old = randn(5, OLD, HIDDEN)
        far = resized_of(diff, tmp_path, old, torch.cat([old, 10 * randn(6, NEW, HIDDEN)])).added
        assert far.init == "norm far from old rows'" and far.duplicate_rows == 0 and far.far_rows == NEW
        copies = resized_of(diff, tmp_path, old, torch.cat([old, old[3:3 + NEW]])).added
        assert (copies.init, copies.old_copies, copies.duplicate_rows) == ("copies of old rows", NEW, NEW)

    def test_nan_in_an_added_row(self, diff, tmp_path):
        """One NaN in one added row: nonfinite_rows 1, the guess says so; norms leave that row out."""
        old = randn(7, OLD, HIDDEN)
        new = randn(8, NEW, HIDDEN)
        new[5, 2] = math.nan
        found = resized_of(diff, tmp_path, old, torch.cat([old, new]))
        added = found.added
        assert (added.nonfinite_rows, added.zero_rows, added.init) == (1, 0, "holds NaN/Inf")
        assert added.norm_mean == pytest.approx(row_norms(new[[0, 1, 2, 3, 4, 6, 7]]).mean(), rel=1e-12)
        assert found.status == "identical"

    def test_read_a_few_rows_at_a_time(self, diff, tmp_path, monkeypatch):
        """Stretches of 3 rows (one across the old rows' end, split there): the audit read whole."""
        old = randn(10, OLD, HIDDEN)
        new = torch.cat([old[:4], old.mean(0, keepdim=True).expand(3, HIDDEN), torch.zeros(1, HIDDEN)])
        whole = resized_of(diff, tmp_path, old, torch.cat([old, new])).added
        monkeypatch.setattr(overlap, "CHUNK", 3 * HIDDEN)
        assert resized_of(diff, tmp_path, old, torch.cat([old, new])).added == whole
        assert (whole.zero_rows, whole.old_copies, whole.mean_rows, whole.duplicate_rows) == (1, 4, 3, 7)

    def test_shrunk_vocabulary(self, diff, tmp_path):
        """A bigger than B: the rows only A has are audited, side "a"; the common part is B's rows."""
        old = randn(9, OLD + NEW, HIDDEN)
        found = resized_of(diff, tmp_path, old, old[:OLD].clone())
        assert found.status == "identical" and found.shape == (OLD, HIDDEN)
        added = found.added
        assert (added.side, added.rows, added.shape) == ("a", (OLD, OLD + NEW), (NEW, HIDDEN))
        assert added.init == "random at init scale"


class TestOtherDimensions:
    def test_columns_grown(self, diff, tmp_path):
        """A weight grown by 8 columns (dim 1), old columns fine-tuned, new ones the old columns'
        mean: figures over the common columns as a float64 reference has them; the audit per column."""
        old = randn(10, HIDDEN, OLD)
        tuned = old + 0.01 * randn(11, HIDDEN, OLD)
        new = tuned.mean(1, keepdim=True).expand(HIDDEN, NEW)
        found = resized_of(diff, tmp_path, old, torch.cat([tuned, new], dim=1))
        assert found.dim == 1 and found.status == "changed"
        check_common(found, old, tuned)
        added = found.added
        assert (added.side, added.rows, added.shape) == ("b", (OLD, OLD + NEW), (HIDDEN, NEW))
        assert added.init == "mean of old rows" and added.duplicate_rows == NEW
        assert added.norm_mean == pytest.approx(row_norms(new.T).mean(), rel=1e-12)
        assert added.norm_mean_old == pytest.approx(row_norms(tuned.T).mean(), rel=1e-12)

    @pytest.mark.parametrize("chunk, read", [(1 << 21, 16 << 20), (7, 40), (4, 8)])
    def test_middle_dimension_in_bfloat16_read_in_small_chunks(self, diff, tmp_path, monkeypatch, chunk, read):
        """A 3-D bf16 tensor resized along dim 1, read whole, a row at a time or a part of a row
        at a time (runs of the common part gathered from small reads): the same figures each way."""
        monkeypatch.setattr(overlap, "CHUNK", chunk)
        monkeypatch.setattr(overlap, "READ", read)
        old = randn(12, 3, 5, 6).to(torch.bfloat16)
        tuned = (old.float() + 0.05 * randn(13, 3, 5, 6)).to(torch.bfloat16)
        new = torch.zeros(3, 2, 6, dtype=torch.bfloat16)
        new[1, 0] = old[1, 4]  # one added slice's outer part copies an old one's: not a duplicate slice
        found = resized_of(diff, tmp_path, old, torch.cat([tuned, new], dim=1))
        assert found.dim == 1 and found.shape == (3, 5, 6)
        check_common(found, old, tuned)
        added = found.added
        assert (added.rows, added.shape, added.zero_rows, added.duplicate_rows) == ((5, 7), (3, 2, 6), 1, 0)
        assert added.norm_mean == pytest.approx(row_norms(new.transpose(0, 1)).mean(), rel=1e-6)

    def test_slices_read_the_part_in_order(self):
        """`Slices` gives rows [lo, hi) of a tensor as the part's own row-major bytes, whatever windows are asked."""
        x = np.arange(4 * 7 * 3, dtype=np.float32).reshape(4, 7, 3)
        raw = InMemory(x.reshape(-1).view(np.uint8))
        part = Slices(raw, Layout.of(x.shape, 1), 4, 2, 5)
        want = x[:, 2:5].reshape(-1).view(np.uint8)
        assert part.size == want.size
        for step in (4, 12, 36, 40, 100, want.size):
            got = np.concatenate([part.window(s, min(s + step, want.size)).copy() for s in range(0, want.size, step)])
            assert np.array_equal(got, want)

    def test_pairs_that_do_not_qualify(self, diff, tmp_path):
        """Two dimensions resized, or a different number of them: shape_mismatch without an overlap."""
        d = diff(save(tmp_path / "a.safetensors", {"two": randn(0, 4, 4), "rank": randn(1, 4, 4)}),
                 save(tmp_path / "b.safetensors", {"two": randn(0, 5, 5), "rank": randn(1, 4, 4, 1)}))
        assert d.statuses == {"two": "shape_mismatch", "rank": "shape_mismatch"}
        assert d.table.resized == {} and d.result("two").resized is None


class TestOutput:
    @pytest.fixture
    def grown(self, tmp_path):
        old = randn(20, OLD, HIDDEN)
        same = randn(21, 4, 4)
        a = save(tmp_path / "a.safetensors", {"embed": old, "same": same})
        b = save(tmp_path / "b.safetensors", {"embed": torch.cat([old, old.mean(0, keepdim=True).expand(NEW, HIDDEN)]),
                                              "same": same})
        return a, b

    def test_json_keys_and_shapes(self, capsys, grown):
        """`diff --json` (through the engine): a resized entry has `overlap` (the pair's fields over
        the common part, its shape and status) and `added`; other entries have neither."""
        assert main(["diff", *grown, "--json", "--no-cache"]) == 1
        doc = json.loads(capsys.readouterr().out)
        by_name = {t["name"]: t for t in doc["tensors"]}
        assert "overlap" not in by_name["same"] and "added" not in by_name["same"]
        embed = by_name["embed"]
        assert embed["status"] == "shape_mismatch"
        common = embed["overlap"]
        assert set(common) == {"shape", "status", "error", "a", "b", "diff"}
        assert common["shape"] == [OLD, HIDDEN] and common["status"] == "identical" and common["error"] is None
        assert set(common["a"]) == set(embed["a"]) and common["a"]["finite"] == OLD * HIDDEN
        assert set(common["diff"]) == {"max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "snr_db", "cosine",
                                       "changed_fraction", "changed", "mismatched", "atol", "rtol", "undefined"}
        assert common["diff"]["rel_l2"] == 0 and common["diff"]["snr_db"] is None
        assert common["diff"]["undefined"]["snr_db"] == "nothing changed"
        added = embed["added"]
        assert set(added) == {"side", "dim", "rows", "shape", "zero_rows", "nonfinite_rows", "duplicate_rows",
                              "far_rows", "old_copies", "mean_rows", "norm_mean", "norm_mean_old", "init"}
        assert (added["side"], added["dim"], added["rows"], added["shape"]) == ("b", 0, [OLD, OLD + NEW], [NEW, HIDDEN])
        assert added["init"] == "mean of old rows" and added["duplicate_rows"] == NEW

    def test_text_says_the_gist(self, capsys, grown):
        assert main(["diff", *grown, "--no-cache"]) == 1
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("shape_mismatch"))
        assert line.endswith(f"common [{OLD}, {HIDDEN}] identical; {NEW} rows added in B: mean of old rows")

    def test_a_failure_says_so_in_one_line(self, capsys, grown, monkeypatch):
        """A resized pass that fails: one line on stderr, exit 2, and the entry says why (no traceback)."""
        monkeypatch.setenv("WEIGHTSCOPE_FAULT", "resized")
        assert main(["diff", *grown, "--json", "--no-cache"]) == 2
        captured = capsys.readouterr()
        (line,) = captured.err.strip().splitlines()
        assert line.startswith("weightscope: resized failed: embed: RuntimeError: injected fault in resized (")
        embed = next(t for t in json.loads(captured.out)["tensors"] if t["name"] == "embed")
        assert embed["overlap"]["status"] == "error" and "injected fault" in embed["overlap"]["error"]
        assert embed["overlap"]["diff"] is None and embed["added"] is None
