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


def cell_rms(delta: np.ndarray, row_edges, col_edges) -> np.ndarray:
    """RMS of a float64 Δ (NaN where a position has none) per cell, the reference."""
    out = np.zeros((len(row_edges) - 1, len(col_edges) - 1))
    for i in range(len(row_edges) - 1):
        for j in range(len(col_edges) - 1):
            block = delta[row_edges[i]:row_edges[i + 1], col_edges[j]:col_edges[j + 1]]
            block = block[~np.isnan(block)]
            out[i, j] = np.sqrt((block ** 2).mean()) if block.size else 0.0
    return out


class TestResized:
    """A resized pair's map covers the bigger shape: Δ over the common part, the added part marked,
    the boundary on a cell edge."""

    def raw(self, t: torch.Tensor) -> np.ndarray:
        return t.contiguous().reshape(-1).view(torch.uint8).numpy()

    def test_rows_added_in_b(self):
        """A vocabulary of 50 rows grown by 6: the grid leaves a line for the rule; the new rows' cells
        are wholly added and hold no Δ; the old rows' cells hold the RMS of their change."""
        old = torch.randn(50, 12, generator=torch.Generator().manual_seed(0))
        tuned = old.clone()
        tuned[20:30] += 0.5
        new = torch.cat([tuned, torch.randn(6, 12)])
        found = cm.pooled_resized(self.raw(old), "float32", (50, 12), self.raw(new), "float32", (56, 12), 0, 12, 4)
        assert found.shape == (56, 12) and found.added_in == "B" and found.rms.shape[0] <= 10
        along, edge = found.boundary
        assert along == "rows" and found.row_edges[edge] == 50 and edge % 2 == 0
        delta = np.full((56, 12), np.nan)
        delta[:50] = (tuned - old).double().numpy()
        assert np.allclose(found.rms, cell_rms(delta, found.row_edges, found.col_edges), rtol=1e-12)
        fully = found.fully_added()
        assert fully[edge:].all() and not fully[:edge].any()

    def test_columns_shrunk_in_b(self):
        """A has 3 more columns: the boundary is a column edge, the added part A's."""
        a = torch.randn(8, 20, generator=torch.Generator().manual_seed(1))
        b = a[:, :17] * 1.1
        found = cm.pooled_resized(self.raw(a), "float32", (8, 20), self.raw(b.contiguous()), "float32", (8, 17), 1,
                                  8, 10)
        assert found.boundary[0] == "cols" and found.col_edges[found.boundary[1]] == 17 and found.added_in == "A"
        assert found.rms.shape[1] <= 9  # a column left for the rule
        delta = np.full((8, 20), np.nan)
        delta[:, :17] = (b - a[:, :17]).double().numpy()
        assert np.allclose(found.rms, cell_rms(delta, found.row_edges, found.col_edges), rtol=1e-12)

    def test_a_middle_dimension_interleaves(self):
        """Resized along dim 1 of a 3-D tensor, the added positions lie among the common ones in
        each matrix row: counted per cell, no boundary."""
        a = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(2))
        b = torch.cat([a + 0.25, torch.zeros(4, 2, 5)], dim=1)
        found = cm.pooled_resized(self.raw(a), "float32", (4, 3, 5), self.raw(b), "float32", (4, 5, 5), 1, 4, 25)
        assert found.boundary is None and found.shape == (4, 25)
        assert found.added.sum() == 4 * 2 * 5
        delta = np.full((4, 5, 5), np.nan)
        delta[:, :3] = 0.25
        assert np.allclose(found.rms, cell_rms(delta.reshape(4, 25), found.row_edges, found.col_edges), rtol=1e-6)
