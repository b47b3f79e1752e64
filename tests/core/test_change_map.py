"""Where in a matrix a change sits (issue 6): |Δ| pooled to a grid, tested on the pooled values."""

import numpy as np
import pytest
import torch

from weightscope.analysis import change_map as cm
from weightscope.compare.align import Pair, align
from weightscope.sources.discover import open_checkpoint

VOCAB, HIDDEN = 2000, 64
NEW = range(900, 1000)  # the rows the fine-tune changed


@pytest.fixture(params=[torch.float32, torch.bfloat16])
def embeddings(request, ck, tmp_path):
    """An embedding pair in which only rows 900–999 changed; the pair, opened."""
    dtype = request.param
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(VOCAB, HIDDEN, generator=gen).to(dtype)
    tuned = base.clone()
    tuned[NEW.start:NEW.stop] += torch.randn(len(NEW), HIDDEN, generator=gen).to(dtype)
    name = "model.embed_tokens.weight"
    a = open_checkpoint(str(ck.write_safetensors(tmp_path / "a.safetensors", {name: base})))
    b = open_checkpoint(str(ck.write_safetensors(tmp_path / "b.safetensors", {name: tuned})))
    yield a, b, align(a, b).pairs[0], base.double(), tuned.double()
    a.close()
    b.close()


def lit_rows(found: cm.ChangeMap) -> list[int]:
    return [i for i in range(found.rms.shape[0]) if found.rms[i].max() > 0]


class TestEmbeddingRows:
    def test_aligned_grid_lights_those_rows_only(self, embeddings):
        """40 cell rows of 50: rows 900–999 are cells 18 and 19, lit in every column; nothing else is."""
        a, b, pair, *_ = embeddings
        found = cm.change_map(a, b, pair, 40, 16)
        assert found.rms.shape == (40, 16)
        assert lit_rows(found) == [18, 19]
        assert (found.rms[18:20] > 0).all()
        assert found.rows_of(18) == (900, 950) and found.rows_of(19) == (950, 1000)
        assert np.count_nonzero(found.rms) == 2 * 16 and np.count_nonzero(found.peak) == 2 * 16

    def test_any_grid_lights_exactly_the_cells_over_those_rows(self, embeddings):
        """With a grid that does not divide the rows, the lit cells are those whose rows meet 900–999."""
        a, b, pair, *_ = embeddings
        found = cm.change_map(a, b, pair, 37, 10)
        meets = [i for i in range(37) if found.rows_of(i)[0] < NEW.stop and found.rows_of(i)[1] > NEW.start]
        assert lit_rows(found) == meets == [16, 17, 18]

    def test_pooled_values(self, embeddings):
        """Each cell holds the RMS and the largest |Δ| of its block."""
        a, b, pair, base, tuned = embeddings
        found = cm.change_map(a, b, pair, 40, 16)
        delta = (tuned - base).abs()
        for i, j in [(18, 0), (19, 15), (3, 7)]:
            (r0, r1), (c0, c1) = found.rows_of(i), found.cols_of(j)
            block = delta[r0:r1, c0:c1]
            assert found.rms[i, j] == pytest.approx(float(block.square().mean().sqrt()), rel=1e-6)
            assert found.peak[i, j] == pytest.approx(float(block.max()), rel=1e-6)
        assert found.max_rms == pytest.approx(float(found.rms.max()))

    def test_chunked_equals_whole(self, embeddings, monkeypatch):
        """Chunks of rows that split cells give the same map as one chunk."""
        a, b, pair, *_ = embeddings
        whole = cm.change_map(a, b, pair, 37, 10)
        monkeypatch.setattr(cm, "CHUNK", 7 * HIDDEN)
        chunked = cm.change_map(a, b, pair, 37, 10)
        np.testing.assert_allclose(chunked.rms, whole.rms, rtol=1e-12)
        np.testing.assert_array_equal(chunked.peak, whole.peak)


class TestGrid:
    def test_edges_cover_every_index_once(self):
        edges = cm.edges(1000, 37)
        assert edges[0] == 0 and edges[-1] == 1000 and len(edges) == 38
        assert set(np.diff(edges)) == {27, 28}

    def test_more_cells_than_rows(self):
        found = cm.pooled(np.zeros(12, np.uint8), "float32", np.zeros(12, np.uint8), "float32", (3, 1), 40, 80)
        assert found.rms.shape == (3, 1)
        assert found.row_edges == (0, 1, 2, 3)

    def test_vectors_and_kernels(self):
        """A vector is one row; a kernel is its first dimension by the others."""
        assert cm.matrix_shape((5,)) == (1, 5)
        assert cm.matrix_shape((4, 3, 2, 2)) == (4, 12)

    def test_nonfinite_counted_apart(self):
        a = np.zeros((4, 4), np.float32)
        b = np.zeros((4, 4), np.float32)
        b[0, 0], b[3, 3] = np.nan, 2.0
        found = cm.pooled(a.view(np.uint8).ravel(), "float32", b.view(np.uint8).ravel(), "float32", (4, 4), 2, 2)
        assert found.nonfinite.tolist() == [[1, 0], [0, 0]]
        assert found.rms[0, 0] == 0.0  # the other three are unchanged
        assert found.rms[1, 1] == pytest.approx(1.0)  # sqrt(4 / 4)

    def test_needs_one_shape(self, embeddings):
        a, b, pair, *_ = embeddings
        with pytest.raises(ValueError, match="both sides"):
            cm.change_map(a, b, Pair(pair.name, pair.a, None), 10, 10)
