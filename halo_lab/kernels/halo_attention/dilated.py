"""The dilated keys of a query tile as a batch of small tensor-core products (forward and dQ pass).

Each text position t has one key at every dilated distance d (t - d). A [BLOCK_M, BLOCK_T] tile per
distance computes BLOCK_T keys per row for one that is used (1 in 32 at BLOCK_T = 32). Here the tile's
rows are cut into NG groups of DIL_P positions x GRP heads (DIL_ROWS = 16 rows, the smallest product);
a group's keys are its DIL_P positions at every distance (DIL_K = DIL_P x ND columns, padded to 16), so
one batched ``tl.dot`` of [NG, 16, HD] x [NG, HD, DIL_K] covers all distances, and a row keeps ND of
DIL_K columns (4 in 16 in the bench's setting: 8x less computed work than the per-distance tiles).

Column j of group g is key position t0 + g * DIL_P + j % DIL_P - d[j // DIL_P]. The forward returns
the softmax state of the dilated keys alone (it seeds the online softmax of the other groups); the dQ
pass returns the dilated keys' dQ and stores their dK/dV into the per-distance buffers (key t0 - d + i
receives distance d from one query row only, so plain stores, no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.common import mma


@triton.jit
def group_rows(t0, h, L, G: tl.constexpr, GRP: tl.constexpr, DIL_P: tl.constexpr, NG: tl.constexpr):
    """Positions [NG, DIL_ROWS], heads [1, DIL_ROWS] and row masks of the grouped query rows (row
    g * DIL_ROWS + i of the 2-D tile)."""
    g = tl.arange(0, NG)[:, None]
    i = tl.arange(0, DIL_P * GRP)[None, :]
    tok = t0 + g * DIL_P + i // GRP
    row_ok = tok < L
    return tok, h * GRP + i % GRP, row_ok, row_ok & (tok >= G)


@triton.jit
def load_rows3(base, pos, valid, stride, cols):
    """[NG, N, HD] rows ``pos`` [NG, N] of a [L, HD] matrix (zeros where not valid)."""
    pos = tl.where(valid, pos, 0)
    return tl.load(base + pos[:, :, None] * stride + cols[None, None, :], mask=valid[:, :, None], other=0.0)


@triton.jit
def group_keys(t0, DIST, L, G: tl.constexpr, ND: tl.constexpr, DIL_P: tl.constexpr, DIL_K: tl.constexpr,
               NG: tl.constexpr, GRP: tl.constexpr, is_text):  # fmt: skip
    """Distance index [1, DIL_K], positions and validity [NG, DIL_K] of each group's dilated keys, and
    the [NG, DIL_ROWS, DIL_K] edge mask (a row keeps the columns of its own position).

    No K or V pointer comes in: the dQ pass stores at addresses made from these results, and
    torch's analysis of a traced kernel (``wrap_triton``) counts every argument of a call whose result
    reaches a store's address as written; a K here made compiled training fail (a leaf written in the
    backward, issue 29's CUDA test run of 2026-12-05). The key and value rows: ``load_rows3``."""
    g = tl.arange(0, NG)[:, None]
    j = tl.arange(0, DIL_K)[None, :]
    e = j // DIL_P
    e_ok = e < ND
    e = tl.where(e_ok, e, 0)
    kpos = t0 + g * DIL_P + j % DIL_P - tl.load(DIST + e)
    valid = e_ok & (kpos >= G) & (kpos < L)
    row_p = (tl.arange(0, DIL_P * GRP) // GRP)[None, :, None]
    ok = (row_p == (j % DIL_P)[:, None, :]) & valid[:, None, :] & is_text[:, :, None]
    return e, kpos, valid, ok


@triton.jit
def load_group_rows(base, b, head, tok, stride_b, stride_h, stride_l, cols, row_ok):
    """[NG, DIL_ROWS, HD] grouped rows of a [B, H, L, HD] tensor (q, o, dO)."""
    ptr = base + b * stride_b + head[:, :, None] * stride_h + tok[:, :, None] * stride_l
    return tl.load(ptr + cols[None, None, :], mask=row_ok[:, :, None], other=0.0)


@triton.jit
def dilated_forward(
    Q, k_base, v_base, DIST, b, h, t0, L, qk_scale, stride_qb, stride_qh, stride_ql, stride_kl, stride_vl,
    G: tl.constexpr, ND: tl.constexpr, GRP: tl.constexpr, HD: tl.constexpr,
    DIL_P: tl.constexpr, DIL_K: tl.constexpr, NG: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Row max m, sum of exponentials and unnormalised output [BLOCK_M, HD] over the dilated keys."""
    BLOCK_M: tl.constexpr = NG * DIL_P * GRP
    cols = tl.arange(0, HD)
    tok, head, row_ok, is_text = group_rows(t0, h, L, G, GRP, DIL_P, NG)
    q = load_group_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
    _, kpos, valid, ok = group_keys(t0, DIST, L, G, ND, DIL_P, DIL_K, NG, GRP, is_text)
    kt = load_rows3(k_base, kpos, valid, stride_kl, cols)
    vt = load_rows3(v_base, kpos, valid, stride_vl, cols)
    s = tl.where(ok, mma(q, tl.permute(kt, (0, 2, 1)), IEEE, UPCAST) * qk_scale, float("-inf"))
    m = tl.maximum(tl.max(s, 2), -1e30)  # finite: a row with no dilated key must not give NaN
    p = tl.exp2(s - m[:, :, None])
    acc = mma(p.to(vt.dtype), vt, IEEE, UPCAST)
    return tl.reshape(m, [BLOCK_M]), tl.reshape(tl.sum(p, 2), [BLOCK_M]), tl.reshape(acc, [BLOCK_M, HD])


@triton.jit
def dilated_backward(
    Q, Out, DO, LSE, DKD, DVD, k_base, v_base, DIST, b, h, t0, L, qk_scale, sm_scale, dil_stride, acc_base,
    stride_qb, stride_qh, stride_ql, stride_ob, stride_oh, stride_ol, stride_dob, stride_doh, stride_dol,
    stride_kl, stride_vl,
    H, G: tl.constexpr, ND: tl.constexpr, GRP: tl.constexpr, HD: tl.constexpr,
    DIL_P: tl.constexpr, DIL_K: tl.constexpr, NG: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """The dilated keys' dQ [BLOCK_M, HD] (unscaled); their dK, dV go to the per-distance buffers."""
    BLOCK_M: tl.constexpr = NG * DIL_P * GRP
    cols = tl.arange(0, HD)
    tok, head, row_ok, is_text = group_rows(t0, h, L, G, GRP, DIL_P, NG)
    q = load_group_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
    do = load_group_rows(DO, b, head, tok, stride_dob, stride_doh, stride_dol, cols, row_ok)
    o = load_group_rows(Out, b, head, tok, stride_ob, stride_oh, stride_ol, cols, row_ok)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 2)
    lse = tl.load(LSE + (b * H + head) * L + tok, mask=row_ok, other=0.0)
    e, kpos, valid, ok = group_keys(t0, DIST, L, G, ND, DIL_P, DIL_K, NG, GRP, is_text)
    kt = load_rows3(k_base, kpos, valid, stride_kl, cols)
    vt = load_rows3(v_base, kpos, valid, stride_vl, cols)
    s = mma(q, tl.permute(kt, (0, 2, 1)), IEEE, UPCAST)
    p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, :, None]), 0.0)
    ds = p * (mma(do, tl.permute(vt, (0, 2, 1)), IEEE, UPCAST) - delta[:, :, None])
    dq = mma(ds.to(kt.dtype), kt, IEEE, UPCAST)
    rows = e * dil_stride + acc_base + tl.where(valid, kpos, 0) * HD  # [NG, DIL_K] row offsets
    ptr = rows[:, :, None] + cols[None, None, :]
    dk = mma(tl.permute(ds.to(q.dtype), (0, 2, 1)), q, IEEE, UPCAST) * sm_scale
    tl.store(DKD + ptr, dk.to(DKD.dtype.element_ty), mask=valid[:, :, None])
    dv = mma(tl.permute(p.to(do.dtype), (0, 2, 1)), do, IEEE, UPCAST)
    tl.store(DVD + ptr, dv.to(DVD.dtype.element_ty), mask=valid[:, :, None])
    return tl.reshape(dq, [BLOCK_M, HD])
