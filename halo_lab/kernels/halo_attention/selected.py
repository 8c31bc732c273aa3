"""The content-selected part of the graph as key tiles of the fused kernels (halo_lab/graph/selection.py).

The choice itself (summaries, scores, top-n) is made in torch before the kernels run; the kernels read its
result from small tables (``SelectionTables`` in interface.py) and add two more key groups to the same
online softmax as the fixed graph's:

* **chosen blocks**: a query tile loops over the distinct blocks its rows chose (``TB``, sorted, ``TBN`` of
  them), BPT at a time side by side in one [BPT * SBP, HD] key tile (SBP = b padded to a power of two >= 16,
  the smallest tensor-core tile; BPT = 32 / SBP, so b = 16 makes a window tile's 32 keys: half the loop's
  softmax rescales and reductions of one block a step); a row keeps a block's keys when the block is among
  its own n (``BLK``) and drops a key that is already one of its graph keys (in its window, its dilated or
  random key: the graph is a set). Each block is loaded once per tile, not once per row. With the
  token bias (TOKB, ``select_token_bias``) the keys a row keeps score + its KV head's bias.
* **summaries**: tiles of the summary keys and values (``SK``/``SV``: the blocks' means, then the
  groups'). Without groups a row keeps block summary j < c_row (its candidates), [SUM_N, HD] tiles from 0.
  With groups it keeps group summary g < c_row // SM ([SUM_N, HD] tiles from 0), the blocks of its chosen
  groups (``GRPS``: the tile loops over the distinct groups its rows chose, ``TG``/``TGN``, GPT at a time
  in one [GPT * SMP, HD] tile, SMP = SM padded to a power of two >= 16, GPT = 32 / SMP) and the blocks past
  its complete groups (one or two [SUM_N, HD] tiles: a tile's rows are consecutive positions). Until 2026-12-05 the tile scanned every
  candidate block summary in [SUM_N, HD] tiles with the mask: N / (b * SUM_N) tiles for each query tile,
  each with its fp32 atomics in the dQ pass, where the chosen groups need a handful.

In the backward the dQ pass recomputes the same tiles; the chosen keys' dK/dV go to the fp32 buffers of the
keys outside the window (atomics, like the random keys'), the summaries' to their own fp32 buffers, which
torch's autograd carries back to the pooled keys and values; by default both come from passes that own
those keys instead (chosen_dkv.py, summary_dkv.py), where the dQ pass's atomics contended.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def candidates(tok, is_text, G: tl.constexpr, W: tl.constexpr, SB: tl.constexpr):
    """c per row: the complete blocks that start before the row's window (graph/selection.py)."""
    first = tok - G - W + 1  # the text position where the window starts
    c = tl.minimum((first + SB - 1) // SB, (tok - G + 1) // SB)
    return tl.where(is_text & (first > 0), c, 0)


@triton.jit
def first_reader(x, G: tl.constexpr, W: tl.constexpr, SB: tl.constexpr):
    """The first position whose c >= x (x >= 1; c never decreases): its window starts past x - 1 blocks
    and block x - 1 is complete (``candidates`` solved for the position)."""
    return G + tl.maximum(W + (x - 1) * SB, x * SB - 1)


@triton.jit
def chosen_block_tile(u, tile_base, row_base, tok, is_text, RAND, DIST, stride_ru, TB, BLK, UMAX,
                      G: tl.constexpr, W: tl.constexpr, ND: tl.constexpr, NR: tl.constexpr,
                      UNIT: tl.constexpr, SB: tl.constexpr, SBP: tl.constexpr, NSELP: tl.constexpr,
                      BPT: tl.constexpr):  # fmt: skip
    """Full positions [BPT * SBP], their validity and the rows' mask [BLOCK_M, BPT * SBP] of the tile's
    blocks u .. u + BPT - 1 (its distinct chosen blocks side by side, -1 past the last)."""
    col = tl.arange(0, BPT * SBP)
    idx = u + col // SBP
    blk = tl.load(TB + tile_base + idx, mask=idx < UMAX, other=-1)
    inner = col % SBP
    valid = (inner < SB) & (blk >= 0)
    pos = G + blk * SB + inner
    hit = tl.zeros([tok.shape[0], BPT * SBP], tl.int32)
    for e in tl.static_range(NSELP):  # the row chose this block (its n choices, -1 = none)
        chosen = tl.load(BLK + row_base + tok * NSELP + e, mask=is_text, other=-1)
        hit += (chosen[:, None] == blk[None, :]).to(tl.int32)
    ok = (hit > 0) & valid[None, :]
    return pos, valid, kept_chosen_keys(ok, tok, pos, is_text, RAND, DIST, stride_ru, W, ND, NR, UNIT)


@triton.jit
def kept_chosen_keys(ok, tok, pos, rows, RAND, DIST, stride_ru, W: tl.constexpr, ND: tl.constexpr,
                     NR: tl.constexpr, UNIT: tl.constexpr):  # fmt: skip
    """``ok`` [rows, keys] (a row chose the key's block) less the keys the graph gives the row already: in
    its window (the block that overlaps it), its dilated keys and its random keys (the graph is a set);
    ``rows``: the rows whose random keys to read (the text rows)."""
    ok = ok & (pos[None, :] <= tok[:, None] - W)
    for e in tl.static_range(ND):
        ok = ok & (tok[:, None] - pos[None, :] != tl.load(DIST + e))
    for r in tl.static_range(NR):
        rk = tl.load(RAND + (tok // UNIT) * stride_ru + r, mask=rows, other=-1)
        ok = ok & (rk[:, None] != pos[None, :])
    return ok


@triton.jit
def block_summary_tile(start, c, is_text, SUM_N: tl.constexpr):
    """Rows [SUM_N] of block summaries start.. and the rows' mask [BLOCK_M, SUM_N]: without groups a row
    scores every candidate block, j < c_row."""
    j = start + tl.arange(0, SUM_N)
    return j, is_text[:, None] & (j[None, :] < c[:, None])


@triton.jit
def chosen_group_blocks_tile(u, tile_base, row_base, tok, is_text, TG, GRPS, UGMAX,
                             SM: tl.constexpr, SMP: tl.constexpr, NG2P: tl.constexpr,
                             GPT: tl.constexpr):  # fmt: skip
    """Rows [GPT * SMP] of the block summaries of the tile's distinct chosen groups u .. u + GPT - 1 (SM
    blocks each, side by side, -1 past the last), their validity and the rows' mask: the rows that chose
    the group (a chosen group is one of the row's complete candidate groups: all its blocks are
    candidates of the row)."""
    col = tl.arange(0, GPT * SMP)
    idx = u + col // SMP
    grp = tl.load(TG + tile_base + idx, mask=idx < UGMAX, other=-1)
    inner = col % SMP
    valid = (inner < SM) & (grp >= 0)
    hit = tl.zeros([tok.shape[0], GPT * SMP], tl.int32)
    for e in tl.static_range(NG2P):
        chosen = tl.load(GRPS + row_base + tok * NG2P + e, mask=is_text, other=-1)
        hit += (chosen[:, None] == grp[None, :]).to(tl.int32)
    return grp * SM + inner, valid, (hit > 0) & valid[None, :]


@triton.jit
def loose_blocks_start(c, is_text, SM: tl.constexpr):
    """The first block summary that a text row of the tile scores past its complete groups ((c // SM) *
    SM; the tile's largest c when it has no text row, so that the loop is empty)."""
    return tl.min(tl.where(is_text, (c // SM) * SM, tl.max(c, 0)), 0)


@triton.jit
def loose_blocks_tile(start, c, is_text, SM: tl.constexpr, SUM_N: tl.constexpr):
    """Rows [SUM_N] of block summaries start.. and the rows' mask: the candidates past a row's complete
    groups, (c // SM) * SM <= j < c_row (fewer than SM per row)."""
    j = start + tl.arange(0, SUM_N)
    ok = is_text[:, None] & (j[None, :] < c[:, None]) & (j[None, :] >= ((c // SM) * SM)[:, None])
    return j, ok


@triton.jit
def group_summary_tile(start, c, is_text, NB, SM: tl.constexpr, SUM_N: tl.constexpr):
    """Rows [SUM_N] (of SK: NB + g) of group summaries start.. and the rows' mask: g < c_row // SM."""
    g = start + tl.arange(0, SUM_N)
    ok = is_text[:, None] & (g[None, :] < (c // SM)[:, None])
    return NB + g, ok
