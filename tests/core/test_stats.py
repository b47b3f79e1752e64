"""Statistics of one tensor and of a pair against a float64 numpy reference.

Raw bytes come from torch tensors (numpy has no bf16), so every dtype is decoded by the code
under test and only the reference upcasts with torch. `pieces.PIECE`, `stats.WINDOW` and
`device.DEVICE_CHUNK` are made small so that several pieces and windows, the merge and the
argmax across piece boundaries are exercised on tensors of a few thousand elements.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields

import numpy as np
import pytest
import torch

from weightscope.compare import device, pieces, stats

RTOL = 1e-6
ATOL = 1e-12  # for figures that are ~0 (a mean of noise), where a relative bound means nothing
SIDE_FIGURES = ("min", "max", "mean", "std", "absmax", "l2")
SIDE_COUNTS = ("nan", "posinf", "neginf", "zeros", "finite")
DIFF_FIGURES = ("max_abs", "mean_abs", "rms", "rel_l2", "cosine", "changed_fraction")
DIFF_EXACT = ("max_abs_index", "changed", "mismatched", "atol", "rtol")


@pytest.fixture
def small_chunks(monkeypatch):
    """Pieces of 1000 elements read in windows of 3000 (and torch chunks of 1000): a
    5000-element tensor is five pieces in two windows."""
    monkeypatch.setattr(pieces, "PIECE", 1000)
    monkeypatch.setattr(stats, "WINDOW", 3000)
    monkeypatch.setattr(device, "DEVICE_CHUNK", 1000)


def spelling(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def raw(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as the readers hand them over: a flat uint8 array."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def values64(t: torch.Tensor) -> np.ndarray:
    """The tensor's exact values in float64, flattened (every dtype used here fits exactly)."""
    return t.reshape(-1).to(torch.float64).numpy()


# ---------------------------------------------------------------------------------- reference

def ref_side(t: torch.Tensor) -> dict:
    x = values64(t)
    f = x[np.isfinite(x)]
    out = {"nan": int(np.isnan(x).sum()), "posinf": int((x == np.inf).sum()),
           "neginf": int((x == -np.inf).sum()), "zeros": int((x == 0).sum()), "finite": f.size}
    if f.size == 0:
        return out | dict.fromkeys(SIDE_FIGURES)
    return out | {"min": f.min(), "max": f.max(), "mean": f.mean(), "std": f.std(ddof=0),
                  "absmax": np.abs(f).max(), "l2": math.sqrt(float(np.sum(f * f)))}


def ref_diff(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> dict:
    """B − A as the issue defines it, in float64, with torch.isclose for the tolerance verdict."""
    x, y = values64(a), values64(b)
    numel = x.size
    changed = (x != y) & ~(np.isnan(x) & np.isnan(y))
    close = torch.isclose(torch.from_numpy(y), torch.from_numpy(x), rtol=rtol, atol=atol, equal_nan=True).numpy()
    out = {"changed": int(changed.sum()), "mismatched": int((~close).sum()), "atol": atol, "rtol": rtol,
           "changed_fraction": changed.sum() / numel if numel else None}
    both = np.isfinite(x) & np.isfinite(y)
    if not both.any():
        return out | dict.fromkeys(("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2", "cosine"))
    with np.errstate(invalid="ignore"):  # Inf − Inf where both sides are infinite
        step = np.abs(y - x)
    d = step[both]
    flat = int(np.argmax(np.where(both, step, -1.0)))  # the first of equal maxima
    xa, yb = x[both], y[both]
    na, nb = math.sqrt(float(xa @ xa)), math.sqrt(float(yb @ yb))
    return out | {
        "max_abs": d.max(),
        "max_abs_index": tuple(int(i) for i in np.unravel_index(flat, tuple(a.shape))) if d.max() > 0 else None,
        "mean_abs": d.mean(), "rms": math.sqrt(float(np.mean(d * d))),
        "rel_l2": math.sqrt(float(d @ d)) / na if na > 0 else None,
        "cosine": float(xa @ yb) / (na * nb) if na > 0 and nb > 0 else None}


def assert_figures(actual, expected: dict, names, rtol: float = RTOL, atol: float = ATOL) -> None:
    for name in names:
        got, want = getattr(actual, name), expected[name]
        if want is None:
            assert got is None, f"{name}: {got} where the reference is undefined"
        else:
            assert got is not None, f"{name}: None where the reference is {want}"
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def assert_side(actual: stats.SideStats, t: torch.Tensor) -> None:
    expected = ref_side(t)
    assert {k: getattr(actual, k) for k in SIDE_COUNTS} == {k: expected[k] for k in SIDE_COUNTS}
    assert_figures(actual, expected, SIDE_FIGURES)


def assert_diff(actual: stats.DiffStats, a: torch.Tensor, b: torch.Tensor) -> None:
    expected = ref_diff(a, b, actual.atol, actual.rtol)
    assert {k: getattr(actual, k) for k in DIFF_EXACT} == {k: expected[k] for k in DIFF_EXACT}
    assert_figures(actual, expected, DIFF_FIGURES)
    for name in DIFF_FIGURES + ("max_abs_index",):  # every undefined figure says why
        if getattr(actual, name) is None:
            assert actual.undefined.get(name), f"{name} is None without a reason"


def assert_never_nan(*results) -> None:
    """Undefined figures are None, never NaN or Inf."""
    for result in results:
        for f in fields(result):
            value = getattr(result, f.name)
            if isinstance(value, float):
                assert math.isfinite(value), f"{type(result).__name__}.{f.name} = {value}"


def pair(a: torch.Tensor, b: torch.Tensor, atol: float | None = None, rtol: float | None = None):
    at, rt = stats.tolerance(spelling(a), spelling(b), atol, rtol)
    return stats.pair_stats(raw(a), spelling(a), raw(b), spelling(b), tuple(a.shape), at, rt)


def check_pair(a: torch.Tensor, b: torch.Tensor, **tolerance):
    side_a, side_b, diff = pair(a, b, **tolerance)
    assert_side(side_a, a)
    assert_side(side_b, b)
    assert_diff(diff, a, b)
    assert_never_nan(side_a, side_b, diff)
    # one side alone gives the same figures as that side within a pair (up to summation order)
    assert_same_stats(stats.side_stats(raw(a), spelling(a)), side_a)
    assert_same_stats(stats.side_stats(raw(b), spelling(b)), side_b)
    return side_a, side_b, diff


# ---------------------------------------------------------------------------------- inputs

SHAPE = (37, 139)  # 5143 elements: five full chunks of 1000 and a short one


def noisy(seed: int, dtype: torch.dtype, shape=SHAPE, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if not dtype.is_floating_point:
        return torch.randint(-50, 50, shape, generator=gen, dtype=torch.int64).to(dtype)
    return (offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)


def moved(a: torch.Tensor, seed: int, scale: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plus noise on every other row: some positions change, some stay bit-equal."""
    dtype = dtype or a.dtype
    step = noisy(seed, torch.float64, tuple(a.shape), scale)
    if not dtype.is_floating_point:
        step = step.round()
    step[::2] = 0
    return (a.to(torch.float64) + step).to(dtype)


def plant(a: torch.Tensor, b: torch.Tensor) -> None:
    """NaN/Inf on one side and on both, in different chunks, and zeros on each side."""
    a[0, 5] = math.nan            # NaN in A only
    b[10, 10] = math.nan          # NaN on both sides: equal, not changed
    a[10, 10] = math.nan
    b[14, 3] = math.inf           # +Inf in B only
    a[21, 100] = -math.inf        # -Inf in A only
    a[29, 7] = b[29, 7] = math.inf  # +Inf on both: equal
    a[33, 0] = math.inf           # +Inf against -Inf
    b[33, 0] = -math.inf
    a[1, :10] = 0
    b[3, 20:25] = 0


FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


class TestSide:
    @pytest.mark.parametrize("dtype", FLOATS + [torch.int32, torch.int8, torch.uint8, torch.int64, torch.bool],
                             ids=str)
    def test_matches_reference(self, small_chunks, dtype):
        t = noisy(0, dtype) if dtype != torch.bool else noisy(0, torch.int64) > 0
        if dtype.is_floating_point:
            t[2, 2], t[20, 20], t[30, 30], t[4, :7] = math.nan, math.inf, -math.inf, 0
        s = stats.side_stats(raw(t), spelling(t))
        assert_side(s, t)
        assert_never_nan(s)
        assert s.nonfinite == s.nan + s.posinf + s.neginf

    @pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e-3), (torch.float64, 1e-6), (torch.float16, 0.5)],
                             ids=str)
    def test_mean_far_from_zero_keeps_variance(self, small_chunks, dtype, scale):
        """1000 + small noise: a naive Σx² − (Σx)²/n would lose the spread entirely."""
        t = noisy(1, dtype, scale=scale, offset=1000.0)
        s = stats.side_stats(raw(t), spelling(t))
        assert_side(s, t)
        assert s.std > 0

    def test_float8(self):
        t = noisy(2, torch.float32, (50,)).to(torch.float8_e4m3fn)
        assert_side(stats.side_stats(raw(t), "float8_e4m3fn"), t)

    @pytest.mark.parametrize("t", [torch.tensor(-2.5), torch.tensor(7, dtype=torch.int32),
                                   torch.tensor(1.5, dtype=torch.bfloat16)], ids=["f32", "i32", "bf16"])
    def test_scalar(self, t):
        s = stats.side_stats(raw(t), spelling(t))
        assert_side(s, t)
        assert s.std == 0 and s.finite == 1

    @pytest.mark.parametrize("shape", [(0,), (3, 0)], ids=str)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    def test_empty(self, shape, dtype):
        s = stats.side_stats(raw(torch.zeros(shape, dtype=dtype)), spelling(torch.zeros(0, dtype=dtype)))
        assert s == stats.SideStats(None, None, None, None, None, None, 0, 0, 0, 0, 0)

    def test_all_nonfinite(self, small_chunks):
        t = torch.full((2500,), math.nan, dtype=torch.bfloat16)
        t[100], t[2100] = math.inf, -math.inf
        s = stats.side_stats(raw(t), "bfloat16")
        assert (s.nan, s.posinf, s.neginf, s.finite) == (2498, 1, 1, 0)
        assert all(getattr(s, k) is None for k in SIDE_FIGURES)

    def test_all_zero(self, small_chunks):
        s = stats.side_stats(raw(torch.zeros(3000)), "float32")
        assert (s.min, s.max, s.mean, s.std, s.absmax, s.l2, s.zeros) == (0, 0, 0, 0, 0, 0, 3000)

    def test_complex_is_unsupported(self):
        with pytest.raises(stats.Unsupported):
            stats.side_stats(raw(torch.zeros(4, dtype=torch.complex64)), "complex64")

    def test_cancel(self, small_chunks):
        with pytest.raises(stats.Cancelled):
            stats.side_stats(raw(noisy(0, torch.float32)), "float32", should_cancel=lambda: True)


PAIRS = {
    "f32": (torch.float32, torch.float32, 1e-3),
    "bf16": (torch.bfloat16, torch.bfloat16, 1e-1),
    "f16": (torch.float16, torch.float16, 1e-2),
    "f64": (torch.float64, torch.float64, 1e-6),
    "f32-bf16": (torch.float32, torch.bfloat16, 1e-2),
    "bf16-f32": (torch.bfloat16, torch.float32, 1e-3),
    "f16-f32": (torch.float16, torch.float32, 1e-3),
    "f32-f64": (torch.float32, torch.float64, 1e-5),
}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # Inf − Inf must not warn
class TestPair:
    @pytest.mark.parametrize("case", PAIRS.values(), ids=PAIRS.keys())
    def test_matches_reference(self, small_chunks, case):
        dtype_a, dtype_b, scale = case
        a = noisy(3, dtype_a)
        b = moved(a, 4, scale, dtype_b)
        plant(a, b)
        _, _, diff = check_pair(a, b)
        assert 0 < diff.changed < a.numel() and diff.mismatched > 0

    @pytest.mark.parametrize("case", PAIRS.values(), ids=PAIRS.keys())
    def test_finite_only(self, small_chunks, case):
        dtype_a, dtype_b, scale = case
        a = noisy(5, dtype_a)
        check_pair(a, moved(a, 6, scale, dtype_b))

    @pytest.mark.parametrize("dtype_a,dtype_b", [(torch.int32, torch.int32), (torch.int8, torch.int8),
                                                 (torch.int64, torch.float32), (torch.uint8, torch.uint8)], ids=str)
    def test_integers(self, small_chunks, dtype_a, dtype_b):
        a = noisy(7, dtype_a).abs() if dtype_a == torch.uint8 else noisy(7, dtype_a)
        b = moved(a, 8, 3.0, dtype_b).abs() if dtype_b == torch.uint8 else moved(a, 8, 3.0, dtype_b)
        _, _, diff = check_pair(a, b)
        if dtype_a == dtype_b:  # integers compare exactly, as assert_close does
            assert (diff.atol, diff.rtol) == (0.0, 0.0)
            assert diff.mismatched == diff.changed > 0

    @pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e-3), (torch.float64, 1e-6)], ids=str)
    def test_mean_far_from_zero(self, small_chunks, dtype, scale):
        a = noisy(9, dtype, scale=scale, offset=1000.0)
        b = moved(a, 10, scale, dtype)
        side_a, side_b, diff = check_pair(a, b)
        assert side_a.std > 0 and side_b.std > 0
        assert diff.cosine == pytest.approx(1.0)

    @pytest.mark.parametrize("dtype_b", [torch.float32, torch.bfloat16], ids=str)
    def test_whole_chunks_with_sparse_nonfinite(self, dtype_b):
        """Default chunks, NaN/Inf in a few places only: finite and non-finite stretches mix."""
        a = noisy(35, torch.float32, (50_000,))
        b = moved(a.reshape(250, 200), 36, 1e-2, dtype_b).reshape(-1)
        a[7_000], b[23_456], a[41_000], b[41_000] = math.nan, math.inf, -math.inf, -math.inf
        check_pair(a, b)

    def test_argmax_across_chunk_boundaries(self, small_chunks):
        """Equal maxima in several chunks: the first position wins, given in the tensor's shape."""
        a = torch.zeros(7, 11, 61)  # 4697 elements
        b = a.clone()
        flat = b.view(-1)
        flat[[999, 1000, 1999, 3500]] = torch.tensor([0.5, 0.5, 2.0, -2.0])
        _, _, diff = check_pair(a, b)
        assert diff.max_abs == 2.0
        assert diff.max_abs_index == tuple(int(i) for i in np.unravel_index(1999, (7, 11, 61))) == (2, 10, 47)
        flat[4696] = 3.0  # in the last, short chunk
        assert check_pair(a, b)[2].max_abs_index == (6, 10, 60)

    def test_largest_change_beside_nan(self, small_chunks):
        """A position where one side is NaN or Inf is no candidate for the largest change."""
        a = noisy(11, torch.float32, (3000,))
        b = a.clone()
        b[10], b[1500], b[2999] = math.inf, a[1500] + 100, a[2999] + 1
        a[2000], b[2000] = 1e30, math.nan
        _, _, diff = check_pair(a, b)
        assert diff.max_abs_index == (1500,)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    def test_difference_beyond_the_dtype_range(self, small_chunks, dtype):
        """|B − A| can exceed the largest float32 although both sides are finite: still finite here."""
        a = noisy(34, torch.float32, (3000,)).to(dtype)
        b = a.clone()
        a[1500], b[1500] = -3e38, 3e38
        a[2500], b[2500] = 3.3e38, -3.3e38
        _, _, diff = check_pair(a, b)
        assert diff.max_abs_index == (2500,) and math.isfinite(diff.max_abs)

    def test_scalars(self):
        a, b = torch.tensor(1.5), torch.tensor(2.75, dtype=torch.bfloat16)
        _, _, diff = check_pair(a, b)
        assert diff.max_abs_index == () and diff.max_abs == 1.25 and diff.changed_fraction == 1.0
        _, _, diff = check_pair(torch.tensor(math.nan), torch.tensor(math.nan))
        assert diff.changed_fraction == 0.0 and diff.max_abs is None
        _, _, diff = check_pair(torch.tensor(3, dtype=torch.int32), torch.tensor(3, dtype=torch.int32))
        assert diff.max_abs == 0 and diff.max_abs_index is None and diff.cosine == 1.0

    @pytest.mark.parametrize("shape", [(0,), (4, 0, 3)], ids=str)
    def test_empty(self, shape):
        a, b = torch.zeros(shape), torch.zeros(shape, dtype=torch.bfloat16)
        side_a, side_b, diff = check_pair(a, b)
        assert side_a.finite == side_b.finite == 0
        assert diff.changed == diff.mismatched == 0
        assert all(getattr(diff, k) is None for k in DIFF_FIGURES + ("max_abs_index",))

    def test_all_zero_a(self, small_chunks):
        """‖A‖ = 0: rel_l2 and cosine are undefined and say why; the absolute change speaks."""
        a = torch.zeros(2500)
        b = noisy(12, torch.float32, (2500,))
        _, _, diff = check_pair(a, b)
        assert diff.rel_l2 is None and "rel_l2" in diff.undefined
        assert diff.cosine is None and "cosine" in diff.undefined
        assert diff.max_abs > 0 and diff.rms > 0

    def test_all_zero_both(self):
        _, _, diff = check_pair(torch.zeros(10), torch.zeros(10, dtype=torch.float16))
        assert diff.max_abs == 0 and diff.changed == 0 and diff.changed_fraction == 0.0
        assert diff.rel_l2 is None and diff.cosine is None

    def test_negative_zero_is_no_change(self):
        a = torch.zeros(6)
        b = -a
        _, _, diff = check_pair(a, b)
        assert diff.changed == 0

    @pytest.mark.parametrize("nan_b", [True, False], ids=["nan-both", "nan-a-only"])
    def test_all_nan(self, small_chunks, nan_b):
        a = torch.full((2100,), math.nan)
        b = torch.full((2100,), math.nan) if nan_b else noisy(13, torch.float32, (2100,))
        side_a, side_b, diff = check_pair(a, b)
        assert all(getattr(side_a, k) is None for k in SIDE_FIGURES)
        assert all(getattr(diff, k) is None for k in ("max_abs", "max_abs_index", "mean_abs", "rms", "rel_l2",
                                                       "cosine"))
        assert diff.changed_fraction == (0.0 if nan_b else 1.0)
        assert diff.mismatched == (0 if nan_b else 2100)
        assert set(diff.undefined) >= {"max_abs", "mean_abs", "rms", "rel_l2", "cosine"}

    def test_cancel(self, small_chunks):
        a = noisy(0, torch.float32)
        calls = []

        def should_cancel():
            calls.append(1)
            return len(calls) > 1

        with pytest.raises(stats.Cancelled):
            stats.pair_stats(raw(a), "float32", raw(a), "float32", SHAPE, 0.0, 0.0, should_cancel)


class TestTolerance:
    def test_defaults_are_the_looser_dtype(self):
        assert stats.tolerance("float32", "float32") == (1e-5, 1.3e-6)
        assert stats.tolerance("float32", "bfloat16") == (1e-5, 1.6e-2)
        assert stats.tolerance("float16", "float64") == (1e-5, 1e-3)
        assert stats.tolerance("int32", "int32") == (0.0, 0.0)
        assert stats.tolerance("bfloat16", "bfloat16", atol=0.5) == (0.5, 1.6e-2)
        assert stats.tolerance("bfloat16", "bfloat16", rtol=0.0) == (1e-5, 0.0)

    @pytest.mark.parametrize("dtype_a,dtype_b", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.float16, torch.float16), (torch.float64, torch.float64),
                                                 (torch.float32, torch.bfloat16), (torch.float16, torch.float32),
                                                 (torch.int32, torch.int32)], ids=str)
    def test_mismatches_as_assert_close_counts_them(self, dtype_a, dtype_b):
        """The same count torch.testing.assert_close reports, with its own defaults."""
        a = noisy(14, dtype_a, (4000,))
        # steps around the tolerance of the looser dtype, so some pass and some fail
        at, rt = stats.tolerance(spelling(a), str(dtype_b).removeprefix("torch."))
        b = a.to(torch.float64) + noisy(15, torch.float64, (4000,), scale=3 * (at + rt))
        b = (b.round() if not dtype_b.is_floating_point else b).to(dtype_b)
        _, _, diff = pair(a, b)
        try:
            torch.testing.assert_close(b, a, check_dtype=False)
            reported = 0
        except AssertionError as exc:
            reported = int(re.search(r"Mismatched elements: (\d+)", str(exc)).group(1))
        assert diff.mismatched == reported
        assert 0 < diff.mismatched < diff.changed or not dtype_a.is_floating_point

    def test_overrides_change_the_verdict(self, small_chunks):
        a = noisy(16, torch.float32)
        b = moved(a, 17, 1e-2)
        _, _, default = check_pair(a, b)
        assert default.mismatched > 0
        _, _, loose = check_pair(a, b, atol=1.0)
        assert loose.mismatched == 0 and loose.atol == 1.0 and loose.changed == default.changed
        _, _, strict = check_pair(a, b, atol=0.0, rtol=0.0)
        assert strict.mismatched == strict.changed


class TestEqualBytes:
    @pytest.mark.parametrize("t", [noisy(18, torch.bfloat16, (50,)), torch.zeros(7), torch.full((5,), math.nan),
                                   torch.tensor(2.0), torch.zeros(0)], ids=["values", "zeros", "nan", "scalar", "empty"])
    def test_agrees_with_decoding_the_pair(self, t):
        """Equal bytes are summed once, as one side; the difference known that way equals the one
        found by decoding both sides (B given as the same values in float64, so no byte is equal)."""
        at, rt = stats.tolerance(spelling(t), spelling(t))
        _, _, known = stats.pair_stats(raw(t), spelling(t), raw(t), spelling(t), tuple(t.shape), at, rt)
        wide = t.to(torch.float64)
        _, _, decoded = stats.pair_stats(raw(t), spelling(t), raw(wide), "float64", tuple(t.shape), at, rt)
        for name in DIFF_EXACT + ("changed_fraction", "max_abs", "mean_abs", "rms", "rel_l2"):
            assert getattr(known, name) == getattr(decoded, name), name
        assert known.cosine == pytest.approx(decoded.cosine) if decoded.cosine is not None else known.cosine is None
        assert set(known.undefined) == set(decoded.undefined)


# ---------------------------------------------------------------------------------- torch path

# the torch path on the CPU everywhere, and on CUDA too where a GPU is present
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_same_stats(x, y, rtol: float = 1e-9) -> None:
    """Two results of the same kind: counts and indices equal, figures within `rtol`."""
    assert type(x) is type(y)
    for f in fields(x):
        u, v = getattr(x, f.name), getattr(y, f.name)
        if isinstance(u, float) and isinstance(v, float):
            np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-15, err_msg=f.name)
        else:
            assert u == v, f.name


@pytest.mark.filterwarnings("error::RuntimeWarning")  # Inf − Inf must not warn
class TestDevice:
    def test_resolve(self):
        assert device.resolve("cpu") == "cpu"
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert device.resolve("auto") == expected
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="cuda"):
                device.resolve("cuda")

    @pytest.mark.parametrize("where", DEVICES)
    @pytest.mark.parametrize("case", PAIRS.values(), ids=PAIRS.keys())
    def test_pair_agrees_with_cpu_kernels(self, small_chunks, case, where):
        dtype_a, dtype_b, scale = case
        a = noisy(19, dtype_a)
        b = moved(a, 20, scale, dtype_b)
        plant(a, b)
        at, rt = stats.tolerance(spelling(a), spelling(b))
        cpu = stats.pair_stats(raw(a), spelling(a), raw(b), spelling(b), SHAPE, at, rt)
        torch_path = device.pair_stats(a, b, at, rt, where)
        for x, y in zip(cpu, torch_path):
            assert_same_stats(x, y)
        assert_same_stats(device.side_stats(a, where), cpu[0])

    @pytest.mark.parametrize("a,b", [
        (torch.tensor(1.0), torch.tensor(-1.0, dtype=torch.bfloat16)),
        (torch.zeros(0, 3), torch.zeros(0, 3)),
        (torch.zeros(2500), noisy(21, torch.float32, (2500,))),
        (torch.full((2500,), math.nan), torch.full((2500,), math.nan)),
        (noisy(22, torch.int32), moved(noisy(22, torch.int32), 23, 2.0)),
        (noisy(24, torch.float32, scale=1e-3, offset=1000.0), noisy(25, torch.float32, scale=1e-3, offset=1000.0)),
        (torch.tensor([1.0, -3e38, 3.3e38, 2.0]), torch.tensor([1.5, 3e38, -3.3e38, math.inf])),
    ], ids=["scalar", "empty", "zero-a", "all-nan", "int32", "offset", "huge"])
    @pytest.mark.parametrize("where", DEVICES)
    def test_edge_cases_agree(self, small_chunks, a, b, where):
        at, rt = stats.tolerance(spelling(a), spelling(b))
        cpu = stats.pair_stats(raw(a), spelling(a), raw(b), spelling(b), tuple(a.shape), at, rt)
        for x, y in zip(cpu, device.pair_stats(a, b, at, rt, where)):
            assert_same_stats(x, y)
        assert_same_stats(device.side_stats(b, where), stats.side_stats(raw(b), spelling(b)))

    def test_argmax_across_device_chunks(self, small_chunks):
        a = torch.zeros(5, 700)
        b = a.clone()
        b.view(-1)[[999, 2001, 3001]] = torch.tensor([1.0, 4.0, 4.0])
        _, _, diff = device.pair_stats(a, b, 0.0, 0.0, "cpu")
        assert diff.max_abs_index == (2, 601)

    def test_cancel(self, small_chunks):
        a = noisy(0, torch.float32)
        with pytest.raises(stats.Cancelled):
            device.pair_stats(a, a, 0.0, 0.0, "cpu", should_cancel=lambda: True)


# ---------------------------------------------------------------------------------- histograms

def finite_count(t: torch.Tensor) -> int:
    return int(torch.isfinite(t.to(torch.float64)).sum())


def total(h: stats.Histogram) -> int:
    return sum(h.counts) + h.below + h.above


@pytest.mark.filterwarnings("error::RuntimeWarning")  # Inf − Inf must not warn
class TestHistograms:
    def test_shared_range_and_every_value_counted(self, small_chunks):
        a = noisy(26, torch.bfloat16)
        b = moved(a, 27, 0.5)
        plant(a, b)
        h = stats.histograms(raw(a), "bfloat16", raw(b), "bfloat16", bins=32)
        assert set(h) == {"a", "b", "diff"}
        assert (h["a"].lo, h["a"].hi) == (h["b"].lo, h["b"].hi)
        assert h["a"].lo < h["a"].hi and len(h["a"].counts) == 32
        assert total(h["a"]) == finite_count(a) and total(h["b"]) == finite_count(b)
        both = torch.isfinite(a.double()) & torch.isfinite(b.double())
        assert total(h["diff"]) == int(both.sum())
        # the bins hold the values that lie in the range, binned as numpy bins them
        values = values64(a)
        inside = values[(values >= h["a"].lo) & (values <= h["a"].hi)]
        expected, _ = np.histogram(inside, bins=32, range=(h["a"].lo, h["a"].hi))
        assert np.abs(np.array(h["a"].counts) - expected).sum() <= 2  # edges may round to a neighbour
        finite = values[np.isfinite(values)]
        assert (h["a"].below, h["a"].above) == ((finite < h["a"].lo).sum(), (finite > h["a"].hi).sum())
        # and B − A, where both are finite, over its own range
        keep = both.numpy().ravel()
        deltas = values64(b)[keep] - values[keep]
        d = h["diff"]
        expected, _ = np.histogram(deltas[(deltas >= d.lo) & (deltas <= d.hi)], bins=32, range=(d.lo, d.hi))
        assert np.abs(np.array(d.counts) - expected).sum() <= 2
        assert (d.below, d.above) == ((deltas < d.lo).sum(), (deltas > d.hi).sum())

    def test_outlier_does_not_stretch_the_range(self):
        t = noisy(28, torch.float32, (10000,))
        t[1234] = 1e6
        h = stats.histograms(raw(t), "float32", None, None)
        assert set(h) == {"a"}
        assert h["a"].hi < 10 and h["a"].lo > -10
        assert h["a"].above >= 1 and total(h["a"]) == 10000
        # the exact extremes are still reported by the statistics
        assert stats.side_stats(raw(t), "float32").max == 1e6

    def test_mixed_dtypes_share_one_range(self):
        a = noisy(29, torch.float32, (20000,))
        b = (a * 3).to(torch.bfloat16)
        h = stats.histograms(raw(a), "float32", raw(b), "bfloat16")
        assert (h["a"].lo, h["a"].hi) == (h["b"].lo, h["b"].hi)
        assert h["b"].below + h["b"].above > h["a"].below + h["a"].above  # B is wider than A
        assert "diff" in h

    def test_small_tensor_range_is_exact(self):
        """Under 10,000 values the range is the exact min and max: nothing falls outside."""
        a = noisy(33, torch.float32, (16,))
        h = stats.histograms(raw(a), "float32", None, None)["a"]
        assert (h.lo, h.hi) == (float(a.min()), float(a.max()))
        assert h.below == h.above == 0 and sum(h.counts) == 16

    def test_no_diff_for_different_sizes(self):
        a, b = noisy(30, torch.float32, (100,)), noisy(31, torch.float32, (120,))
        h = stats.histograms(raw(a), "float32", raw(b), "float32")
        assert set(h) == {"a", "b"}
        assert total(h["a"]) == 100 and total(h["b"]) == 120

    def test_only_b_side(self):
        b = noisy(32, torch.float16, (500,))
        assert set(stats.histograms(None, None, raw(b), "float16")) == {"b"}

    def test_constant_and_nonfinite(self):
        t = torch.full((100,), 3.0)
        h = stats.histograms(raw(t), "float32", raw(t), "float32")
        assert h["a"].lo < 3.0 < h["a"].hi and total(h["a"]) == sum(h["a"].counts) == 100
        assert sum(h["diff"].counts) == 100  # all-zero differences still land in a bin
        nan = torch.full((10,), math.nan)
        assert stats.histograms(raw(nan), "float32", raw(nan), "float32") == {}

    def test_cancel(self, small_chunks):
        t = noisy(33, torch.float32)
        with pytest.raises(stats.Cancelled):
            stats.histograms(raw(t), "float32", raw(t), "float32", should_cancel=lambda: True)
