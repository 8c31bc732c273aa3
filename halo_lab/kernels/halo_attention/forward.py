"""Forward kernel: every edge of the HALO graph in one online softmax, all of it on tensor cores.

One program owns BLOCK_T consecutive positions of one (batch, KV head) and packs the GRP query heads of
that KV head into the rows of one tile (BLOCK_M = BLOCK_T * GRP rows, row r = position t0 + r // GRP,
head r % GRP), so each K/V tile is loaded once per group and the matmuls keep M = BLOCK_M.

Every group of keys is a [N, HD] tile and a [BLOCK_M, N] mask, through the same ``tl.dot`` update:

* shared tile (SHARED_N columns): the G globals and, in block mode, the tile's R random keys (one
  block of ``graph_block_size`` positions shares them);
* dilated keys (DIL_GROUPED, the default): one batched product over groups of 16 rows, each group's
  keys its positions at every distance (dilated.py); else one tile per distance d (keys t0 - d ..
  t0 - d + BLOCK_T - 1, each row keeping the key on its diagonal), kept for comparison;
* per-token random tile (token mode, or tiles that span several blocks): the BLOCK_T * R keys of the
  tile's positions, gathered by index, each row keeping its own R;
* window tiles: keys [t0 - W + 1, t0 + BLOCK_T) in BLOCK_N steps, the band mask;
* with content-selected blocks (SEL): the tile's chosen blocks and the summary tiles (selected.py), the
  summaries' scores + their KV head's learned bias with SUMB (``select_summary_bias``), the chosen keys'
  (those a row keeps: not already one of its graph keys) + the KV head's token bias with TOKB
  (``select_token_bias``). Off, either constexpr leaves the operations of the kernel as without it.

The masked-away products cost tensor-core time, which is cheap; row-wise products on CUDA cores held
[BLOCK_M, HD] fp32 temporaries per key and spilled registers. Softmax in base 2 (scores pre-multiplied
by log2 e); the kernel writes the output and each row's log-sum-exp (base 2) for the backward.
"""

from __future__ import annotations

import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.common import LOG2E, load_query_rows, load_rows, mma
from halo_lab.kernels.halo_attention.dilated import dilated_forward
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
def query_tile(pid_t, h, L, G: tl.constexpr, GRP: tl.constexpr, BLOCK_T: tl.constexpr, HD: tl.constexpr):
    """The rows of a query tile: BLOCK_T positions from t0 x the GRP query heads of KV head h."""
    t0 = pid_t * BLOCK_T
    rows = tl.arange(0, BLOCK_T * GRP)
    tok = t0 + rows // GRP
    row_ok = tok < L
    return t0, tok, h * GRP + rows % GRP, tl.arange(0, HD), row_ok, row_ok & (tok >= G)


@triton.jit
def shared_keys(t0, cols_n, tok, row_ok, is_text, RAND, DIST, stride_ru,
                G: tl.constexpr, NRS: tl.constexpr, ND: tl.constexpr, UNIT: tl.constexpr):  # fmt: skip
    """Positions [N] and mask [BLOCK_M, N] of the shared tile: globals, then block-mode random keys."""
    is_glob = cols_n < G
    is_rand = (cols_n >= G) & (cols_n < G + NRS)
    rk = tl.load(RAND + (t0 // UNIT) * stride_ru + tl.where(is_rand, cols_n - G, 0), mask=is_rand, other=-1)
    pos = tl.where(is_glob, cols_n, rk)
    ok = is_glob[None, :] & row_ok[:, None] & (tok[:, None] >= cols_n[None, :])
    rand_ok = is_rand[None, :] & is_text[:, None] & (rk[None, :] >= 0)
    for e in tl.static_range(ND):  # a random key that is also the row's dilated key counts once
        rand_ok = rand_ok & (tok[:, None] - rk[None, :] != tl.load(DIST + e))
    return pos, is_glob | (is_rand & (rk >= 0)), ok | rand_ok


@triton.jit
def token_random_keys(t0, cols_r, tok, is_text, RAND, DIST, stride_ru, L,
                      NR: tl.constexpr, ND: tl.constexpr, UNIT: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """Positions [N] and mask [BLOCK_M, N] of the per-token random tile (column c: position t0 + c // NR)."""
    owner = t0 + cols_r // NR
    present = (cols_r < BLOCK_T * NR) & (owner < L)
    rk = tl.load(RAND + tl.where(present, owner // UNIT, 0) * stride_ru + cols_r % NR, mask=present, other=-1)
    ok = (tok[:, None] == owner[None, :]) & is_text[:, None] & (rk[None, :] >= 0)
    for e in tl.static_range(ND):
        ok = ok & (tok[:, None] - rk[None, :] != tl.load(DIST + e))
    return rk, rk >= 0, ok


@triton.jit
def attend(q, kt, vt, ok, m, denom, acc, qk_scale, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """Online-softmax update with one key tile (ok: the edges of that tile)."""
    s = tl.where(ok, mma(q, tl.trans(kt), IEEE, UPCAST) * qk_scale, float("-inf"))
    return softmax_update(s, vt, m, denom, acc, IEEE, UPCAST)


@triton.jit
def biased_attend(q, kt, vt, ok, m, denom, acc, qk_scale, shift,
                  BIASED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """``attend`` for a summary tile or a chosen block's: with BIASED (SUMB, TOKB), every score + ``shift``
    (the KV head's summary or token bias, base 2); without, the same operations as ``attend``."""
    s = mma(q, tl.trans(kt), IEEE, UPCAST) * qk_scale
    if BIASED:
        s = s + shift
    return softmax_update(tl.where(ok, s, float("-inf")), vt, m, denom, acc, IEEE, UPCAST)


@triton.jit
def softmax_update(s, vt, m, denom, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """The online-softmax update with one tile's base-2 scores ``s`` (-inf where no edge)."""
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    denom = denom * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mma(p.to(vt.dtype), vt, IEEE, UPCAST)
    return m_new, denom, acc


@triton.jit
def selected_forward(q, m, denom, acc, k_base, v_base, sk_base, sv_base, TB, TBN, TG, TGN, BLK, GRPS, RAND,
                     DIST, tile, row0, tok, is_text, cols, stride_kl, stride_vl, stride_skl, stride_ru,
                     UMAX, UGMAX, NB, NSUM, qk_scale, bias_ptr, tbias_ptr,
                     G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr,
                     UNIT: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr, BPT: tl.constexpr, NSELP: tl.constexpr,
                     SM: tl.constexpr, SMP: tl.constexpr, GPT: tl.constexpr, NG2P: tl.constexpr,
                     SUMK: tl.constexpr,
                     SUM_N: tl.constexpr,
                     SUMB: tl.constexpr, TOKB: tl.constexpr, IEEE: tl.constexpr,
                     UPCAST: tl.constexpr):  # fmt: skip
    """The content-selected key groups of a query tile (selected.py) added to its online softmax: the
    distinct chosen blocks of its rows, then the block and group summaries (``row0``: (b * HKV + h) * L),
    with SUMB each summary's score + the KV head's bias (``bias_ptr``: its fp32 value, natural log units),
    with TOKB each kept chosen key's + the KV head's token bias (``tbias_ptr``, the same units)."""
    tshift = 0.0
    if TOKB:  # base 2, like the scores
        tshift = tl.load(tbias_ptr).to(tl.float32) * LOG2E
    for u in range(0, tl.load(TBN + tile), BPT):
        pos, valid, ok = chosen_block_tile(
            u, tile * UMAX, row0 * NSELP, tok, is_text, RAND, DIST, stride_ru, TB, BLK, UMAX,
            G, W, ND, NR, UNIT, SB, SBP, NSELP, BPT,
        )  # fmt: skip
        kt = load_rows(k_base, pos, valid, stride_kl, cols)
        vt = load_rows(v_base, pos, valid, stride_vl, cols)
        m, denom, acc = biased_attend(q, kt, vt, ok, m, denom, acc, qk_scale, tshift, TOKB, IEEE, UPCAST)
    if SUMK:
        c = candidates(tok, is_text, G, W, SB)
        c_hi = tl.max(c, 0)
        shift = 0.0
        if SUMB:  # base 2, like the scores
            shift = tl.load(bias_ptr).to(tl.float32) * LOG2E
        if SM == 0:
            for start in range(0, c_hi, SUM_N):
                j, ok = block_summary_tile(start, c, is_text, SUM_N)
                kt = load_rows(sk_base, j, j < NB, stride_skl, cols)
                vt = load_rows(sv_base, j, j < NB, stride_skl, cols)
                m, denom, acc = biased_attend(
                    q, kt, vt, ok, m, denom, acc, qk_scale, shift, SUMB, IEEE, UPCAST
                )
        else:
            for u in range(0, tl.load(TGN + tile), GPT):  # the blocks of the groups the rows chose
                j, valid, ok = chosen_group_blocks_tile(
                    u, tile * UGMAX, row0 * NG2P, tok, is_text, TG, GRPS, UGMAX, SM, SMP, NG2P, GPT
                )
                kt = load_rows(sk_base, j, valid, stride_skl, cols)
                vt = load_rows(sv_base, j, valid, stride_skl, cols)
                m, denom, acc = biased_attend(
                    q, kt, vt, ok, m, denom, acc, qk_scale, shift, SUMB, IEEE, UPCAST
                )
            for start in range(loose_blocks_start(c, is_text, SM), c_hi, SUM_N):  # those past the groups
                j, ok = loose_blocks_tile(start, c, is_text, SM, SUM_N)
                kt = load_rows(sk_base, j, j < NB, stride_skl, cols)
                vt = load_rows(sv_base, j, j < NB, stride_skl, cols)
                m, denom, acc = biased_attend(
                    q, kt, vt, ok, m, denom, acc, qk_scale, shift, SUMB, IEEE, UPCAST
                )
            for start in range(0, c_hi // SM, SUM_N):
                j, ok = group_summary_tile(start, c, is_text, NB, SM, SUM_N)
                kt = load_rows(sk_base, j, j < NSUM, stride_skl, cols)
                vt = load_rows(sv_base, j, j < NSUM, stride_skl, cols)
                m, denom, acc = biased_attend(
                    q, kt, vt, ok, m, denom, acc, qk_scale, shift, SUMB, IEEE, UPCAST
                )
    return m, denom, acc


@triton.jit
def halo_fwd_kernel(
    Q, K, V, Out, LSE, DIST, RAND,
    SK, SV, BLK, GRPS, TB, TBN, TG, TGN,  # the content-selected part (SEL; selected.py)
    SBIAS,  # [HKV] fp32 the summary keys' logit bias (SUMB; else never read)
    TBIAS,  # [HKV] fp32 the chosen tokens' logit bias (TOKB; else never read)
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
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
):  # fmt: skip
    BLOCK_M: tl.constexpr = BLOCK_T * GRP
    NRS: tl.constexpr = NR if SHARED_RANDOM else 0
    qk_scale = tl.cast(qk_scale, tl.float32)  # Inductor's wrapper passes a float argument as fp64
    b = tl.program_id(1) // HKV
    h = tl.program_id(1) % HKV
    t0, tok, head, cols, row_ok, is_text = query_tile(tl.program_id(0), h, L, G, GRP, BLOCK_T, HD)
    q = load_query_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    if DIL_GROUPED and ND > 0:  # seeds the online softmax (dilated.py)
        m, denom, acc = dilated_forward(
            Q, k_base, v_base, DIST, b, h, t0, L, qk_scale, stride_qb, stride_qh, stride_ql, stride_kl,
            stride_vl, G, ND, GRP, HD, DIL_P, DIL_K, DIL_NG, IEEE, UPCAST,
        )  # fmt: skip
    else:
        m = tl.full([BLOCK_M], -1e30, tl.float32)  # finite: a tile with no edge for a row must not give NaN
        denom = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HD], tl.float32)
        diag = tl.arange(0, BLOCK_T)
        for e in tl.static_range(ND):
            dist = tl.load(DIST + e)
            kpos = t0 - dist + diag
            valid = (kpos >= G) & (kpos < L)
            kt = load_rows(k_base, kpos, valid, stride_kl, cols)
            vt = load_rows(v_base, kpos, valid, stride_vl, cols)
            ok = (tok[:, None] - kpos[None, :] == dist) & valid[None, :] & is_text[:, None]
            m, denom, acc = attend(q, kt, vt, ok, m, denom, acc, qk_scale, IEEE, UPCAST)

    if G + NRS > 0:
        pos, valid, ok = shared_keys(
            t0, tl.arange(0, SHARED_N), tok, row_ok, is_text, RAND, DIST, stride_ru, G, NRS, ND, UNIT
        )
        kt = load_rows(k_base, pos, valid, stride_kl, cols)
        vt = load_rows(v_base, pos, valid, stride_vl, cols)
        m, denom, acc = attend(q, kt, vt, ok, m, denom, acc, qk_scale, IEEE, UPCAST)

    if NR > 0 and not SHARED_RANDOM:
        pos, valid, ok = token_random_keys(
            t0, tl.arange(0, RAND_N), tok, is_text, RAND, DIST, stride_ru, L, NR, ND, UNIT, BLOCK_T
        )
        kt = load_rows(k_base, pos, valid, stride_kl, cols)
        vt = load_rows(v_base, pos, valid, stride_vl, cols)
        m, denom, acc = attend(q, kt, vt, ok, m, denom, acc, qk_scale, IEEE, UPCAST)

    lo = tl.maximum(t0 - W + 1, G)
    hi = tl.minimum(t0 + BLOCK_T, L)
    for start in range(lo, hi, BLOCK_N):
        kpos_w = start + tl.arange(0, BLOCK_N)
        kmask = kpos_w < hi
        kt_w = load_rows(k_base, kpos_w, kmask, stride_kl, cols)
        vt_w = load_rows(v_base, kpos_w, kmask, stride_vl, cols)
        dw = tok[:, None] - kpos_w[None, :]
        ok_w = is_text[:, None] & kmask[None, :] & (dw >= 0) & (dw < W)
        m, denom, acc = attend(q, kt_w, vt_w, ok_w, m, denom, acc, qk_scale, IEEE, UPCAST)

    if SEL:
        m, denom, acc = selected_forward(
            q, m, denom, acc, k_base, v_base, SK + b * stride_skb + h * stride_skh,
            SV + b * stride_skb + h * stride_skh, TB, TBN, TG, TGN, BLK, GRPS, RAND, DIST,
            (b * HKV + h) * NT + tl.program_id(0), (b * HKV + h) * L, tok, is_text, cols,
            stride_kl, stride_vl, stride_skl, stride_ru, UMAX, UGMAX, NB, NSUM, qk_scale, SBIAS + h,
            TBIAS + h, G, W, ND, NR, UNIT, SB, SBP, BPT, NSELP, SM, SMP, GPT, NG2P, SUMK, SUM_N, SUMB, TOKB, IEEE,
            UPCAST,
        )  # fmt: skip

    denom = tl.where(denom > 0, denom, 1.0)
    tl.store(
        Out + b * stride_ob + head[:, None] * stride_oh + tok[:, None] * stride_ol + cols[None, :],
        (acc / denom[:, None]).to(Out.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + (b * HKV * GRP + head) * L + tok, m + tl.log2(denom), mask=row_ok)
