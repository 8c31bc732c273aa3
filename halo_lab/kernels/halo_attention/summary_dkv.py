"""The summaries' dK/dV in passes owned by the summaries (``SUM_KG`` 3, the default with summary keys).

The dQ pass used to add every query tile's [tile, d] products for the summary keys into their fp32
buffers with atomics (backward.add_key_grads): at 4K every tile of a batch row adds into the same group
summaries and the few blocks of its chosen groups, and the contention cost 511 µs of the pass's 1,975 on
an H100 (experiments/bench/README.md, "Eighteenth session"). Here the work goes the other way, as
chosen_dkv.py does for the chosen keys, in two kernels by who reads a summary (selected.py):

* ``group_blocks_dkv_kernel``, with groups (m = ``SM`` blocks a group): one program per (batch row, KV
  head, group) owns the group's m block summaries as one [SMP, d] tile. Two kinds of rows read them: the
  positions that chose the group (the group choice inverted, ``chosen_pairs``), which keep all m, and the
  positions whose candidates end inside the group (c // m = the group, c % m > 0: a contiguous range of at
  most (m - 1) * b positions, since c grows by one every b positions), which keep the blocks below c. Only
  this program writes the tile's rows: one plain store.
* ``suffix_dkv_kernel``: summaries that every position from some first one on reads, a contiguous suffix
  (c never decreases): the group summaries with groups (g < c // m), the block summaries without
  (j < c). One program per (batch row, KV head, SUM_T summaries, CHUNK positions), one fp32 atomic per
  program: a program per summary tile alone would be B * HKV = 32 programs at 4K, too few for the card.

The dQ pass still computes the summaries' dQ and the summary bias's gradient (it scores them anyway).
On an H100 (experiments/bench/h100_select_v10/, compiled) the dQ pass went from 1,853 to 1,060 µs at 4K
and 2,827 to 1,436 at 16K, these passes take 428 and 890, and fwd + bwd 4.58 -> 4.30 ms and 6.27 -> 5.90.
The group kernel is uneven: the early groups are chosen by many positions (804 µs at 16K compiled, 1,357
eager, where eager fwd + bwd is 3.6% slower than with the atomics): ``GROUP_PART`` splits a group's
positions over several programs (built and tested, off until timed).

Block sizes: BLOCK_P = 16 positions a step x GRP query heads = the rows of one product (64 at GRP 4);
SUM_T = 16 summaries (tl.dot's smallest tile); CHUNK = 512 positions a suffix program (8 chunks x 32 (row,
head) programs at 4K tokens, batch 4, 8 KV heads: 256 programs of 32 steps).
"""

from __future__ import annotations

import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.backward import grad_tile
from halo_lab.kernels.halo_attention.chosen_dkv import chosen_pairs
from halo_lab.kernels.halo_attention.common import LOG2E, load_query_rows, load_rows, mma
from halo_lab.kernels.halo_attention.selected import candidates, first_reader

BLOCK_P = 16
SUM_T = 16
CHUNK = 512  # module-level so that a test can shrink it (several chunks at interpreter lengths)
# Positions of a group's choosers a program takes (0: all of them, one program a group, a plain store).
# The early groups are candidates of most positions and chosen the most, so one program a group leaves
# the card waiting on a few long ones; with parts every program takes at most GROUP_PART of them and adds
# its sums with fp32 atomics. Off until timed on a card (kernel_tune.py's group_part variants).
GROUP_PART = 0
KS_BY_SUMMARIES = 3  # the dQ pass's SUM_KG value that hands the summaries' dK/dV to these passes


@triton.jit
def add_rows(dk, dv, kt, vt, ok, Q, DO, LSE, DELTA, SBIAS, b, h, tok, row_ok, cols, stride_qb, stride_qh,
             stride_ql, stride_dob, stride_doh, stride_dol, L, HKV, qk_scale, GRP: tl.constexpr,
             SUMB: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """dk, dv [summaries, HD] plus the products of one step of rows (positions ``tok`` x the KV head's GRP
    query heads; ``ok`` [rows, summaries] the edges): their lse less the summary bias with SUMB (the
    summaries' scores carry it)."""
    head = h * GRP + tl.arange(0, tok.shape[0]) % GRP
    q = load_query_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
    do = load_query_rows(DO, b, head, tok, stride_dob, stride_doh, stride_dol, cols, row_ok)
    lse = tl.load(LSE + (b * HKV * GRP + head) * L + tok, mask=row_ok, other=0.0)
    if SUMB:
        lse -= tl.load(SBIAS + h).to(tl.float32) * LOG2E
    delta = tl.load(DELTA + (b * HKV * GRP + head) * L + tok, mask=row_ok, other=0.0)
    p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
    dk += mma(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST)
    dv += mma(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
    return dk, dv


@triton.jit
def group_blocks_dkv_kernel(
    Q, K_SUM, V_SUM, DO, LSE, DELTA, DSK, DSV, OFFS, POS, SBIAS,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_ql,
    stride_skb, stride_skh, stride_skl,
    stride_dob, stride_doh, stride_dol,
    L, HKV, NB, NSUM, NGC, PART,
    G: tl.constexpr, W: tl.constexpr, GRP: tl.constexpr, HD: tl.constexpr, SB: tl.constexpr,
    SM: tl.constexpr, SMP: tl.constexpr, BLOCK_P: tl.constexpr, SUMB: tl.constexpr,
    SPLIT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """SPLIT: program_id(2) takes the choosers PART * id .. PART * (id + 1) - 1 of the group (part 0 also
    the loose range) and adds with atomics; else one program takes them all and stores."""
    BLOCK_M: tl.constexpr = BLOCK_P * GRP
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under Inductor
    grp = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    cols = tl.arange(0, HD)
    j = grp * SM + tl.arange(0, SMP)  # the group's block summaries
    valid = (tl.arange(0, SMP) < SM) & (j < NB)
    kt = load_rows(K_SUM + b * stride_skb + h * stride_skh, j, valid, stride_skl, cols)
    vt = load_rows(V_SUM + b * stride_skb + h * stride_skh, j, valid, stride_skl, cols)
    dk = tl.zeros([SMP, HD], tl.float32)
    dv = tl.zeros([SMP, HD], tl.float32)
    r = tl.arange(0, BLOCK_M)
    # the positions that chose the group (only complete groups are chosen: none for a last partial one)
    start = tl.load(OFFS + bh * NGC + tl.minimum(grp, NGC), mask=grp < NGC, other=0)
    end = tl.load(OFFS + bh * NGC + tl.minimum(grp, NGC) + 1, mask=grp < NGC, other=0)
    part = tl.program_id(2)
    if SPLIT:
        start = tl.minimum(start + part * PART, end)
        end = tl.minimum(start + PART, end)
    for s in range(start, end, BLOCK_P):
        idx = s + r // GRP
        row_ok = idx < end
        tok = tl.load(POS + idx, mask=row_ok, other=0)
        ok = row_ok[:, None] & valid[None, :]  # a chooser keeps all the group's blocks
        dk, dv = add_rows(dk, dv, kt, vt, ok, Q, DO, LSE, DELTA, SBIAS, b, h, tok, row_ok, cols, stride_qb,
                          stride_qh, stride_ql, stride_dob, stride_doh, stride_dol, L, HKV, qk_scale, GRP,
                          SUMB, IEEE, UPCAST)  # fmt: skip
    # the positions whose candidates end inside the group: grp * SM < c < (grp + 1) * SM, the blocks < c
    lo = first_reader(grp * SM + 1, G, W, SB)
    hi = tl.minimum(first_reader((grp + 1) * SM, G, W, SB), L)
    if SPLIT:
        hi = tl.where(part == 0, hi, lo)  # the loose range: part 0's
    for s in range(lo, hi, BLOCK_P):
        tok = s + r // GRP
        row_ok = tok < hi
        c = candidates(tok, row_ok, G, W, SB)
        ok = row_ok[:, None] & valid[None, :] & (j[None, :] < c[:, None])
        ok = ok & (j[None, :] >= ((c // SM) * SM)[:, None])
        dk, dv = add_rows(dk, dv, kt, vt, ok, Q, DO, LSE, DELTA, SBIAS, b, h, tok, row_ok, cols, stride_qb,
                          stride_qh, stride_ql, stride_dob, stride_doh, stride_dol, L, HKV, qk_scale, GRP,
                          SUMB, IEEE, UPCAST)  # fmt: skip
    # the group's rows of the fp32 buffers (contiguous [B, HKV, NSUM, HD]): only this program writes them,
    # or with SPLIT only the group's parts
    ptr = (bh * NSUM + tl.where(valid, j, 0))[:, None] * HD + cols[None, :]
    if SPLIT:  # an empty part adds nothing
        used = valid[:, None] & ((cols[None, :] * 0 + tl.maximum(end - start, hi - lo)) > 0)
        tl.atomic_add(DSK + ptr, dk * sm_scale, mask=used)
        tl.atomic_add(DSV + ptr, dv, mask=used)
    else:
        tl.store(DSK + ptr, dk * sm_scale, mask=valid[:, None])
        tl.store(DSV + ptr, dv, mask=valid[:, None])


@triton.jit
def suffix_dkv_kernel(
    Q, K_SUM, V_SUM, DO, LSE, DELTA, DSK, DSV, SBIAS,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_ql,
    stride_skb, stride_skh, stride_skl,
    stride_dob, stride_doh, stride_dol,
    L, HKV, NSUM, FIRST, COUNT, STEP, CHUNK,
    G: tl.constexpr, W: tl.constexpr, GRP: tl.constexpr, HD: tl.constexpr, SB: tl.constexpr,
    SUM_T: tl.constexpr, BLOCK_P: tl.constexpr, SUMB: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Summary rows FIRST + i (i < COUNT), read by the positions whose candidates c >= (i + 1) * STEP:
    with groups the group summaries (STEP = m), without them the block summaries (STEP = 1)."""
    BLOCK_M: tl.constexpr = BLOCK_P * GRP
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under Inductor
    i = tl.program_id(0) * SUM_T + tl.arange(0, SUM_T)
    bh = tl.program_id(2)
    b = bh // HKV
    h = bh % HKV
    valid = i < COUNT
    need = (i + 1) * STEP  # the candidates a row needs to read summary i
    cols = tl.arange(0, HD)
    kt = load_rows(K_SUM + b * stride_skb + h * stride_skh, FIRST + i, valid, stride_skl, cols)
    vt = load_rows(V_SUM + b * stride_skb + h * stride_skh, FIRST + i, valid, stride_skl, cols)
    dk = tl.zeros([SUM_T, HD], tl.float32)
    dv = tl.zeros([SUM_T, HD], tl.float32)
    r = tl.arange(0, BLOCK_M)
    lo = tl.maximum(tl.program_id(1) * CHUNK, first_reader(tl.program_id(0) * SUM_T * STEP + STEP, G, W, SB))
    hi = tl.minimum(tl.program_id(1) * CHUNK + CHUNK, L)
    for s in range(lo, hi, BLOCK_P):
        tok = s + r // GRP
        row_ok = tok < hi
        c = candidates(tok, row_ok, G, W, SB)
        ok = row_ok[:, None] & valid[None, :] & (c[:, None] >= need[None, :])
        dk, dv = add_rows(dk, dv, kt, vt, ok, Q, DO, LSE, DELTA, SBIAS, b, h, tok, row_ok, cols, stride_qb,
                          stride_qh, stride_ql, stride_dob, stride_doh, stride_dol, L, HKV, qk_scale, GRP,
                          SUMB, IEEE, UPCAST)  # fmt: skip
    ptr = (bh * NSUM + FIRST + tl.where(valid, i, 0))[:, None] * HD + cols[None, :]
    used = valid[:, None] & ((cols[None, :] * 0 + hi) > lo)  # a chunk before the tile's readers: nothing
    tl.atomic_add(DSK + ptr, dk * sm_scale, mask=used)
    tl.atomic_add(DSV + ptr, dv, mask=used)


def launches(q, sk, sv, do, lse, delta, dsk, dsv, sel, sbias, dq_meta: dict, scale) -> list[tuple]:
    """[(kernel, grid, args, meta)] of the summaries' passes after the dQ pass (see the module doc);
    ``dq_meta``: the dQ pass's constexprs, whose graph constants they share."""
    B, Hq, L, d = q.shape
    Hkv = sk.shape[1]
    sm = dq_meta["SM"]
    names = ("G", "W", "GRP", "HD", "SB", "SUMB", "IEEE", "UPCAST")
    meta = {n: dq_meta[n] for n in names} | {"BLOCK_P": BLOCK_P, "num_warps": 4, "num_stages": 2}
    head = (q, sk, sv, do, lse, delta, dsk, dsv)
    strides = (*q.stride()[:3], *sk.stride()[:3], *do.stride()[:3])
    scales = (scale * 1.4426950408889634, scale)
    out = []
    if sm and sel.nb > 0:  # the groups' block summaries, then the group summaries (rows nb ..)
        n_groups = sel.nb // sm
        offsets, positions = chosen_pairs(sel.grps, max(n_groups, 1))
        part = GROUP_PART
        args = (*head, offsets, positions, sbias, *scales, *strides, L, Hkv, sel.nb, sel.nsum, n_groups, part)
        grid = (-(-sel.nb // sm), B * Hkv, -(-L // part) if part else 1)  # a group has at most L choosers
        group_meta = {"SM": sm, "SMP": dq_meta["SMP"], "SPLIT": bool(part)}
        out.append((group_blocks_dkv_kernel, grid, args, meta | group_meta))
        first, count, step = sel.nb, n_groups, sm
    elif sm:
        first, count, step = 0, 0, sm
    else:
        first, count, step = 0, sel.nb, 1
    if count > 0:
        args = (*head, sbias, *scales, *strides, L, Hkv, sel.nsum, first, count, step, CHUNK)
        grid = (-(-count // SUM_T), -(-L // CHUNK), B * Hkv)
        out.append((suffix_dkv_kernel, grid, args, meta | {"SUM_T": SUM_T}))
    return out
