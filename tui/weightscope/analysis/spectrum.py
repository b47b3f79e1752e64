"""The spectrum of a change: the singular values of Δ = B − A, and what they say about its shape.

A LoRA-merged model differs from its base by a low-rank matrix; full fine-tuning does not.
The figures, for Δ viewed as a matrix (first dimension × the rest):

- singular values σ₁ ≥ σ₂ ≥ … : the top `k`. Small matrices get an exact SVD (float64);
  larger ones a randomized SVD in float32 (Halko, Martinsson & Tropp 2011, algorithm 4.4:
  a Gaussian sketch of k + 10 columns, two rounds of subspace iteration), whose products
  read Δ in row chunks, so no dense Δ is held beyond `DENSE_MAX` elements. It is exact to
  float32 for changes of rank below k + 10 and for fast-decaying spectra; on a flat spectrum
  (white noise) the top values can read a few percent low. A LoRA module's ΔW = scaling · B@A
  is decomposed from its factors: with B = Q_B R_B and Aᵀ = Q_A R_A, σ(ΔW) = scaling ·
  σ(R_B R_Aᵀ), an r × r problem, exact, never forming the product.
- effective rank: exp(H), H = −Σ pᵢ ln pᵢ with pᵢ = σᵢ² / Σⱼ σⱼ² over the top k (Roy &
  Vetterli's entropy rank, taken over energies σ² rather than σ). It is r for r equal
  singular values, less when they spread, and at most k. Energies keep out the floor of tiny
  σ that bf16's rounding adds to any stored change: normalised by Σσ instead, the 24 floor
  values of a rank-8 bf16 change (4096², σ near 1) would lift it from 8.0 to 8.6.
- stable rank: ‖Δ‖²_F / σ₁², with ‖Δ‖_F exact from every element (or from the factors).
- cumulative share: (σ₁² + … + σᵢ²) / ‖Δ‖²_F for i = 1…k, the part of the change in its
  top i directions; `share(r)` reads it at r.

Elements where Δ is NaN or ±Inf are taken as zero and counted in `nonfinite`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from weightscope.compare.align import Pair
from weightscope.compare.reading import as_bytes
from weightscope.compare.stats import Cancelled, code_of, decoded, itemsize
from weightscope.sources.checkpoint import Checkpoint, TensorUnreadable
from weightscope.sources.lora.checkpoint import LoraCheckpoint

if TYPE_CHECKING:
    from weightscope.compare.results import PairResult

TOP = 32  # singular values kept: enough for the ranks LoRA uses, few enough to draw as bars
OVERSAMPLE = 10
POWER_ITERATIONS = 2
EXACT_WORK = 1 << 30  # rows · cols · min(rows, cols) under which an exact SVD takes well under a second
DENSE_MAX = 1 << 25  # elements of Δ held whole (128 MiB of float32); beyond, products stream row chunks
CHUNK = 1 << 22  # elements of Δ per streamed chunk
SEED = 0  # the sketch is random but fixed, so figures repeat
BLOCK_MAX = 1 << 22  # elements of a block of leading rows (`block_spectrum`)


@dataclass(frozen=True)
class Spectrum:
    """The top singular values of Δ and figures of its shape (definitions in the module docstring).

    Attributes:
        shape: Δ as a matrix (rows, cols).
        method: "exact", "randomized" or "factors".
        singular_values: the top k, descending.
        frobenius: ‖Δ‖_F.
        effective_rank, stable_rank: None when Δ is zero.
        cumulative_share: the share of ‖Δ‖²_F in the top 1, 2, … k singular values; empty when Δ is zero.
        nonfinite: elements of Δ that were NaN or ±Inf, taken as zero.
    """

    shape: tuple[int, int]
    method: str
    singular_values: tuple[float, ...]
    frobenius: float
    effective_rank: float | None
    stable_rank: float | None
    cumulative_share: tuple[float, ...]
    nonfinite: int = 0

    def share(self, r: int) -> float | None:
        """The share of ‖Δ‖²_F in the top r directions (r beyond k reads at k)."""
        if not self.cumulative_share or r < 1:
            return None
        return self.cumulative_share[min(r, len(self.cumulative_share)) - 1]


def figures(shape: tuple[int, int], method: str, values, frobenius: float, nonfinite: int = 0,
            k: int = TOP) -> Spectrum:
    """The `Spectrum` of singular values (any order, any number) and the exact ‖Δ‖_F."""
    sigma = sorted((float(v) for v in values), reverse=True)[:k]
    energy = [s * s for s in sigma]
    total = sum(energy)
    if frobenius == 0 or total == 0:
        return Spectrum(shape, method, tuple(sigma), frobenius, None, None, (), nonfinite)
    entropy = -sum(e / total * math.log(e / total) for e in energy if e > 0)
    running, shares = 0.0, []
    for e in energy:
        running += e
        shares.append(min(1.0, running / frobenius ** 2))  # rounding must not report more than all of it
    return Spectrum(shape, method, tuple(sigma), frobenius, math.exp(entropy), frobenius ** 2 / energy[0],
                    tuple(shares), nonfinite)


def factor_spectrum(b, a, scaling: float, k: int = TOP) -> Spectrum:
    """The spectrum of scaling · B@A from the factors B (m × r) and A (r × n), via QR, exactly.

    Transposing (embeddings, fan_in_fan_out) changes no singular value.
    """
    import torch

    _, r_b = torch.linalg.qr(b.double())
    _, r_a = torch.linalg.qr(a.double().T)
    core = r_b @ r_a.T * scaling
    return figures((b.shape[0], a.shape[1]), "factors", torch.linalg.svdvals(core).tolist(),
                   float(torch.linalg.matrix_norm(core)), k=k)


def module_spectrum(checkpoint: LoraCheckpoint, name: str, k: int = TOP) -> Spectrum:
    """The spectrum of ΔW of a LoRA checkpoint's computed tensor `name`, from its factors."""
    b, a = checkpoint.factors(name)
    module = checkpoint.modules[name]
    spectrum = factor_spectrum(b, a, module.scaling, k)
    return replace(spectrum, shape=spectrum.shape[::-1]) if module.transpose else spectrum


def as_matrix(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """A tensor of 2 or more dimensions as a matrix: the first dimension by all the others."""
    if shape is None or len(shape) < 2:
        return None
    return shape[0], math.prod(shape[1:])


def pair_spectrum(a: Checkpoint, b: Checkpoint, pair: Pair, k: int = TOP,
                  should_cancel: Callable[[], bool] = lambda: False, raw_a=None, raw_b=None,
                  rows: int | None = None) -> Spectrum | None:
    """The spectrum of B − A for a pair of the same shape with 2 or more dimensions; None otherwise.

    Where one side is a LoRA-computed W + ΔW and the other side is that very W, the change is
    ΔW and its spectrum comes from the factors.

    Args:
        raw_a, raw_b: each side's bytes, where the caller reads them itself (`reading.Bytes`);
            by default from the checkpoints' sources.
        rows: the spectrum of this many leading rows only (`block_spectrum`); a LoRA module's
            comes whole from its factors all the same.

    Raises:
        TensorUnreadable: a side cannot be read.
        Cancelled: `should_cancel()` turned true.
    """
    if pair.a is None or pair.b is None or pair.a.shape != pair.b.shape or as_matrix(pair.a.shape) is None:
        return None
    if rows is not None:  # every singular value of the block (or of the factors): a rank above 32 shows too
        k = max(k, rows)
    for lora, info, other in ((b, pair.b, pair.a), (a, pair.a, pair.b)):
        if isinstance(lora, LoraCheckpoint) and info.name in lora.modules and lora.modules[info.name].weight == other:
            return module_spectrum(lora, info.name, k)
    shape = as_matrix(pair.a.shape)
    raw_a = raw_a if raw_a is not None else a.raw(pair.a.name)
    raw_b = raw_b if raw_b is not None else b.raw(pair.b.name)
    if rows is not None:
        return block_spectrum(raw_a, pair.a.dtype, raw_b, pair.b.dtype, shape, rows, k)
    rows_a = RowReader(raw_a, pair.a.dtype, shape[1])
    rows_b = RowReader(raw_b, pair.b.dtype, shape[1])
    return dense_spectrum(Delta(rows_a, rows_b, shape, should_cancel), k)


def block_spectrum(raw_a, dtype_a: str, raw_b, dtype_b: str, shape: tuple[int, int], rows: int,
                   k: int = TOP) -> Spectrum:
    """The exact spectrum of the leading rows of Δ (at most `rows`, and `BLOCK_MAX` elements),
    read from the start of each side's bytes alone: a block of rows of a rank-r change has
    rank r (as long as it has r rows or more), and a block of a full-rank one is full-rank,
    so the block tells the rank of a change for a fraction of reading the whole."""
    rows = max(1, min(rows, shape[0], BLOCK_MAX // max(1, shape[1])))
    cols = shape[1]
    sides = [decoded(as_bytes(raw).window(0, rows * cols * itemsize(dtype)), code_of(dtype)).astype(np.float64)
             for raw, dtype in ((raw_a, dtype_a), (raw_b, dtype_b))]
    delta = (sides[1] - sides[0]).reshape(rows, cols)
    finite = np.isfinite(delta)
    nonfinite = int(delta.size - np.count_nonzero(finite))
    if nonfinite:
        delta = np.where(finite, delta, 0.0)
    # σ² are the eigenvalues of the smaller Gram matrix: 20× faster than an SVD of the block, and
    # a floor of rounding (1e-8 of σ₁ and below) is all the squaring loses.
    gram = delta @ delta.T if rows <= cols else delta.T @ delta
    values = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None))
    return figures((rows, cols), "exact", values, float(np.linalg.norm(delta)), nonfinite, k)


class RowReader:
    """Rows of a matrix stored as bytes (an array or `reading.Bytes`), as float32 tensors."""

    def __init__(self, raw, dtype: str, cols: int):
        self.raw, self.code, self.row_bytes = as_bytes(raw), code_of(dtype), cols * itemsize(dtype)
        self.cols = cols

    def __call__(self, start: int, stop: int):
        import torch

        values = decoded(self.raw.window(start * self.row_bytes, stop * self.row_bytes), self.code)
        return torch.from_numpy(values.astype(np.float32)).reshape(-1, self.cols)


class Delta:
    """B − A as a float32 matrix, held whole when small and streamed in row chunks otherwise.

    Each pass over it also counts ‖Δ‖²_F (in float64) and the non-finite elements.
    """

    def __init__(self, rows_a: Callable, rows_b: Callable, shape: tuple[int, int],
                 should_cancel: Callable[[], bool] = lambda: False):
        self.rows_a, self.rows_b = rows_a, rows_b
        self.shape = shape
        self.should_cancel = should_cancel
        self.step = max(1, CHUNK // max(1, shape[1]))
        self.frobenius2, self.nonfinite = 0.0, 0
        self.whole = self._chunk(0, shape[0]) if shape[0] * shape[1] <= DENSE_MAX else None

    def _chunk(self, start: int, stop: int):
        """(rows start…stop of Δ with non-finite elements zeroed, how many there were, their ‖·‖²_F)."""
        import torch

        if self.should_cancel():
            raise Cancelled
        delta = self.rows_b(start, stop) - self.rows_a(start, stop)
        # Norms of rows summed in float64: a float32 sum over millions of elements drifts by 0.1%.
        frobenius2 = float(torch.linalg.vector_norm(delta, dim=1).double().square().sum())
        if math.isfinite(frobenius2):  # one cheap reduction proves every element finite
            return delta, 0, frobenius2
        finite = torch.isfinite(delta)
        delta = torch.where(finite, delta, 0.0)
        frobenius2 = float(torch.linalg.vector_norm(delta, dtype=torch.float64)) ** 2
        return delta, delta.numel() - int(finite.sum()), frobenius2

    def chunks(self) -> Iterator[tuple[int, object]]:
        """(first row, rows of Δ) over the whole matrix."""
        self.frobenius2, self.nonfinite = 0.0, 0
        rows = self.shape[0]
        pieces = [self.whole] if self.whole is not None else (
            self._chunk(start, min(start + self.step, rows)) for start in range(0, rows, self.step))
        start = 0
        for delta, bad, frobenius2 in pieces:
            if self.should_cancel():
                raise Cancelled
            self.nonfinite += bad
            self.frobenius2 += frobenius2
            yield start, delta
            start += delta.shape[0]

    def times(self, x):
        """Δ @ x."""
        import torch

        out = torch.empty(self.shape[0], x.shape[1])
        for start, delta in self.chunks():
            out[start:start + delta.shape[0]] = delta @ x
        return out

    def transposed_times(self, y):
        """Δᵀ @ y."""
        import torch

        out = torch.zeros(self.shape[1], y.shape[1])
        for start, delta in self.chunks():
            out += delta.T @ y[start:start + delta.shape[0]]
        return out


def dense_spectrum(delta: Delta, k: int = TOP) -> Spectrum:
    """Exact SVD where it is cheap (or Δ is too thin to sketch), randomized SVD otherwise."""
    import torch

    rows, cols = delta.shape
    small = min(rows, cols)
    sketch = min(k + OVERSAMPLE, small)
    if sketch >= small or (delta.whole is not None and rows * cols * small <= EXACT_WORK):
        whole = torch.cat([c for _, c in delta.chunks()])  # at most `sketch` wide, or small
        values = torch.linalg.svdvals(whole.double()).tolist()
        return figures(delta.shape, "exact", values, math.sqrt(delta.frobenius2), delta.nonfinite, k)
    generator = torch.Generator().manual_seed(SEED)
    y = delta.times(torch.randn(cols, sketch, generator=generator))
    frobenius2, nonfinite = delta.frobenius2, delta.nonfinite
    if frobenius2 == 0:
        return figures(delta.shape, "randomized", [], 0.0, nonfinite, k)
    q = orthonormal(y)
    for _ in range(POWER_ITERATIONS):
        q = orthonormal(delta.times(orthonormal(delta.transposed_times(q))))
    # qᵀΔ is (k+10) × cols; its singular values are the square roots of the eigenvalues of
    # its (k+10)-square Gram matrix, formed in float64.
    z = delta.transposed_times(q).double()
    values = torch.linalg.eigvalsh(z.T @ z).clamp(min=0).sqrt().tolist()
    return figures(delta.shape, "randomized", values, math.sqrt(frobenius2), nonfinite, k)


def orthonormal(y):
    """An orthonormal basis for the columns of a tall, thin y: shifted Cholesky QR, twice, in
    float64 (Fukaya et al. 2020). Householder QR of such a matrix runs LAPACK's level-2 panel
    code, which was 30× slower here whenever other processes kept the cores busy; this is two
    small Gram matrices and two triangular solves."""
    import torch

    q = y.double()
    rows, cols = q.shape
    for shift in (True, False):
        gram = q.T @ q
        if shift:  # keeps the Gram positive definite when y is rank-deficient
            gram.diagonal().add_(11 * (rows * cols + cols * (cols + 1)) * 2 ** -53 * float(gram.trace()))
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            return torch.linalg.qr(y)[0]
        q = torch.linalg.solve_triangular(factor, q.T, upper=False).T  # q L⁻ᵀ, solved as L X = qᵀ: 20× faster
    return q.float().contiguous()


def spectra(a: Checkpoint, b: Checkpoint, results: list[PairResult], k: int = TOP,
            should_cancel: Callable[[], bool] = lambda: False) -> dict[str, Spectrum | None]:
    """The spectrum of every pair whose values changed, by pair name (None where it has none:
    fewer than 2 dimensions, or a side that cannot be read)."""
    out: dict[str, Spectrum | None] = {}
    for result in results:
        if result.diff is None or result.diff.changed == 0:
            continue
        try:
            out[result.pair.name] = pair_spectrum(a, b, result.pair, k, should_cancel)
        except TensorUnreadable:
            out[result.pair.name] = None
    return out
