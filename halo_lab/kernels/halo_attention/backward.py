"""Backward kernels: a dQ pass owned by query tiles, then a dK/dV pass owned by key tiles.

dQ pass (the forward's tiles): recomputes each edge's probability from the saved log-sum-exp, writes dQ
and delta = rowsum(dO * O), and computes the dK/dV of every key outside the window with one
tensor-core product per key tile:

* dilated: keys t0 - d .. t0 - d + BLOCK_T - 1 receive distance d from this query tile only, so the
  tile stores them into a per-distance buffer (in the key dtype; [D, B, HKV, L, HD]): no atomics. On the
  H200 fp32 atomics for these cost more than the rest of the pass (852 us vs ~0.2 ms, N = 1K);
* globals and random keys (shared by many tiles): fp32 atomics into one [B, HKV, L, HD] buffer, a
  [16, HD] block per tile for the shared tile. Their order varies, so these gradients are reproducible
  to fp32 rounding, not bit for bit;
* content-selected blocks (SEL): the chosen keys' into that same buffer, the summaries' into their own
  fp32 [B, HKV, S, HD] buffers (selected.py), both only where SEL_KG / SUM_KG is 0: by default passes that
  own those keys compute them after this one (chosen_dkv.py, summary_dkv.py); with the summary bias (SUMB) its gradient, the sum of the
  summaries' score gradients, into a [B, HKV] fp32 buffer (one atomic per query tile); with the token bias
  (TOKB) the chosen keys' probabilities carry it (``lse - shift``, as the summaries'), and its gradient,
  the sum of the kept chosen keys' score gradients, goes to its own [B, HKV] fp32 buffer the same way.

dK/dV pass: a program owns BLOCK_N keys of one (batch, KV head); their window queries j .. j + W - 1
come in tiles packed like the forward's (BLOCK_Q positions x GRP heads). It adds the fp32 buffers last
and writes dK, dV once. With the extras in the dQ pass it is a plain banded attention backward.
"""

from __future__ import annotations

import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.common import LOG2E, load_query_rows, load_rows, mma
from halo_lab.kernels.halo_attention.dilated import dilated_backward
from halo_lab.kernels.halo_attention.forward import query_tile, shared_keys, token_random_keys
from halo_lab.kernels.halo_attention.selected import (
    block_summary_tile,
    candidates,
    chosen_block_tile,
    chosen_group_blocks_tile,
    group_summary_tile,
    loose_blocks_start,
    loose_blocks_tile,
)


@triton.jit
def grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Probabilities p and score gradients ds [BLOCK_M, N] of one key tile."""
    p = tl.where(ok, tl.exp2(mma(q, tl.trans(kt), IEEE, UPCAST) * qk_scale - lse[:, None]), 0.0)
    ds = p * (mma(do, tl.trans(vt), IEEE, UPCAST) - delta[:, None])
    return p, ds


@triton.jit
def add_key_grads(DKA, DVA, base, pos, valid, ok, q, do, p, ds, sm_scale, cols,
                  IEEE: tl.constexpr, UPCAST: tl.constexpr, KG: tl.constexpr):  # fmt: skip
    """dK, dV of one key tile (rows ``pos``) from this query tile, added to the fp32 buffers: only the keys
    that are an edge of some row of the tile (``ok`` [BLOCK_M, N]; the others' are zeros), since the
    atomics of many tiles on the same rows are what this pass waits for. KG (``SEL_KG`` for the chosen
    keys, ``SUM_KG`` for the summaries): 0 atomics; 1 plain stores and 2 nothing are timing probes of
    kernel_tune.py (wrong dK/dV: what the atomics, and the products with them, cost); 3 nothing: the
    chosen keys' come from chosen_dkv.py, the summaries' from summary_dkv.py."""
    if KG < 2:
        dk = mma(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST) * sm_scale
        dv = mma(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
        used = valid & (tl.sum(ok.to(tl.int32), 0) > 0)
        ptr = base + tl.where(used, pos, 0)[:, None] * cols.shape[0] + cols[None, :]
        if KG == 0:
            tl.atomic_add(DKA + ptr, dk, mask=used[:, None])
            tl.atomic_add(DVA + ptr, dv, mask=used[:, None])
        else:
            tl.store(DKA + ptr, dk, mask=used[:, None])
            tl.store(DVA + ptr, dv, mask=used[:, None])


@triton.jit
def store_dilated_grads(
    DKD, DVD, ptr, valid, q, do, p, ds, sm_scale, IEEE: tl.constexpr, UPCAST: tl.constexpr
):
    """dK, dV of dilated keys: key t0 - d + i gets distance d only from this query tile, so a plain
    store into the per-distance buffers (no atomics)."""
    dk = mma(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST) * sm_scale
    tl.store(DKD + ptr, dk.to(DKD.dtype.element_ty), mask=valid[:, None])
    dv = mma(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
    tl.store(DVD + ptr, dv.to(DVD.dtype.element_ty), mask=valid[:, None])


@triton.jit
def key_tile_grads(q, do, lse, delta, dq, dbias, k_base, v_base, DKB, DVB, buf_base, rows, valid, ok,
                   stride_kl, stride_vl, cols, qk_scale, sm_scale, BIASED: tl.constexpr, IEEE: tl.constexpr,
                   UPCAST: tl.constexpr, KG: tl.constexpr):  # fmt: skip
    """One key tile of the selected part (``rows``: chosen keys, or block / group summaries): dQ, the keys'
    dK/dV into the fp32 buffers ``DKB``/``DVB``, and with BIASED the gradient of their bias (the tile's dS
    summed; ``lse`` already shifted by it)."""
    kt = load_rows(k_base, rows, valid, stride_kl, cols)
    vt = load_rows(v_base, rows, valid, stride_vl, cols)
    p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
    dq += mma(ds.to(kt.dtype), kt, IEEE, UPCAST)
    add_key_grads(DKB, DVB, buf_base, rows, valid, ok, q, do, p, ds, sm_scale, cols, IEEE, UPCAST, KG)
    if BIASED:
        dbias += tl.sum(ds)
    return dq, dbias


@triton.jit
def chosen_backward(q, do, lse, delta, dq, k_base, v_base, DKA, DVA, TB, TBN, BLK, RAND, DIST, tile, bh, L,
                    tok, is_text, cols, acc_base, stride_kl, stride_vl, stride_ru, UMAX, qk_scale, sm_scale,
                    tbias_ptr, dtbias_ptr,
                    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr,
                    UNIT: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr, BPT: tl.constexpr, NSELP: tl.constexpr,
                    TOKB: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, KG: tl.constexpr):  # fmt: skip
    """dQ of the tile's chosen blocks (selected.py), their keys' dK/dV into the extras' fp32 buffers. TOKB:
    the kept chosen keys' scores carry the KV head's token bias (``tbias_ptr``), whose gradient, the sum of
    their score gradients, this tile adds to ``dtbias_ptr`` (one fp32 atomic)."""
    lse_t = lse  # exp2(score + shift - lse) = exp2(score - (lse - shift))
    dtbias = tl.zeros([1], tl.float32)
    if TOKB:
        lse_t = lse - tl.load(tbias_ptr).to(tl.float32) * LOG2E
    for u in range(0, tl.load(TBN + tile), BPT):
        pos, valid, ok = chosen_block_tile(
            u, tile * UMAX, bh * L * NSELP, tok, is_text, RAND, DIST, stride_ru, TB, BLK, UMAX,
            G, W, ND, NR, UNIT, SB, SBP, NSELP, BPT,
        )  # fmt: skip
        dq, dtbias = key_tile_grads(
            q, do, lse_t, delta, dq, dtbias, k_base, v_base, DKA, DVA, acc_base, pos, valid, ok,
            stride_kl, stride_vl, cols, qk_scale, sm_scale, TOKB, IEEE, UPCAST, KG,
        )  # fmt: skip
    if TOKB:
        tl.atomic_add(dtbias_ptr + tl.arange(0, 1), dtbias)
    return dq


@triton.jit
def selected_backward(q, do, lse, delta, dq, k_base, v_base, sk_base, sv_base, DKA, DVA, DSK, DSV,
                      TB, TBN, TG, TGN, BLK, GRPS, RAND, DIST, tile, bh, L, tok, is_text, cols, acc_base,
                      stride_kl, stride_vl, stride_skl, stride_ru, UMAX, UGMAX, NB, NSUM, qk_scale,
                      sm_scale, bias_ptr, dbias_ptr, tbias_ptr, dtbias_ptr,
                      G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr,
                      UNIT: tl.constexpr, HD: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr,
                      BPT: tl.constexpr, NSELP: tl.constexpr, SM: tl.constexpr, SMP: tl.constexpr,
                      GPT: tl.constexpr, NG2P: tl.constexpr,
                      SUMK: tl.constexpr,
                      SUM_N: tl.constexpr, SUMB: tl.constexpr, TOKB: tl.constexpr, IEEE: tl.constexpr,
                      UPCAST: tl.constexpr, KG: tl.constexpr, KS: tl.constexpr):  # fmt: skip
    """dQ of the content-selected key groups of a query tile (the forward's tiles, selected.py), with the
    chosen keys' dK/dV added to the extras' fp32 buffers (KG: ``SEL_KG``) and the summaries' to their own
    (KS: ``SUM_KG``; ``bh``: b * HKV + h). SUMB: the summaries' scores carry the KV head's bias
    (``bias_ptr``), whose gradient, the sum of their score gradients, this tile adds to ``dbias_ptr`` (one
    fp32 atomic). TOKB: the same for the kept chosen keys and the KV head's token bias (``tbias_ptr``,
    ``dtbias_ptr``; ``chosen_backward``)."""
    dq = chosen_backward(
        q, do, lse, delta, dq, k_base, v_base, DKA, DVA, TB, TBN, BLK, RAND, DIST, tile, bh, L, tok, is_text,
        cols, acc_base, stride_kl, stride_vl, stride_ru, UMAX, qk_scale, sm_scale, tbias_ptr, dtbias_ptr,
        G, W, ND, NR, UNIT, SB, SBP, BPT, NSELP, TOKB, IEEE, UPCAST, KG,
    )  # fmt: skip
    if SUMK:
        c = candidates(tok, is_text, G, W, SB)
        c_hi = tl.max(c, 0)
        sum_base = bh * NSUM * HD  # the fp32 buffers are contiguous [B, HKV, S, HD]
        lse_s = lse  # exp2(score + shift - lse) = exp2(score - (lse - shift))
        dbias = tl.zeros([1], tl.float32)
        if SUMB:
            lse_s = lse - tl.load(bias_ptr).to(tl.float32) * LOG2E
        if SM == 0:
            for start in range(0, c_hi, SUM_N):
                j, ok = block_summary_tile(start, c, is_text, SUM_N)
                dq, dbias = key_tile_grads(
                    q, do, lse_s, delta, dq, dbias, sk_base, sv_base, DSK, DSV, sum_base, j, j < NB, ok,
                    stride_skl, stride_skl, cols, qk_scale, sm_scale, SUMB, IEEE, UPCAST, KS,
                )  # fmt: skip
        else:
            for u in range(0, tl.load(TGN + tile), GPT):  # the blocks of the groups the rows chose
                j, valid, ok = chosen_group_blocks_tile(
                    u, tile * UGMAX, bh * L * NG2P, tok, is_text, TG, GRPS, UGMAX, SM, SMP, NG2P, GPT
                )
                dq, dbias = key_tile_grads(
                    q, do, lse_s, delta, dq, dbias, sk_base, sv_base, DSK, DSV, sum_base, j, valid, ok,
                    stride_skl, stride_skl, cols, qk_scale, sm_scale, SUMB, IEEE, UPCAST, KS,
                )  # fmt: skip
            for start in range(loose_blocks_start(c, is_text, SM), c_hi, SUM_N):  # those past the groups
                j, ok = loose_blocks_tile(start, c, is_text, SM, SUM_N)
                dq, dbias = key_tile_grads(
                    q, do, lse_s, delta, dq, dbias, sk_base, sv_base, DSK, DSV, sum_base, j, j < NB, ok,
                    stride_skl, stride_skl, cols, qk_scale, sm_scale, SUMB, IEEE, UPCAST, KS,
                )  # fmt: skip
            for start in range(0, c_hi // SM, SUM_N):
                j, ok = group_summary_tile(start, c, is_text, NB, SM, SUM_N)
                dq, dbias = key_tile_grads(
                    q, do, lse_s, delta, dq, dbias, sk_base, sv_base, DSK, DSV, sum_base, j, j < NSUM, ok,
                    stride_skl, stride_skl, cols, qk_scale, sm_scale, SUMB, IEEE, UPCAST, KS,
                )  # fmt: skip
        if SUMB:
            tl.atomic_add(dbias_ptr + tl.arange(0, 1), dbias)
    return dq


@triton.jit
def halo_bwd_dq_kernel(
    Q, K, V, Out, DO, DQ, LSE, DELTA, DKA, DVA, DKD, DVD, DIST, RAND,
    SK, SV, DSK, DSV, BLK, GRPS, TB, TBN, TG, TGN,  # the content-selected part (SEL; selected.py)
    SBIAS, DBIAS,  # [HKV] the summary bias, [B, HKV] fp32 its gradient (SUMB; else never read)
    TBIAS, DTBIAS,  # [HKV] the chosen tokens' bias, [B, HKV] fp32 its gradient (TOKB; else never read)
    qk_scale, sm_scale, dil_stride,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_dob, stride_doh, stride_dol,
    stride_dqb, stride_dqh, stride_dql,
    stride_ru,
    stride_skb, stride_skh, stride_skl,
    L, HKV, NT, UMAX, UGMAX, NB, NSUM,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr, UNIT: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    SHARED_N: tl.constexpr, RAND_N: tl.constexpr, SHARED_RANDOM: tl.constexpr,
    DIL_GROUPED: tl.constexpr, DIL_P: tl.constexpr, DIL_K: tl.constexpr, DIL_NG: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
    SEL: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr, BPT: tl.constexpr, NSELP: tl.constexpr,
    SM: tl.constexpr,
    SMP: tl.constexpr, GPT: tl.constexpr, NG2P: tl.constexpr, SUMK: tl.constexpr, SUM_N: tl.constexpr,
    SUMB: tl.constexpr,
    TOKB: tl.constexpr,
    SEL_KG: tl.constexpr,  # the chosen keys' dK/dV: 0 atomics, 3 by chosen_dkv.py (1, 2: probes; add_key_grads)
    SUM_KG: tl.constexpr,  # the summaries' dK/dV: 0 atomics, 3 by summary_dkv.py (1, 2: probes)
):  # fmt: skip
    BLOCK_M: tl.constexpr = BLOCK_T * GRP
    NRS: tl.constexpr = NR if SHARED_RANDOM else 0
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under Inductor
    b = tl.program_id(1) // HKV
    h = tl.program_id(1) % HKV
    t0, tok, head, cols, row_ok, is_text = query_tile(tl.program_id(0), h, L, G, GRP, BLOCK_T, HD)
    H = HKV * GRP
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    acc_base = (b * HKV + h) * L * HD  # the fp32 buffers are contiguous [B, HKV, L, HD]
    if DIL_GROUPED and ND > 0:  # first: its grouped rows are not live beside the 2-D tiles (dilated.py)
        dq = dilated_backward(
            Q, Out, DO, LSE, DKD, DVD, k_base, v_base, DIST, b, h, t0, L, qk_scale, sm_scale, dil_stride,
            acc_base, stride_qb, stride_qh, stride_ql, stride_ob, stride_oh, stride_ol,
            stride_dob, stride_doh, stride_dol, stride_kl, stride_vl,
            H, G, ND, GRP, HD, DIL_P, DIL_K, DIL_NG, IEEE, UPCAST,
        )  # fmt: skip
    else:
        dq = tl.zeros([BLOCK_M, HD], tl.float32)

    q = load_query_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
    do = load_query_rows(DO, b, head, tok, stride_dob, stride_doh, stride_dol, cols, row_ok)
    o = load_query_rows(Out, b, head, tok, stride_ob, stride_oh, stride_ol, cols, row_ok)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + (b * H + head) * L + tok, delta, mask=row_ok)
    lse = tl.load(LSE + (b * H + head) * L + tok, mask=row_ok, other=0.0)

    if G + NRS > 0:
        pos, valid, ok = shared_keys(
            t0, tl.arange(0, SHARED_N), tok, row_ok, is_text, RAND, DIST, stride_ru, G, NRS, ND, UNIT
        )
        kt = load_rows(k_base, pos, valid, stride_kl, cols)
        vt = load_rows(v_base, pos, valid, stride_vl, cols)
        p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
        dq += mma(ds.to(kt.dtype), kt, IEEE, UPCAST)
        add_key_grads(  # nearly every key of these tiles is an edge of some row: no mask computed
            DKA, DVA, acc_base, pos, valid, valid[None, :], q, do, p, ds, sm_scale, cols, IEEE, UPCAST, 0
        )

    if not DIL_GROUPED:
        diag = tl.arange(0, BLOCK_T)
        for e in tl.static_range(ND):
            dist = tl.load(DIST + e)
            kpos = t0 - dist + diag
            valid = (kpos >= G) & (kpos < L)
            kt = load_rows(k_base, kpos, valid, stride_kl, cols)
            vt = load_rows(v_base, kpos, valid, stride_vl, cols)
            ok = (tok[:, None] - kpos[None, :] == dist) & valid[None, :] & is_text[:, None]
            p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
            dq += mma(ds.to(kt.dtype), kt, IEEE, UPCAST)
            ptr = e * dil_stride + acc_base + tl.where(valid, kpos, 0)[:, None] * HD + cols[None, :]
            store_dilated_grads(DKD, DVD, ptr, valid, q, do, p, ds, sm_scale, IEEE, UPCAST)

    if NR > 0 and not SHARED_RANDOM:
        pos, valid, ok = token_random_keys(
            t0, tl.arange(0, RAND_N), tok, is_text, RAND, DIST, stride_ru, L, NR, ND, UNIT, BLOCK_T
        )
        kt = load_rows(k_base, pos, valid, stride_kl, cols)
        vt = load_rows(v_base, pos, valid, stride_vl, cols)
        p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
        dq += mma(ds.to(kt.dtype), kt, IEEE, UPCAST)
        add_key_grads(  # nearly every key of these tiles is an edge of some row: no mask computed
            DKA, DVA, acc_base, pos, valid, valid[None, :], q, do, p, ds, sm_scale, cols, IEEE, UPCAST, 0
        )

    lo = tl.maximum(t0 - W + 1, G)
    hi = tl.minimum(t0 + BLOCK_T, L)
    for start in range(lo, hi, BLOCK_N):
        kpos_w = start + tl.arange(0, BLOCK_N)
        kmask = kpos_w < hi
        kt_w = load_rows(k_base, kpos_w, kmask, stride_kl, cols)
        vt_w = load_rows(v_base, kpos_w, kmask, stride_vl, cols)
        dw = tok[:, None] - kpos_w[None, :]
        ok_w = is_text[:, None] & kmask[None, :] & (dw >= 0) & (dw < W)
        p_w, ds_w = grad_tile(q, do, lse, delta, kt_w, vt_w, ok_w, qk_scale, IEEE, UPCAST)
        dq += mma(ds_w.to(kt_w.dtype), kt_w, IEEE, UPCAST)

    if SEL:
        dq = selected_backward(
            q, do, lse, delta, dq, k_base, v_base, SK + b * stride_skb + h * stride_skh,
            SV + b * stride_skb + h * stride_skh, DKA, DVA, DSK, DSV, TB, TBN, TG, TGN, BLK, GRPS, RAND,
            DIST,
            (b * HKV + h) * NT + tl.program_id(0), b * HKV + h, L, tok, is_text, cols, acc_base,
            stride_kl, stride_vl, stride_skl, stride_ru, UMAX, UGMAX, NB, NSUM, qk_scale, sm_scale,
            SBIAS + h, DBIAS + b * HKV + h, TBIAS + h, DTBIAS + b * HKV + h,
            G, W, ND, NR, UNIT, HD, SB, SBP, BPT, NSELP, SM, SMP, GPT, NG2P, SUMK, SUM_N, SUMB, TOKB, IEEE,
            UPCAST, SEL_KG, SUM_KG,
        )  # fmt: skip

    tl.store(
        DQ + b * stride_dqb + head[:, None] * stride_dqh + tok[:, None] * stride_dql + cols[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


@triton.jit
def halo_bwd_dkv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, DKA, DVA, DKD, DVD, DIST,
    qk_scale, sm_scale, dil_stride,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dkb, stride_dkh, stride_dkl,
    stride_dvb, stride_dvh, stride_dvl,
    L, HKV,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
    KEYS_AS_N: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    # query tiles pack the group's heads like the forward: BLOCK_Q positions x GRP heads = QROWS rows
    QROWS: tl.constexpr = BLOCK_Q * GRP
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under Inductor
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    h = pid_bh % HKV
    H = HKV * GRP
    j0 = pid_n * BLOCK_N
    kpos = j0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, HD)
    kmask = kpos < L
    k_text = kmask & (kpos >= G)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    kt = tl.load(k_base + kpos[:, None] * stride_kl + cols[None, :], mask=kmask[:, None], other=0.0)
    vt = tl.load(v_base + kpos[:, None] * stride_vl + cols[None, :], mask=kmask[:, None], other=0.0)
    # KEYS_AS_N: dK^T, dV^T [HD, BLOCK_N] = q^T ds, dO^T p keep M = HD rows in their products, so a key
    # tile narrower than a warpgroup's 64 rows still gets full tensor-core shapes
    if KEYS_AS_N:
        dk = tl.zeros([HD, BLOCK_N], tl.float32)
        dv = tl.zeros([HD, BLOCK_N], tl.float32)
    else:
        dk = tl.zeros([BLOCK_N, HD], tl.float32)
        dv = tl.zeros([BLOCK_N, HD], tl.float32)

    # window queries of key j: j .. j + W - 1
    qrow = tl.arange(0, QROWS)
    qhead = h * GRP + qrow % GRP
    lo = tl.maximum(j0, G)
    hi = tl.minimum(j0 + BLOCK_N + W - 1, L)
    for start in range(lo, hi, BLOCK_Q):
        qpos = start + qrow // GRP
        qmask = qpos < hi
        dw = qpos[:, None] - kpos[None, :]
        okw = qmask[:, None] & k_text[None, :] & (dw >= 0) & (dw < W)
        qt = tl.load(
            Q + b * stride_qb + qhead[:, None] * stride_qh + qpos[:, None] * stride_ql + cols[None, :],
            mask=qmask[:, None],
            other=0.0,
        )
        dot_ = tl.load(
            DO + b * stride_dob + qhead[:, None] * stride_doh + qpos[:, None] * stride_dol + cols[None, :],
            mask=qmask[:, None],
            other=0.0,
        )
        lsew = tl.load(LSE + (b * H + qhead) * L + qpos, mask=qmask, other=0.0)
        deltaw = tl.load(DELTA + (b * H + qhead) * L + qpos, mask=qmask, other=0.0)
        sw = mma(qt, tl.trans(kt), IEEE, UPCAST)
        dpw = mma(dot_, tl.trans(vt), IEEE, UPCAST)
        pw = tl.where(okw, tl.exp2(sw * qk_scale - lsew[:, None]), 0.0)
        dsw = pw * (dpw - deltaw[:, None])
        if KEYS_AS_N:
            dv += mma(tl.trans(dot_), pw.to(dot_.dtype), IEEE, UPCAST)
            dk += mma(tl.trans(qt), dsw.to(qt.dtype), IEEE, UPCAST)
        else:
            dv += mma(tl.trans(pw.to(dot_.dtype)), dot_, IEEE, UPCAST)
            dk += mma(tl.trans(dsw.to(qt.dtype)), qt, IEEE, UPCAST)

    if KEYS_AS_N:
        dk, dv = tl.trans(dk), tl.trans(dv)

    acc = (b * HKV + h) * L * HD + kpos[:, None] * HD + cols[None, :]
    dk = dk * sm_scale + tl.load(DKA + acc, mask=kmask[:, None], other=0.0)
    dv = dv + tl.load(DVA + acc, mask=kmask[:, None], other=0.0)
    for e in tl.static_range(ND):  # written by the dQ pass wherever the dilated query j + d exists
        has = k_text & (kpos + tl.load(DIST + e) < L)
        dk += tl.load(DKD + e * dil_stride + acc, mask=has[:, None], other=0.0).to(tl.float32)
        dv += tl.load(DVD + e * dil_stride + acc, mask=has[:, None], other=0.0).to(tl.float32)
    tl.store(
        DK + b * stride_dkb + h * stride_dkh + kpos[:, None] * stride_dkl + cols[None, :],
        dk.to(DK.dtype.element_ty),
        mask=kmask[:, None],
    )
    tl.store(
        DV + b * stride_dvb + h * stride_dvh + kpos[:, None] * stride_dvl + cols[None, :],
        dv.to(DV.dtype.element_ty),
        mask=kmask[:, None],
    )
