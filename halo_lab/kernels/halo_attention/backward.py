"""Backward kernels: a dQ pass owned by query tiles, then a dK/dV pass owned by key tiles.

dQ pass (same tiling as the forward): recomputes each edge's probability from the saved log-sum-exp,
writes dQ and delta = rowsum(dO * Out), and adds the gradients of the keys that many queries share (the
globals, and the random keys) into fp32 buffers with atomics. A tile's rows share a block-mode random key,
so the tile reduces over its rows first and issues one atomic per (tile, key); token-mode keys are added
row by row.

dK/dV pass: a program owns BLOCK_N keys of one (batch, KV head). The window queries of key j are
j .. j + W - 1 (tensor-core tiles, the group's query heads in turn) and its dilated queries are exactly
j + d (contiguous rows, a row-wise product): no atomics, no inverse index. It adds the atomic buffers
last and writes dK, dV once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.forward import mma

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def halo_bwd_dq_kernel(
    Q, K, V, Out, DO, DQ, LSE, DELTA, DKA, DVA, DIST, RAND,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_dob, stride_doh, stride_dol,
    stride_dqb, stride_dqh, stride_dql,
    stride_ru,
    L, HKV,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr, UNIT: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, SHARED_RANDOM: tl.constexpr,
):  # fmt: skip
    BLOCK_M: tl.constexpr = BLOCK_T * GRP
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    h = pid_bh % HKV
    t0 = pid_t * BLOCK_T
    rows = tl.arange(0, BLOCK_M)
    tok = t0 + rows // GRP
    head = h * GRP + rows % GRP
    cols = tl.arange(0, HD)
    row_ok = tok < L
    is_text = row_ok & (tok >= G)
    H = HKV * GRP

    q = tl.load(
        Q + b * stride_qb + head[:, None] * stride_qh + tok[:, None] * stride_ql + cols[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + head[:, None] * stride_doh + tok[:, None] * stride_dol + cols[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    o = tl.load(
        Out + b * stride_ob + head[:, None] * stride_oh + tok[:, None] * stride_ol + cols[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    qf, dof = q.to(tl.float32), do.to(tl.float32)
    delta = tl.sum(dof * o.to(tl.float32), 1)
    tl.store(DELTA + (b * H + head) * L + tok, delta, mask=row_ok)
    lse = tl.load(LSE + (b * H + head) * L + tok, mask=row_ok, other=0.0)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    acc_base = (b * HKV + h) * L * HD  # the fp32 buffers are contiguous [B, HKV, L, HD]
    dq = tl.zeros([BLOCK_M, HD], tl.float32)

    for g in tl.static_range(G):
        kg = tl.load(k_base + g * stride_kl + cols).to(tl.float32)
        vg = tl.load(v_base + g * stride_vl + cols).to(tl.float32)
        ok = row_ok & (tok >= g)
        p = tl.where(ok, tl.exp2(tl.sum(qf * kg[None, :], 1) * qk_scale - lse), 0.0)
        ds = p * (tl.sum(dof * vg[None, :], 1) - delta)
        dq += ds[:, None] * kg[None, :]
        tl.atomic_add(DKA + acc_base + g * HD + cols, tl.sum(ds[:, None] * qf, 0) * sm_scale)
        tl.atomic_add(DVA + acc_base + g * HD + cols, tl.sum(p[:, None] * dof, 0))

    for e in tl.static_range(ND):
        kp = tok - tl.load(DIST + e)
        ok = is_text & (kp >= G)
        kr = tl.load(k_base + kp[:, None] * stride_kl + cols[None, :], mask=ok[:, None], other=0.0)
        vr = tl.load(v_base + kp[:, None] * stride_vl + cols[None, :], mask=ok[:, None], other=0.0)
        kr = kr.to(tl.float32)
        p = tl.where(ok, tl.exp2(tl.sum(qf * kr, 1) * qk_scale - lse), 0.0)
        ds = p * (tl.sum(dof * vr.to(tl.float32), 1) - delta)
        dq += ds[:, None] * kr

    for e in tl.static_range(NR):
        if SHARED_RANDOM:  # the whole tile lies in one unit: one key for every row
            kp1 = tl.load(RAND + (t0 // UNIT) * stride_ru + e)
            kp = tl.full([BLOCK_M], 0, tl.int32) + kp1
        else:
            kp = tl.load(RAND + (tok // UNIT) * stride_ru + e, mask=is_text, other=-1)
        ok = is_text & (kp >= 0)
        for e2 in tl.static_range(ND):
            ok = ok & (tok - kp != tl.load(DIST + e2))
        kr = tl.load(k_base + kp[:, None] * stride_kl + cols[None, :], mask=ok[:, None], other=0.0)
        vr = tl.load(v_base + kp[:, None] * stride_vl + cols[None, :], mask=ok[:, None], other=0.0)
        kr = kr.to(tl.float32)
        p = tl.where(ok, tl.exp2(tl.sum(qf * kr, 1) * qk_scale - lse), 0.0)
        ds = p * (tl.sum(dof * vr.to(tl.float32), 1) - delta)
        dq += ds[:, None] * kr
        if SHARED_RANDOM:
            hit = (cols * 0 + kp1) >= 0
            ptr = acc_base + kp1 * HD + cols
            tl.atomic_add(DKA + ptr, tl.sum(ds[:, None] * qf, 0) * sm_scale, mask=hit)
            tl.atomic_add(DVA + ptr, tl.sum(p[:, None] * dof, 0), mask=hit)
        else:
            ptr = acc_base + kp[:, None] * HD + cols[None, :]
            tl.atomic_add(DKA + ptr, ds[:, None] * qf * sm_scale, mask=ok[:, None])
            tl.atomic_add(DVA + ptr, p[:, None] * dof, mask=ok[:, None])

    lo = tl.maximum(t0 - W + 1, G)
    hi = tl.minimum(t0 + BLOCK_T, L)
    for start in range(lo, hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        kmask = kpos < hi
        kt = tl.load(k_base + kpos[:, None] * stride_kl + cols[None, :], mask=kmask[:, None], other=0.0)
        vt = tl.load(v_base + kpos[:, None] * stride_vl + cols[None, :], mask=kmask[:, None], other=0.0)
        sw = mma(q, tl.trans(kt), IEEE, UPCAST)
        dpw = mma(do, tl.trans(vt), IEEE, UPCAST)
        dw = tok[:, None] - kpos[None, :]
        okw = is_text[:, None] & kmask[None, :] & (dw >= 0) & (dw < W)
        pw = tl.where(okw, tl.exp2(sw * qk_scale - lse[:, None]), 0.0)
        dsw = pw * (dpw - delta[:, None])
        dq += mma(dsw.to(kt.dtype), kt, IEEE, UPCAST)

    tl.store(
        DQ + b * stride_dqb + head[:, None] * stride_dqh + tok[:, None] * stride_dql + cols[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


@triton.jit
def halo_bwd_dkv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, DKA, DVA, DIST,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dkb, stride_dkh, stride_dkl,
    stride_dvb, stride_dvh, stride_dvl,
    L, HKV,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    # query tiles pack the group's heads like the forward: BLOCK_Q positions x GRP heads = QROWS rows
    QROWS: tl.constexpr = BLOCK_Q * GRP
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
    dk = tl.zeros([BLOCK_N, HD], tl.float32)
    dv = tl.zeros([BLOCK_N, HD], tl.float32)

    # dilated queries of key j: j + d, one per key, for each head of the group
    kf, vf = kt.to(tl.float32), vt.to(tl.float32)
    for e in tl.static_range(ND):
        qp = kpos + tl.load(DIST + e)
        ok = k_text & (qp < L)
        for g in tl.static_range(GRP):
            head = h * GRP + g
            qr = tl.load(
                Q + b * stride_qb + head * stride_qh + qp[:, None] * stride_ql + cols[None, :],
                mask=ok[:, None],
                other=0.0,
            ).to(tl.float32)
            dor = tl.load(
                DO + b * stride_dob + head * stride_doh + qp[:, None] * stride_dol + cols[None, :],
                mask=ok[:, None],
                other=0.0,
            ).to(tl.float32)
            lse = tl.load(LSE + (b * H + head) * L + qp, mask=ok, other=0.0)
            delta = tl.load(DELTA + (b * H + head) * L + qp, mask=ok, other=0.0)
            p = tl.where(ok, tl.exp2(tl.sum(qr * kf, 1) * qk_scale - lse), 0.0)
            ds = p * (tl.sum(dor * vf, 1) - delta)
            dk += ds[:, None] * qr
            dv += p[:, None] * dor

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
        dv += mma(tl.trans(pw.to(dot_.dtype)), dot_, IEEE, UPCAST)
        dk += mma(tl.trans(dsw.to(qt.dtype)), qt, IEEE, UPCAST)

    acc = (b * HKV + h) * L * HD + kpos[:, None] * HD + cols[None, :]
    dk = dk * sm_scale + tl.load(DKA + acc, mask=kmask[:, None], other=0.0)
    dv = dv + tl.load(DVA + acc, mask=kmask[:, None], other=0.0)
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
