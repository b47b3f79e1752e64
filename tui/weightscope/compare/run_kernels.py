"""The compiled loop of a run's scan: every checkpoint of one piece of a tensor in one call.

A piece (at most `pieces.PIECE` elements of one tensor) lies in one buffer for every
checkpoint of the run the unit reads: the reference first, then the steps in order. The
reference is decoded once; each step is compared by its bytes with the reference and with
its predecessor (an equal one is not decoded again: its values are those already decoded),
else summed against both in one loop: straight from the bytes where the reference, the
predecessor and it are all bfloat16 or float32 (`fused`, nearly always), else decoded first
into the slot its predecessor does not hold. A piece whose sums come out NaN or Inf held such
values and is summed again by an exact loop that counts them. Columns of a piece's row per
checkpoint: `run_columns.py`.
"""

import numpy as np

from weightscope.compare.kernels import TABLES, decode_narrow, exact, fast, same_bytes
from weightscope.compare.pieces import ITEMSIZES
from weightscope.compare.run_columns import ABSMAX, DD, NONFINITE, PP, READ, RR, RS, SAME_PREV, SAME_REF, SQ, SS, UU


@fast
def moved(r, p, s):
    """Σ s², Σ r·s, Σ (s − r)², Σ (s − p)² and max |s| (the sums NaN or Inf when any value is
    not finite; max |s| is then not used)."""
    sq = rs = dd = uu = top = 0.0
    for i in range(s.size):
        vs, vr, vp = np.float64(s[i]), np.float64(r[i]), np.float64(p[i])
        sq += vs * vs
        rs += vr * vs
        d = vs - vr
        dd += d * d
        u = vs - vp
        uu += u * u
        a = abs(vs)
        top = a if a > top else top
    return sq, rs, dd, uu, top


@fast
def moved_bf16(r, p, s):
    """`moved` and max |s| of bfloat16 bits (uint16), each value decoded in the loop: one pass
    over the bytes, no scratch (max |s| from the bits: exact where every value is finite)."""
    sq = rs = dd = uu = 0.0
    top = np.uint16(0)
    for i in range(s.size):
        vs = np.float64(np.uint32(np.uint32(s[i]) << np.uint32(16)).view(np.float32))
        vr = np.float64(np.uint32(np.uint32(r[i]) << np.uint32(16)).view(np.float32))
        vp = np.float64(np.uint32(np.uint32(p[i]) << np.uint32(16)).view(np.float32))
        sq += vs * vs
        rs += vr * vs
        d = vs - vr
        dd += d * d
        u = vs - vp
        uu += u * u
        m = s[i] & np.uint16(0x7FFF)
        top = m if m > top else top
    return sq, rs, dd, uu, np.float64(np.uint32(np.uint32(top) << np.uint32(16)).view(np.float32))


@exact
def fused(buf, r_off, p_off, s_off, n, code, row, r_sq, p_sq):
    """A step's sums against the reference and its predecessor straight from the bytes, where
    all three are bfloat16 or float32 (nearly always); False where another loop must do it, or
    some value is not finite (the exact loop counts those)."""
    if code == 2:
        sq, rs, dd, uu, top = moved_bf16(buf[r_off:r_off + 2 * n].view(np.uint16),
                                         buf[p_off:p_off + 2 * n].view(np.uint16),
                                         buf[s_off:s_off + 2 * n].view(np.uint16))
    elif code == 0:
        sq, rs, dd, uu, top = moved(buf[r_off:r_off + 4 * n].view(np.float32),
                                    buf[p_off:p_off + 4 * n].view(np.float32),
                                    buf[s_off:s_off + 4 * n].view(np.float32))
    else:
        return False
    if not (abs(sq) < np.inf and abs(rs) < np.inf and abs(dd) < np.inf and abs(uu) < np.inf):
        return False
    row[SQ] += sq
    row[ABSMAX] = max(row[ABSMAX], top)
    row[RS] += rs
    row[DD] += dd
    row[RR] += r_sq
    row[SS] += sq
    row[UU] += uu
    row[PP] += p_sq
    return True


@exact
def moved_exact(r, p, s, has_r, has_p, own, row):
    """The sums over positions finite on both sides of each comparison, NaN and Inf counted."""
    for i in range(s.size):
        vs = np.float64(s[i])
        finite = abs(vs) < np.inf
        if own:
            if finite:
                row[SQ] += vs * vs
                row[ABSMAX] = max(row[ABSMAX], abs(vs))
            else:
                row[NONFINITE] += 1
        if not finite:
            continue
        if has_r:
            vr = np.float64(r[i])
            if abs(vr) < np.inf:
                d = vs - vr
                row[RS] += vr * vs
                row[DD] += d * d
                row[RR] += vr * vr
                row[SS] += vs * vs
        if has_p:
            vp = np.float64(p[i])
            if abs(vp) < np.inf:
                u = vs - vp
                row[UU] += u * u
                row[PP] += vp * vp


@exact
def accumulate(r, p, s, has_r, has_p, own, row, r_sq, p_sq):
    """Add s's own sums (when `own`) and its sums against r and p (when asked) to `row`;
    `r_sq`, `p_sq`: Σ r², Σ p² over this piece, which are the both-finite sums when all is finite."""
    sq, rs, dd, uu, top = moved(r if has_r else s, p if has_p else s, s)
    if not (abs(sq) < np.inf and abs(rs) < np.inf and abs(dd) < np.inf and abs(uu) < np.inf):
        moved_exact(r, p, s, has_r, has_p, own, row)
        return
    if own:
        row[SQ] += sq
        row[ABSMAX] = max(row[ABSMAX], top)
    if has_r:
        row[RS] += rs
        row[DD] += dd
        row[RR] += r_sq
        row[SS] += sq
    if has_p:
        row[UU] += uu
        row[PP] += p_sq


@exact
def run_pieces(buf, count, codes, offs, decoded, wanted, sums, same, scratch, tables):
    """Rows of sums (`sums[piece, checkpoint]`) and equality flags for every piece of a unit.

    Args:
        buf: the unit's bytes (uint8), every checkpoint's.
        count: elements per piece.
        codes, offs: per piece and checkpoint, the element code and the byte offset in `buf`
            (-1: this checkpoint has no comparable tensor here).
        decoded: per piece, whether its codes are decoded (else bytes are only compared).
        wanted: per checkpoint, whether its sums against the reference and its predecessor
            are asked (a checkpoint read only as the next one's predecessor is not).
        scratch: float32 (3, PIECE): the reference's values, and two slots that take turns.
    """
    checkpoints = codes.shape[1]
    for k in range(count.shape[0]):
        n = count[k]
        if n > scratch.shape[1]:
            raise ValueError("a piece is larger than the scratch buffers")
        has_r = offs[k, 0] >= 0
        if has_r:
            same[k, 0] = READ
            if decoded[k]:
                decode_narrow(buf, offs[k, 0], n, codes[k, 0], scratch[0], tables)
                x = scratch[0, :n]
                accumulate(x, x, x, False, False, True, sums[k, 0], 0.0, 0.0)
        has_p, slot = has_r, 0  # the predecessor's slot (-1: its values are not decoded)
        for t in range(1, checkpoints):
            off, code = offs[k, t], codes[k, t]
            if off < 0:
                has_p = False
                continue
            nbytes = n * ITEMSIZES[code]
            same_r = has_r and code == codes[k, 0] and same_bytes(buf, off, buf, offs[k, 0], nbytes)
            same_p = has_p and code == codes[k, t - 1] and (
                (same_r and slot == 0) or same_bytes(buf, off, buf, offs[k, t - 1], nbytes))
            same[k, t] = READ | (SAME_REF if same_r else 0) | (SAME_PREV if same_p else 0)
            if not decoded[k]:
                has_p, slot = True, -1
                continue
            row = sums[k, t]
            if (wanted[t] and has_r and has_p and not (same_r or same_p) and code == codes[k, 0]
                    and code == codes[k, t - 1]
                    and fused(buf, offs[k, 0], offs[k, t - 1], off, n, code, row, sums[k, 0, SQ], sums[k, t - 1, SQ])):
                has_p, slot = True, -1  # summed straight from the bytes: nothing decoded
                continue
            if has_p and slot < 0 and (same_p or wanted[t]):  # the predecessor's values, needed
                slot = 1
                decode_narrow(buf, offs[k, t - 1], n, codes[k, t - 1], scratch[slot], tables)
            if same_r or same_p:  # its values are decoded already: the reference's, or the predecessor's
                source = sums[k, 0] if same_r else sums[k, t - 1]
                row[SQ], row[ABSMAX], row[NONFINITE] = source[SQ], source[ABSMAX], source[NONFINITE]
                here = 0 if same_r else slot
            else:
                here = 1 if slot != 1 else 2
                decode_narrow(buf, off, n, code, scratch[here], tables)
            if wanted[t]:
                if same_r:
                    row[RS] = row[RR] = row[SS] = row[SQ]
                if same_p:
                    row[PP] = row[SQ]
                own = not (same_r or same_p)
                vs_r, vs_p = has_r and not same_r, has_p and not same_p
                if own or vs_r or vs_p:
                    accumulate(scratch[0, :n], scratch[max(slot, 0), :n], scratch[here, :n], vs_r, vs_p, own, row,
                               sums[k, 0, SQ], sums[k, t - 1, SQ])
            elif not (same_r or same_p):
                x = scratch[here, :n]
                accumulate(x, x, x, False, False, True, row, 0.0, 0.0)
            has_p, slot = True, here


def load() -> None:
    """Load (or compile, the first time) the loop, so that the first unit does not wait for it."""
    buf = np.zeros(64, np.uint8)
    count = np.array([4, 4], np.int64)
    codes = np.array([[2, 2, 0], [0, 0, 0]], np.int64)
    offs = np.array([[0, 8, 16], [0, 16, -1]], np.int64)
    sums = np.zeros((2, 3, 9))
    same = np.zeros((2, 3), np.uint8)
    run_pieces(buf, count, codes, offs, np.ones(2, np.bool_), np.ones(3, np.bool_), sums, same,
               np.empty((3, 8), np.float32), TABLES)


load()
