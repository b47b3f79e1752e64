"""The compiled loops: decode stored elements and sum many pieces of tensors in one call.

A *piece* is at most `pieces.PIECE` consecutive elements of one tensor, or the same positions of
both tensors of a pair, lying in a byte buffer read from the files. `scan_pieces` takes a
whole table of pieces (a run of small tensors, or a range of a large one) and writes one row
of sums per piece (`columns.py`): a model of 100,000 small tensors costs a few calls, not
100,000 rounds of Python. Per piece it first compares the two sides' bytes; an equal piece
is summed once, as one side, and its difference is known to be zero.

A piece is decoded into a float32 scratch buffer (float64 for float64 and wide integers),
then walked in blocks: each block first takes a loop whose sums vectorize; when a sum comes
out NaN or Inf the block held such values and is redone by an exact loop that counts them.
Loops are compiled once with numba and cached on disk.
"""

import os

from weightscope.paths import cache_dir

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from weightscope.compare import pieces  # noqa: E402
from weightscope.compare.columns import (  # noqa: E402
    A, AA, AB, ARGMAX, B, BB, BOTH, CHANGED, D, HI, LO, MAXABS, MISMATCHED, N, NAN, NEGINF, PAIR, POSINF, S1, S2,
    SHIFT, SUMABS, SUMSQ, ZEROS)
from weightscope.compare.pieces import (  # noqa: E402
    BYTES, CODE_A, CODE_B, COUNT, EQUAL, HAS_A, HAS_B, HAS_D, ITEMSIZES, KIND, NARROW, OFF_A, OFF_B, PAIRED, SIDE_A,
    SIDE_B, START)

BLOCK = 2048  # elements per vectorized loop: both sides' block stays in L1 across its loops

exact = numba.njit(nogil=True, cache=True, error_model="numpy")
# Reassociation lets the sums vectorize; NaN and Inf still propagate, which is how a block
# that holds them is noticed and redone exactly.
fast = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp"})
# Only for blocks already known to be finite: min and max vectorize once NaN is ruled out.
finite_only = numba.njit(nogil=True, cache=True, error_model="numpy",
                         fastmath={"reassoc", "contract", "arcp", "nnan", "ninf", "nsz"})


def byte_tables() -> np.ndarray:
    """float32 values of every byte of the three float8 types (rows: e4m3fn, e5m2, e8m0fnu)."""
    b = np.arange(256, dtype=np.uint32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exponent, mantissa = (b >> 3) & 0xF, b & 0x7
    e4m3 = sign * np.where(exponent == 0, mantissa / 8 * 2.0 ** -6, (1 + mantissa / 8) * 2.0 ** (exponent - 7.0))
    e4m3[(b & 0x7F) == 0x7F] = np.nan  # no infinities; S.1111.111 is NaN
    e5m2 = (b.astype(np.uint16) << 8).view(np.float16).astype(np.float64)  # the top byte of a float16
    e8m0 = 2.0 ** (b.astype(np.float64) - 127)
    e8m0[255] = np.nan
    with np.errstate(invalid="ignore"):  # the NaNs, cast
        return np.stack([e4m3, e5m2, e8m0]).astype(np.float32)


TABLES = byte_tables()


@exact
def decode_narrow(buf, off, count, code, out, tables):
    """`count` elements of a narrow type `code` at byte `off` of `buf`, into float32 out[:count]."""
    if code == 0:
        src32 = buf[off:off + 4 * count].view(np.float32)
        for i in range(count):
            out[i] = src32[i]
    elif code == 1:  # float16 by its bits: exact for every value, subnormals included
        src16 = buf[off:off + 2 * count].view(np.uint16)
        for i in range(count):
            h = np.uint32(src16[i])
            em = h & np.uint32(0x7FFF)
            inf_nan = np.uint32(0x7F800000) if em >= 0x7C00 else np.uint32(0)
            bits = ((h & np.uint32(0x8000)) << np.uint32(16)) | (em << np.uint32(13)) | inf_nan
            # the exponent moved 13 bits up; 2^112 rebases it from float16's bias (15) to 127
            out[i] = np.uint32(bits).view(np.float32) * np.float32(5.192296858534828e33)
    elif code == 2:  # bfloat16 is the top half of a float32
        src16 = buf[off:off + 2 * count].view(np.uint16)
        for i in range(count):
            out[i] = np.uint32(np.uint32(src16[i]) << np.uint32(16)).view(np.float32)
    elif code <= 5:
        table = tables[code - 3]
        for i in range(count):
            out[i] = table[buf[off + i]]
    elif code == 6:
        src8 = buf[off:off + count].view(np.int8)
        for i in range(count):
            out[i] = src8[i]
    elif code == 7:
        for i in range(count):
            out[i] = buf[off + i]
    elif code == 8:
        srci16 = buf[off:off + 2 * count].view(np.int16)
        for i in range(count):
            out[i] = srci16[i]
    elif code == 9:
        src16 = buf[off:off + 2 * count].view(np.uint16)
        for i in range(count):
            out[i] = src16[i]
    else:
        for i in range(count):
            out[i] = 1.0 if buf[off + i] else 0.0


@exact
def decode_wide(buf, off, count, code, out, narrow, tables):
    """`count` elements of any type into float64 out[:count] (narrow types through `narrow`)."""
    if code < NARROW:
        decode_narrow(buf, off, count, code, narrow, tables)
        for i in range(count):
            out[i] = narrow[i]
    elif code == 11:
        src64 = buf[off:off + 8 * count].view(np.float64)
        for i in range(count):
            out[i] = src64[i]
    elif code == 12:
        srci32 = buf[off:off + 4 * count].view(np.int32)
        for i in range(count):
            out[i] = srci32[i]
    elif code == 13:
        srcu32 = buf[off:off + 4 * count].view(np.uint32)
        for i in range(count):
            out[i] = srcu32[i]
    elif code == 14:
        srci64 = buf[off:off + 8 * count].view(np.int64)
        for i in range(count):
            out[i] = srci64[i]
    else:
        srcu64 = buf[off:off + 8 * count].view(np.uint64)
        for i in range(count):
            out[i] = srcu64[i]


@exact
def side_of(buf, off, count, code, narrow, wide, tables, row, base):
    """One side's columns for `count` stored elements, decoded as narrowly as is exact."""
    if code < NARROW:
        decode_narrow(buf, off, count, code, narrow, tables)
        side_piece(narrow[:count], row, base)
    else:
        decode_wide(buf, off, count, code, wide, narrow, tables)
        side_piece(wide[:count], row, base)


@exact
def same_bytes(buf_a, off_a, buf_b, off_b, nbytes):
    """Whether two byte ranges are equal, compared 8 bytes at a time, stopping at the first
    block that differs."""
    words = nbytes // 8
    x = buf_a[off_a:off_a + 8 * words].view(np.uint64)
    y = buf_b[off_b:off_b + 8 * words].view(np.uint64)
    for start in range(0, words, BLOCK):
        differ = np.uint64(0)
        for i in range(start, min(start + BLOCK, words)):
            differ |= x[i] ^ y[i]
        if differ:
            return False
    for i in range(8 * words, nbytes):
        if buf_a[off_a + i] != buf_b[off_b + i]:
            return False
    return True


@exact
def first_finite(x):
    for i in range(x.size):
        v = np.float64(x[i])
        if abs(v) < np.inf:
            return v
    return 0.0


@finite_only
def block_extremes(x, start, stop):
    block = x[start:stop]  # a slice of its own: the loop vectorizes (indexing from `start` did not)
    lo, hi = np.inf, -np.inf
    for i in range(block.size):
        v = np.float64(block[i])
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


@finite_only
def pair_block_extremes(a, b, start, stop):
    """min and max of each side and the largest |b − a| over a block known to be finite."""
    x, y = a[start:stop], b[start:stop]
    lo_a, hi_a, lo_b, hi_b, largest = np.inf, -np.inf, np.inf, -np.inf, 0.0
    for i in range(x.size):
        va, vb = np.float64(x[i]), np.float64(y[i])
        lo_a = va if va < lo_a else lo_a
        hi_a = va if va > hi_a else hi_a
        lo_b = vb if vb < lo_b else lo_b
        hi_b = vb if vb > hi_b else hi_b
        d = abs(vb - va)
        largest = d if d > largest else largest
    return lo_a, hi_a, lo_b, hi_b, largest


@fast
def finite_side_block(x, start, stop, shift):
    block = x[start:stop]
    s1 = s2 = 0.0
    zeros = 0
    for i in range(block.size):
        v = np.float64(block[i])
        w = v - shift
        s1 += w
        s2 += w * w
        zeros += v == 0.0
    return s1, s2, zeros


@exact
def any_side_block(x, start, stop, shift, row, base):
    """The exact loop for a block that holds NaN or Inf."""
    for i in range(start, stop):
        v = np.float64(x[i])
        if abs(v) < np.inf:
            w = v - shift
            row[base + N] += 1
            row[base + S1] += w
            row[base + S2] += w * w
            row[base + ZEROS] += v == 0.0
            row[base + LO] = min(row[base + LO], v)
            row[base + HI] = max(row[base + HI], v)
        elif v != v:
            row[base + NAN] += 1
        elif v > 0:
            row[base + POSINF] += 1
        else:
            row[base + NEGINF] += 1


@exact
def side_piece(x, row, base):
    """One side's columns (`columns.SIDE` from `base`) for the decoded values x. Sums are
    shifted by the first finite value, which keeps the variance exact when the mean is far
    from zero."""
    shift = row[base + SHIFT] = first_finite(x)
    row[base + LO], row[base + HI] = np.inf, -np.inf
    for start in range(0, x.size, BLOCK):
        stop = min(start + BLOCK, x.size)
        s1, s2, zeros = finite_side_block(x, start, stop, shift)
        if abs(s2) < np.inf:
            lo, hi = block_extremes(x, start, stop)
            add_side(row, base, stop - start, s1, s2, zeros)
            row[base + LO] = min(row[base + LO], lo)
            row[base + HI] = max(row[base + HI], hi)
        else:
            any_side_block(x, start, stop, shift, row, base)


@fast
def finite_diff_block(a, b, start, stop, atol, rtol):
    """The difference's sums over a block, in a loop that vectorizes (each side's sums have
    loops of their own: one loop for all of them would not vectorize)."""
    x, y = a[start:stop], b[start:stop]
    sumabs = sumsq = aa = bb = ab = 0.0
    changed = mismatched = 0
    for i in range(x.size):
        va, vb = np.float64(x[i]), np.float64(y[i])
        d = abs(vb - va)
        sumabs += d
        sumsq += d * d
        aa += va * va
        bb += vb * vb
        ab += va * vb
        changed += va != vb
        mismatched += d > atol + rtol * abs(va)
    return sumabs, sumsq, aa, bb, ab, changed, mismatched


@exact
def any_diff_block(a, b, start, stop, atol, rtol, row):
    """The exact loop for a block where either side holds NaN or Inf.

    `changed` counts positions whose values differ (NaN on both sides is equal);
    `mismatched` counts, as `torch.testing.assert_close` does, positions where
    |b - a| > atol + rtol * |a| or where non-finite values differ.
    """
    for i in range(start, stop):
        va, vb = np.float64(a[i]), np.float64(b[i])
        if abs(va) < np.inf and abs(vb) < np.inf:
            d = abs(vb - va)
            row[D + BOTH] += 1
            row[D + SUMABS] += d
            row[D + SUMSQ] += d * d
            row[D + AA] += va * va
            row[D + BB] += vb * vb
            row[D + AB] += va * vb
            if d > row[D + MAXABS]:
                row[D + MAXABS], row[D + ARGMAX] = d, i
        if va != vb and not (va != va and vb != vb):
            row[D + CHANGED] += 1
            # an infinite side is never within tolerance: rtol * |Inf| would admit anything
            if not (abs(va) < np.inf and abs(vb) < np.inf and abs(vb - va) <= atol + rtol * abs(va)):
                row[D + MISMATCHED] += 1


@exact
def pair_piece(a, b, atol, rtol, row):
    """Both sides' and the difference's columns for decoded values a and b (same length).
    MAXABS is -1 where no position is finite on both sides; ARGMAX is within the piece."""
    shift_a = row[A + SHIFT] = first_finite(a)
    shift_b = row[B + SHIFT] = first_finite(b)
    row[A + LO], row[A + HI], row[B + LO], row[B + HI] = np.inf, -np.inf, np.inf, -np.inf
    row[D + MAXABS], row[D + ARGMAX] = -1.0, 0
    for start in range(0, a.size, BLOCK):
        stop = min(start + BLOCK, a.size)
        s1a, s2a, zeros_a = finite_side_block(a, start, stop, shift_a)
        s1b, s2b, zeros_b = finite_side_block(b, start, stop, shift_b)
        sumabs, sumsq, aa, bb, ab, changed, mismatched = finite_diff_block(a, b, start, stop, atol, rtol)
        if not (abs(s2a) < np.inf and abs(s2b) < np.inf and abs(sumsq) < np.inf and abs(aa) < np.inf
                and abs(bb) < np.inf):
            any_side_block(a, start, stop, shift_a, row, A)
            any_side_block(b, start, stop, shift_b, row, B)
            any_diff_block(a, b, start, stop, atol, rtol, row)
            continue
        n = stop - start
        add_side(row, A, n, s1a, s2a, zeros_a)
        add_side(row, B, n, s1b, s2b, zeros_b)
        row[D + BOTH] += n
        row[D + SUMABS] += sumabs
        row[D + SUMSQ] += sumsq
        row[D + AA] += aa
        row[D + BB] += bb
        row[D + AB] += ab
        row[D + CHANGED] += changed
        row[D + MISMATCHED] += mismatched
        lo_a, hi_a, lo_b, hi_b, largest = pair_block_extremes(a, b, start, stop)
        row[A + LO], row[A + HI] = min(row[A + LO], lo_a), max(row[A + HI], hi_a)
        row[B + LO], row[B + HI] = min(row[B + LO], lo_b), max(row[B + HI], hi_b)
        if largest > row[D + MAXABS]:  # its first position, in a second look at this block only
            row[D + MAXABS], row[D + ARGMAX] = largest, start
            for i in range(start, stop):
                if abs(np.float64(b[i]) - np.float64(a[i])) == largest:
                    row[D + ARGMAX] = i
                    break


@exact
def add_side(row, base, n, s1, s2, zeros):
    row[base + N] += n
    row[base + S1] += s1
    row[base + S2] += s2
    row[base + ZEROS] += zeros


@exact
def equal_piece(row):
    """The columns of a piece whose two sides have equal bytes, from A's: B is A, Δ is zero."""
    row[B:B + (B - A)] = row[A:B]
    n, shift, s1 = row[A + N], row[A + SHIFT], row[A + S1]
    square = row[A + S2] + 2 * shift * s1 + n * shift * shift  # Σ x² from the shifted sums
    row[D + BOTH] = n
    row[D + AA] = row[D + BB] = row[D + AB] = square
    row[D + MAXABS] = 0.0 if n > 0 else -1.0


@exact
def scan_pieces(buf_a, buf_b, pieces, tolerances, rows, flags, narrow, wide, tables):
    """Rows of sums (`columns.PAIR` wide) and flags for every piece of a table.

    Args:
        buf_a, buf_b: the bytes the pieces' offsets point into (uint8).
        pieces: one int64 row per piece: KIND, CODE_A, CODE_B, OFF_A, OFF_B, COUNT, START
            (for BYTES pieces, codes of uint8 and COUNT in bytes).
        tolerances: (atol, rtol) per piece.
        rows, flags: filled here; ARGMAX is made absolute by adding the piece's START.
        narrow, wide: float32 and float64 scratch of shape (2, PIECE).
    """
    for k in range(pieces.shape[0]):
        kind, code_a, code_b = pieces[k, KIND], pieces[k, CODE_A], pieces[k, CODE_B]
        off_a, off_b, count = pieces[k, OFF_A], pieces[k, OFF_B], pieces[k, COUNT]
        if count > narrow.shape[1]:
            raise ValueError("a piece is larger than the scratch buffers")
        row = rows[k]
        row[:] = 0.0
        if kind == SIDE_A:
            side_of(buf_a, off_a, count, code_a, narrow[0], wide[0], tables, row, A)
            flags[k] = HAS_A
            continue
        if kind == SIDE_B:
            side_of(buf_b, off_b, count, code_b, narrow[1], wide[1], tables, row, B)
            flags[k] = HAS_B
            continue
        equal = code_a == code_b and same_bytes(buf_a, off_a, buf_b, off_b, count * ITEMSIZES[code_a])
        if kind == BYTES:
            flags[k] = EQUAL if equal else 0
            continue
        if equal:
            side_of(buf_a, off_a, count, code_a, narrow[0], wide[0], tables, row, A)
            equal_piece(row)
            flags[k] = HAS_A | HAS_B | HAS_D | EQUAL
            continue
        atol, rtol = tolerances[k, 0], tolerances[k, 1]
        if code_a < NARROW and code_b < NARROW:
            decode_narrow(buf_a, off_a, count, code_a, narrow[0], tables)
            decode_narrow(buf_b, off_b, count, code_b, narrow[1], tables)
            pair_piece(narrow[0][:count], narrow[1][:count], atol, rtol, row)
        else:
            decode_wide(buf_a, off_a, count, code_a, wide[0], narrow[0], tables)
            decode_wide(buf_b, off_b, count, code_b, wide[1], narrow[1], tables)
            pair_piece(wide[0][:count], wide[1][:count], atol, rtol, row)
        flags[k] = HAS_A | HAS_B | HAS_D
        row[D + ARGMAX] += pieces[k, START]


# A histogram row as the loops fill it: [below lo, bins over [lo, hi]…, above hi, not finite].
# Each piece's slots are worked out first, in a loop that vectorizes (selects, no branches),
# then counted: a third of the time of one branching loop that does both.


@exact
def slot(v, lo, hi, scale, bins):
    """Where `v` counts in a row (see above)."""
    x = (v - lo) * scale + 1.0
    x = x if x > 1.0 else 1.0  # (NaN too)
    x = x if x < bins else float(bins)  # hi itself is in the last bin
    k = np.int64(x)
    k = 0 if v < lo else k
    k = bins + 1 if v > hi else k
    return k if abs(v) < np.inf else bins + 2


@exact
def count_slots(slots, count, row):
    for i in range(count):
        row[slots[i]] += 1


@exact
def histogram_piece(x, lo, hi, row, slots):
    bins = row.size - 3
    scale = bins / (hi - lo)
    for i in range(x.size):
        slots[i] = slot(np.float64(x[i]), lo, hi, scale, bins)
    count_slots(slots, x.size, row)


@exact
def pair_histogram_piece(a, b, lo, hi, d_lo, d_hi, row_a, row_b, row_d, slots):
    """`histogram_piece` of a and of b over [lo, hi], and of b − a over [d_lo, d_hi] (not
    finite where either is not), in one pass (no temporary array)."""
    bins = row_a.size - 3
    scale, d_scale = bins / (hi - lo), bins / (d_hi - d_lo)
    for i in range(a.size):
        va, vb = np.float64(a[i]), np.float64(b[i])
        slots[0, i] = slot(va, lo, hi, scale, bins)
        slots[1, i] = slot(vb, lo, hi, scale, bins)
        d = slot(vb - va, d_lo, d_hi, d_scale, bins)
        slots[2, i] = d if abs(va) < np.inf and abs(vb) < np.inf else bins + 2  # (∞ − ∞ is NaN already)
    for which, row in enumerate((row_a, row_b, row_d)):
        count_slots(slots[which], a.size, row)


@exact
def histogram_pieces(buf, pieces, side, lo, hi, row, narrow, wide, slots, tables):
    """Add every piece's values of one side (`side` 0: A, 1: B, of the pieces' offsets and
    codes; `buf` that side's bytes) to a histogram row (see above)."""
    for k in range(pieces.shape[0]):
        code, off, count = pieces[k, CODE_A + side], pieces[k, OFF_A + side], pieces[k, COUNT]
        if count > narrow.shape[1]:
            raise ValueError("a piece is larger than the scratch buffers")
        if code < NARROW:
            decode_narrow(buf, off, count, code, narrow[side], tables)
            histogram_piece(narrow[side][:count], lo, hi, row, slots[0])
        else:
            decode_wide(buf, off, count, code, wide[side], narrow[side], tables)
            histogram_piece(wide[side][:count], lo, hi, row, slots[0])


@exact
def pair_histogram_pieces(buf_a, buf_b, pieces, lo, hi, d_lo, d_hi, row_a, row_b, row_d, narrow, wide, slots, tables):
    """Histograms of A, B (over [lo, hi]) and b − a (over [d_lo, d_hi]) of every piece, each
    side decoded once."""
    for k in range(pieces.shape[0]):
        code_a, code_b = pieces[k, CODE_A], pieces[k, CODE_B]
        off_a, off_b, count = pieces[k, OFF_A], pieces[k, OFF_B], pieces[k, COUNT]
        if count > narrow.shape[1]:
            raise ValueError("a piece is larger than the scratch buffers")
        if code_a < NARROW and code_b < NARROW:
            decode_narrow(buf_a, off_a, count, code_a, narrow[0], tables)
            decode_narrow(buf_b, off_b, count, code_b, narrow[1], tables)
            pair_histogram_piece(narrow[0][:count], narrow[1][:count], lo, hi, d_lo, d_hi, row_a, row_b, row_d, slots)
        else:
            decode_wide(buf_a, off_a, count, code_a, wide[0], narrow[0], tables)
            decode_wide(buf_b, off_b, count, code_b, wide[1], narrow[1], tables)
            pair_histogram_piece(wide[0][:count], wide[1][:count], lo, hi, d_lo, d_hi, row_a, row_b, row_d, slots)


def scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The narrow and wide scratch buffers the loops decode into, and the histograms' slots
    (one set per thread)."""
    return (np.empty((2, pieces.PIECE), np.float32), np.empty((2, pieces.PIECE), np.float64),
            np.empty((3, pieces.PIECE), np.int64))


def load() -> None:
    """Load (or compile, the first time) every loop, so that the first real tensor does not
    wait for it: pieces of both scratch widths, paired, one-sided, equal and histograms."""
    buf = np.zeros(64, np.uint8)
    pieces = np.array([[PAIRED, 0, 0, 0, 0, 4, 0], [PAIRED, 11, 0, 0, 0, 4, 0], [PAIRED, 0, 1, 0, 16, 4, 0],
                       [SIDE_A, 1, 0, 0, 0, 4, 0], [SIDE_B, 0, 11, 0, 0, 4, 0], [BYTES, 7, 7, 0, 0, 4, 0]], np.int64)
    rows, flags = np.zeros((len(pieces), PAIR)), np.zeros(len(pieces), np.uint8)
    narrow, wide, slots = scratch()
    scan_pieces(buf, buf, pieces, np.zeros((len(pieces), 2)), rows, flags, narrow, wide, TABLES)
    for side in range(2):
        histogram_pieces(buf, pieces[:3], side, 0.0, 1.0, np.zeros(7, np.int64), narrow, wide, slots, TABLES)
    pair_histogram_pieces(buf, buf, pieces[:3], 0.0, 1.0, 0.0, 1.0, *np.zeros((3, 7), np.int64), narrow, wide, slots,
                          TABLES)
    decode_wide(buf, 0, 4, 1, np.zeros(4), np.zeros(4, np.float32), TABLES)


load()
