"""The chosen blocks' dK/dV in a pass owned by key blocks (``SEL_KG`` 3, the default with selection).

The dQ pass computes the chosen keys' dK/dV in its query tiles: each tile loops over the distinct blocks
its rows chose and adds every block's dK/dV into the fp32 buffers with atomics (backward.add_key_grads).
A 32-position tile at 4K tokens chooses about 30 distinct blocks (experiments/bench/README.md, "The
selected path's key tiles"), and each row chose 4 of them, so about 13% of those [rows x keys] products
are edges; the atomics cost 0.76 ms of the dQ pass's 3.09 at 1K on an H100, the chosen keys' products
1.5 ms more ("Eighth session"). Here the work goes the other way, as NSA's and MoBA's backward passes do:
one program per (batch row, KV head, block) loops over the query positions that chose the block
(``chosen_pairs``: the choice inverted, in torch) and owns the block's 16 keys, so every row of its
products chose the block, and it adds its sums into the buffers with one plain read-modify-write. The dQ
pass then skips the chosen keys' dK/dV (``add_key_grads`` with KG 3 computes none).

Block sizes: BLOCK_P = 16 positions a step x GRP query heads = the rows of one product against the block's
SBP keys (16 for b = 16; tl.dot's smallest). A block that many positions chose is one long program: the
load is uneven where the early blocks are chosen most. On an H100 (experiments/bench/h100_select_v4/) this
pass takes 0.25 / 0.37 / 0.91 ms at 1K / 4K / 16K tokens, and the dQ pass without the chosen keys' dK/dV
1.29 / 1.96 / 2.65 ms instead of 3.05 / 5.28 / 7.12: fwd + bwd 5.7 / 6.9 / 9.0 ms instead of 7.1 / 9.7 / 12.3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from halo_lab.kernels.halo_attention.backward import grad_tile
from halo_lab.kernels.halo_attention.common import LOG2E, load_query_rows, load_rows, mma
from halo_lab.kernels.halo_attention.selected import kept_chosen_keys

BLOCK_P = 16
# Positions of a block's choosers a program takes (0: all, one program a block, a plain read-modify-write).
# The early blocks are candidates of most positions and chosen the most (717 µs for this pass at 16K,
# H100, experiments/bench/h100_select_v10/); with parts each program takes at most BLOCK_PART of them and
# adds with fp32 atomics. Off until timed on a card (kernel_tune.py's part variants).
BLOCK_PART = 0
KG_BY_BLOCKS = 3  # the dQ pass's SEL_KG value that hands the chosen keys' dK/dV to this pass


def chosen_pairs(blk: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The choice inverted: (offsets [B * Hkv * n_blocks + 1], positions [B * Hkv * L * NSELP]) int32, the
    positions that chose block u of (b, h) at ``positions[offsets[i]:offsets[i + 1]]``, i = (b * Hkv + h)
    * n_blocks + u, ascending. Static shapes (no boolean indexing): a traced backward builds them too, and
    the unused slots (-1 in ``blk``) sort after every block."""
    B, Hkv, L, nsel = blk.shape
    n = B * Hkv * n_blocks
    flat = blk.reshape(B * Hkv, L * nsel).long()
    bh = torch.arange(B * Hkv, device=blk.device).unsqueeze(1)
    key = torch.where(flat >= 0, bh * n_blocks + flat, n).reshape(-1)
    key, order = torch.sort(key, stable=True)
    pos = (torch.arange(L * nsel, device=blk.device) // nsel).repeat(B * Hkv)
    # offsets[i] = how many keys are below i: a search of the sorted keys, not a histogram (index_add_ on
    # int64, which Inductor hands to aten's sort-based index_put: 4.2 ms at 1K, H100, twelfth session)
    ids = torch.arange(n + 1, device=blk.device)
    offsets = torch.searchsorted(key, ids, out_int32=True)
    return offsets, pos[order].to(torch.int32)


@triton.jit
def chosen_dkv_kernel(
    Q, K, V, DO, LSE, DELTA, DKA, DVA, OFFS, POS, RAND, DIST, TBIAS,
    qk_scale, sm_scale,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_ru, L, HKV, NBLK, PART,
    G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr, UNIT: tl.constexpr,
    GRP: tl.constexpr, HD: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr, BLOCK_P: tl.constexpr,
    TOKB: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    # SPLIT: program_id(2) takes the block's choosers PART * id .. PART * (id + 1) - 1, adding with atomics
    BLOCK_M: tl.constexpr = BLOCK_P * GRP
    qk_scale, sm_scale = tl.cast(qk_scale, tl.float32), tl.cast(sm_scale, tl.float32)  # fp64 under Inductor
    u = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    start = tl.load(OFFS + bh * NBLK + u)
    end = tl.load(OFFS + bh * NBLK + u + 1)
    if SPLIT:
        start = tl.minimum(start + tl.program_id(2) * PART, end)
        end = tl.minimum(start + PART, end)
    cols = tl.arange(0, HD)
    inner = tl.arange(0, SBP)
    kvalid = inner < SB
    kpos = G + u * SB + inner
    kt = load_rows(K + b * stride_kb + h * stride_kh, kpos, kvalid, stride_kl, cols)
    vt = load_rows(V + b * stride_vb + h * stride_vh, kpos, kvalid, stride_vl, cols)
    dk = tl.zeros([SBP, HD], tl.float32)
    dv = tl.zeros([SBP, HD], tl.float32)
    r = tl.arange(0, BLOCK_M)
    head = h * GRP + r % GRP  # rows: BLOCK_P positions x the KV head's GRP query heads
    shift = 0.0
    if TOKB:  # the kept chosen keys' scores carry the KV head's token bias (selected.py)
        shift = tl.load(TBIAS + h).to(tl.float32) * LOG2E
    for s in range(start, end, BLOCK_P):
        idx = s + r // GRP
        row_ok = idx < end
        tok = tl.load(POS + idx, mask=row_ok, other=0)
        q = load_query_rows(Q, b, head, tok, stride_qb, stride_qh, stride_ql, cols, row_ok)
        do = load_query_rows(DO, b, head, tok, stride_dob, stride_doh, stride_dol, cols, row_ok)
        lse = tl.load(LSE + (b * HKV * GRP + head) * L + tok, mask=row_ok, other=0.0) - shift
        delta = tl.load(DELTA + (b * HKV * GRP + head) * L + tok, mask=row_ok, other=0.0)
        # every row chose this block: it keeps the keys the graph does not give it already
        ok = row_ok[:, None] & kvalid[None, :]
        ok = kept_chosen_keys(ok, tok, kpos, row_ok, RAND, DIST, stride_ru, W, ND, NR, UNIT)
        p, ds = grad_tile(q, do, lse, delta, kt, vt, ok, qk_scale, IEEE, UPCAST)
        dk += mma(tl.trans(ds.to(q.dtype)), q, IEEE, UPCAST) * sm_scale
        dv += mma(tl.trans(p.to(do.dtype)), do, IEEE, UPCAST)
    # the block's rows of the fp32 buffers (contiguous [B, HKV, L, HD]): only this program writes them here
    ptr = bh * L * HD + tl.where(kvalid, kpos, 0)[:, None] * HD + cols[None, :]
    mask = kvalid[:, None] & ((cols[None, :] * 0 + end) > start)  # a block nobody chose: no write
    if SPLIT:
        tl.atomic_add(DKA + ptr, dk, mask=mask)
        tl.atomic_add(DVA + ptr, dv, mask=mask)
    else:
        tl.store(DKA + ptr, tl.load(DKA + ptr, mask=mask, other=0.0) + dk, mask=mask)
        tl.store(DVA + ptr, tl.load(DVA + ptr, mask=mask, other=0.0) + dv, mask=mask)


def launch_args(q, k, v, do, lse, delta, dk_extra, dv_extra, sel, rand, dist, tbias, dq_meta: dict, scale):
    """(grid, args, meta) of ``chosen_dkv_kernel`` after the dQ pass (see the module doc); ``dq_meta``: the
    dQ pass's constexprs, whose graph constants it shares."""
    B, Hq, L, d = q.shape
    Hkv = k.shape[1]
    n_blocks = max((L - dq_meta["G"]) // dq_meta["SB"], 1)
    offsets, positions = chosen_pairs(sel.blk, n_blocks)
    names = ("G", "W", "ND", "NR", "UNIT", "GRP", "HD", "SB", "SBP", "TOKB", "IEEE", "UPCAST")
    part = BLOCK_PART
    meta = {n: dq_meta[n] for n in names} | {
        "BLOCK_P": BLOCK_P,
        "SPLIT": bool(part),
        "num_warps": 4,
        "num_stages": 2,
    }
    args = (
        q, k, v, do, lse, delta, dk_extra, dv_extra, offsets, positions, rand, dist, tbias,
        scale * 1.4426950408889634, scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        rand.stride(0), L, Hkv, n_blocks, part,
    )  # fmt: skip
    return (n_blocks, B * Hkv, -(-L // part) if part else 1), args, meta  # at most L choosers a block
