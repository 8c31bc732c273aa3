"""The choice of the content-selected blocks with groups, fused: each query scores only the blocks it ranks.

``halo_lab.graph.selection._choice`` (the reference) scores every summary, blocks and groups, for every
query: a [P, N/b + N/(b*m)] fp32 matrix per KV head, then sorts. With groups a query ranks only the blocks
of its n2 chosen groups and the fewer than m blocks past its complete groups (2 * 16 + 15 = 47 by default),
so at 64K tokens 99% of that matrix is thrown away, and it was 92% of the selected path's GPU time there
(experiments/bench/README.md, "The selected blocks"). Here:

1. the group scores ([P, N/(b*m)]) and their top n2 stay in torch, exactly as the reference computes them;
2. one kernel scores each query's ranked blocks and keeps its n best: a program owns BLOCK_P = 32
   queries of one (batch row, KV head); it walks the n2 * m + m - 1 ranked slots, gathers the block
   summaries' factor rows of the slot ([BLOCK_P, d] each; the summaries are small and stay in L2), takes
   the row-wise products on CUDA cores (each query has its own blocks, so there is no shared tile for a
   tensor-core product) and keeps a running top n per query ([BLOCK_P, NSELP] in registers; ties go to the
   lower block, as the reference's stable sort);
3. torch orders each query's n choices as the reference does (score descending, ties by block).

Scores are the same sums as the reference's in another order, so two blocks whose scores differ by
fp32 rounding only may swap places (with random inputs: none in the tests).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from halo_lab.config import HaloConfig
from halo_lab.graph import selection

try:
    from torch._library.triton import is_wrap_triton_enabled
except ImportError:  # pragma: no cover - a torch without triton_op
    is_wrap_triton_enabled = None

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_P = 32  # queries per program: [BLOCK_P, d] fp32 factor rows x 2-4 live at d = 64
BIG = tl.constexpr(1 << 30)  # the block index of an empty slot (plus its column, so that empty slots differ)


@triton.jit
def choose_blocks_kernel(
    QP, QN, HP, HN, GRPS, CAND, BLK, SCORE,
    P, S, inv_sqrt_d,
    M: tl.constexpr, N2: tl.constexpr, NSEL: tl.constexpr, NSELP: tl.constexpr, D: tl.constexpr,
    TWO: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """BLK/SCORE [B*Hkv, P, NSEL]: each query's NSEL best ranked blocks (unordered; -1 / -inf for none).
    QP/QN [B*Hkv, P, D] the query factors, HP/HN [B*Hkv, S, D] the summaries' (TWO: the bound's two
    products, else QP . HP only), GRPS [B*Hkv, P, N2] the chosen groups (-1 = none), CAND [P] c per query."""
    inv_sqrt_d = tl.cast(inv_sqrt_d, tl.float32)  # Inductor's wrapper passes a float argument as fp64
    bh = tl.program_id(1)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    cols = tl.arange(0, D)
    qrow = (bh * P + p)[:, None] * D + cols[None, :]
    qp = tl.load(QP + qrow, mask=p_ok[:, None], other=0.0)
    if TWO:
        qn = tl.load(QN + qrow, mask=p_ok[:, None], other=0.0)
    c = tl.load(CAND + p, mask=p_ok, other=0)
    loose0 = (c // M) * M  # the first block past the complete groups

    slot = tl.arange(0, NSELP)
    # the running top NSEL: empty slots score -inf with distinct large indices (the worst first); the
    # padding columns past NSEL score +inf, so they are never the worst and never replaced
    vals = tl.full([BLOCK_P, NSELP], float("-inf"), tl.float32)
    vals = tl.where((slot >= NSEL)[None, :], float("inf"), vals)
    idxs = tl.full([BLOCK_P, NSELP], BIG, tl.int32) + slot[None, :]

    for t in range(0, N2 * M + M - 1):
        if t < N2 * M:  # block t % M of chosen group t // M
            g = tl.load(GRPS + (bh * P + p) * N2 + t // M, mask=p_ok, other=-1)
            j = g * M + t % M
            ok = p_ok & (g >= 0)
        else:  # the (t - N2 * M)-th block past the complete groups
            j = loose0 + (t - N2 * M)
            ok = p_ok & (j < c)
        srow = (bh * S + tl.where(ok, j, 0))[:, None] * D + cols[None, :]
        s = tl.sum(qp * tl.load(HP + srow, mask=ok[:, None], other=0.0), 1)
        if TWO:
            s += tl.sum(qn * tl.load(HN + srow, mask=ok[:, None], other=0.0), 1)
        s = s * inv_sqrt_d
        # the worst kept entry: the lowest score, of those the highest block
        worst = tl.min(vals, 1)
        at_worst = vals == worst[:, None]
        worst_idx = tl.max(tl.where(at_worst, idxs, -1), 1)
        better = ok & ((s > worst) | ((s == worst) & (j < worst_idx)))
        put = at_worst & (idxs == worst_idx[:, None]) & better[:, None]
        vals = tl.where(put, s[:, None], vals)
        idxs = tl.where(put, j[:, None], idxs)

    out = (bh * P + p)[:, None] * NSEL + slot[None, :]
    keep = p_ok[:, None] & (slot < NSEL)[None, :]
    tl.store(BLK + out, tl.where(idxs >= BIG, -1, idxs), mask=keep)
    tl.store(SCORE + out, vals, mask=keep)


def fused_choice(config: HaloConfig, q, k, summary_k, candidates, nb: int):
    """``graph.selection._choice`` for a config with groups (same arguments, same (groups, blocks)): the
    group scores and their top n2 in torch, the ranked blocks' scores and top n in the kernel."""
    m, n, n2 = config.select_group_size, config.select_blocks, config.select_groups
    S = summary_k.shape[2]
    if not m or S - nb == 0 or n == 0:  # no complete group: every candidate block is ranked
        return selection._choice(config, q, k, summary_k, candidates, nb)
    B, Hq, P, d = q.shape
    Hkv = k.shape[1]
    bounds = selection.key_bounds(k, config, config.num_globals) if config.select_score == "bound" else None
    factors = selection.score_factors(config, q.view(B, Hkv, Hq // Hkv, P, d).float(), summary_k, bounds)
    # the groups: the reference's scores restricted to the group columns (factor_scores reads them only)
    group_factors = [(qf, sf[:, :, nb:]) for qf, sf in factors]
    rank = selection._Ranking.of(config, candidates, nb, S - nb)
    chunk = max(1, selection.CHOICE_CHUNK_ELEMENTS // max(1, B * Hkv * (S - nb)))
    groups = torch.cat(
        [
            selection._top(
                selection.factor_scores(group_factors, slice(s0, s0 + chunk)).div_(math.sqrt(d)),
                rank.ids < rank.limit[:, :, s0 : s0 + chunk],
                n2,
            )
            for s0 in range(0, P, chunk)
        ],
        dim=2,
    )
    blocks = ranked_top_blocks(config, factors, groups, candidates, d)
    return groups, blocks


def _choose_blocks(
    qp: torch.Tensor, qn: torch.Tensor, hp: torch.Tensor, hn: torch.Tensor, groups: torch.Tensor,
    candidates: torch.Tensor, m: int, n: int, two: bool, inv_sqrt_d: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(blocks int32, scores fp32) [B, Hkv, P, n] of the kernel, unordered."""
    B, Hkv, P, D = qp.shape
    blk = qp.new_empty(B, Hkv, P, n, dtype=torch.int32)
    score = qp.new_empty(B, Hkv, P, n, dtype=torch.float32)
    _launch(
        (triton.cdiv(P, BLOCK_P), B * Hkv),
        (qp, qn, hp, hn, groups, candidates, blk, score, P, hp.shape[2], inv_sqrt_d),
        dict(M=m, N2=groups.shape[-1], NSEL=n, NSELP=triton.next_power_of_2(n), D=D, TWO=two, BLOCK_P=BLOCK_P),
    )  # fmt: skip
    return blk, score


def _launch(grid: tuple, args: tuple, meta: dict) -> None:
    """The kernel's launch; traced inside the triton_op (torch.compile on CUDA) through ``wrap_triton``, so
    that it is a node of the graph (tests/kernel_writes.py replaces this to capture it)."""
    kernel = choose_blocks_kernel
    if not INTERPRETED and is_wrap_triton_enabled():
        kernel = torch.library.wrap_triton(kernel)
    kernel[grid](*args, **meta)


# An op, so that a compiled model traces through the choice without a graph break (as op.py's attention
# ops): a triton_op with compiled Triton; under the interpreter an opaque custom op whose fake gives shapes.
if not INTERPRETED:
    choose_blocks = torch.library.triton_op("halo_lab::choose_blocks", _choose_blocks, mutates_args=())
else:
    choose_blocks = torch.library.custom_op("halo_lab::choose_blocks", _choose_blocks, mutates_args=())

    @choose_blocks.register_fake
    def _(qp, qn, hp, hn, groups, candidates, m, n, two, inv_sqrt_d):
        B, Hkv, P, _ = qp.shape
        return qp.new_empty(B, Hkv, P, n, dtype=torch.int32), qp.new_empty(B, Hkv, P, n, dtype=torch.float32)


def ranked_top_blocks(config: HaloConfig, factors, groups, candidates, d: int) -> torch.Tensor:
    """[B, Hkv, P, n] the n best blocks of each query's ranked ones (its groups' and the loose), ordered
    as the reference orders them: score descending, ties to the lower block, -1 (none) last."""
    (qp, hp), *rest = factors
    qn, hn = rest[0] if rest else (qp, hp)
    blk, score = choose_blocks(
        qp.contiguous(), qn.contiguous(), hp.contiguous(), hn.contiguous(), groups.to(torch.int32).contiguous(),
        candidates.to(torch.int32).contiguous(), config.select_group_size, config.select_blocks, len(rest) > 0,
        1.0 / math.sqrt(d),
    )  # fmt: skip
    # the reference's order: by block (none last), then stably by score descending
    blk64 = torch.where(blk >= 0, blk.long(), torch.iinfo(torch.int64).max)
    by_block = blk64.sort(-1).indices
    score = score.gather(-1, by_block)
    order = by_block.gather(-1, torch.sort(score, dim=-1, descending=True, stable=True).indices)
    return blk.long().gather(-1, order)
