"""Forward kernel: every edge of the HALO graph in one online softmax.

One program owns BLOCK_T consecutive positions of one (batch, KV head) and packs the GRP query heads of
that KV head into the rows of one tile (BLOCK_M = BLOCK_T * GRP rows, row r = position r // GRP, head
r % GRP), so each K/V tile is loaded once per group and the matmuls keep M = BLOCK_M.

* window: keys [t0 - W + 1, t0 + BLOCK_T) in BLOCK_N tiles through ``tl.dot``; the band mask does the rest;
* globals, dilated and random keys: one key per row, loaded by position, a row-wise product (they are
  ~10% of the FLOPs, so CUDA cores suffice; dilated keys of consecutive rows are consecutive rows of K);
* softmax in base 2 (scores pre-multiplied by log2 e); the kernel writes the output and the row's
  log-sum-exp (base 2), which the backward needs.
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def mma(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; exact fp32 (no tf32) for fp32 inputs. UPCAST: Triton's CPU
    interpreter computes bf16/fp16 dots wrongly, so there the operands go through fp32 (same values)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def online_row_update(m, denom, acc, s, v):
    """Add one key per row (scores s [M], values v [M, HD]) to the running softmax state."""
    m_new = tl.maximum(m, s)
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new)
    return m_new, denom * alpha + p, acc * alpha[:, None] + p[:, None] * v


@triton.jit
def halo_fwd_kernel(
    Q, K, V, Out, LSE, DIST, RAND,
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_ru,
    L, HKV,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr, UNIT: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
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

    q = tl.load(
        Q + b * stride_qb + head[:, None] * stride_qh + tok[:, None] * stride_ql + cols[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    qf = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m = tl.full([BLOCK_M], -1e30, tl.float32)  # finite: a row with no key yet must not produce NaN
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HD], tl.float32)

    # globals: text rows see all of them, global row g sees globals 0..g
    for g in tl.static_range(G):
        kg = tl.load(k_base + g * stride_kl + cols).to(tl.float32)
        vg = tl.load(v_base + g * stride_vl + cols).to(tl.float32)
        s = tl.sum(qf * kg[None, :], 1) * qk_scale
        s = tl.where(row_ok & (tok >= g), s, NEG_INF)
        m, denom, acc = online_row_update(m, denom, acc, s, vg[None, :])

    # dilated: key tok - d, text to text
    for e in tl.static_range(ND):
        kp = tok - tl.load(DIST + e)
        ok = is_text & (kp >= G)
        kr = tl.load(k_base + kp[:, None] * stride_kl + cols[None, :], mask=ok[:, None], other=0.0)
        vr = tl.load(v_base + kp[:, None] * stride_vl + cols[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(qf * kr.to(tl.float32), 1) * qk_scale, NEG_INF)
        m, denom, acc = online_row_update(m, denom, acc, s, vr.to(tl.float32))

    # random: from the table; in block mode a key equal to the row's dilated key is that edge already
    for e in tl.static_range(NR):
        kp = tl.load(RAND + (tok // UNIT) * stride_ru + e, mask=is_text, other=-1)
        ok = is_text & (kp >= 0)
        for e2 in tl.static_range(ND):
            ok = ok & (tok - kp != tl.load(DIST + e2))
        kr = tl.load(k_base + kp[:, None] * stride_kl + cols[None, :], mask=ok[:, None], other=0.0)
        vr = tl.load(v_base + kp[:, None] * stride_vl + cols[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(qf * kr.to(tl.float32), 1) * qk_scale, NEG_INF)
        m, denom, acc = online_row_update(m, denom, acc, s, vr.to(tl.float32))

    # window: text keys tok - W + 1 .. tok, as tensor-core tiles
    lo = tl.maximum(t0 - W + 1, G)
    hi = tl.minimum(t0 + BLOCK_T, L)
    for start in range(lo, hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        kmask = kpos < hi
        kt = tl.load(k_base + kpos[:, None] * stride_kl + cols[None, :], mask=kmask[:, None], other=0.0)
        vt = tl.load(v_base + kpos[:, None] * stride_vl + cols[None, :], mask=kmask[:, None], other=0.0)
        sw = mma(q, tl.trans(kt), IEEE, UPCAST)
        dw = tok[:, None] - kpos[None, :]
        okw = is_text[:, None] & kmask[None, :] & (dw >= 0) & (dw < W)
        sw = tl.where(okw, sw * qk_scale, NEG_INF)
        m_new = tl.maximum(m, tl.max(sw, 1))
        alpha = tl.exp2(m - m_new)
        pw = tl.exp2(sw - m_new[:, None])
        denom = denom * alpha + tl.sum(pw, 1)
        pv = mma(pw.to(vt.dtype), vt, IEEE, UPCAST)
        acc = acc * alpha[:, None] + pv
        m = m_new

    l_safe = tl.where(denom > 0, denom, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        Out + b * stride_ob + head[:, None] * stride_oh + tok[:, None] * stride_ol + cols[None, :],
        out.to(Out.dtype.element_ty),
        mask=row_ok[:, None],
    )
    H = HKV * GRP
    tl.store(LSE + (b * H + head) * L + tok, m + tl.log2(l_safe), mask=row_ok)
