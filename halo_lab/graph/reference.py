"""The oracle: RoPE and softmax attention over an explicit neighbour list, in a few lines of plain torch.

``reference_attention`` gathers each query's K neighbours and runs one softmax over them. It materialises
B x H x L x K x d, so it is the oracle every fast path is tested against (values and gradients), not a
path to train with. The fused kernels (halo_lab.kernels) and the other backends (halo_lab.model.attention)
import it from here, below them.

Tensors are laid out [B, heads, L, head_dim]; K/V have ``num_kv_heads`` heads (grouped-query attention).
"""

from __future__ import annotations

import math

import torch

from halo_lab.config import HaloConfig
from halo_lab.graph.edges import full_neighbor_index
from halo_lab.graph.selection import select


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the reference's convention) on [..., L, head_dim] with [L, head_dim] tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def gather_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, bias=None, bias_from: int = 0,
    token_bias=None, token_cols: tuple[int, int] = (0, 0),
) -> torch.Tensor:  # fmt: skip
    """Softmax attention of each query over its listed keys.

    q: [B, Hq, P, d]; k, v: [B, Hkv, S, d]; idx: [P, K] key positions in 0..S-1 (the same for every row
    and head) or [B, Hkv, P, K] (its own per row and KV head); -1 = no edge. ``bias`` [Hkv] (the summary
    keys' logit bias, ``select_summary_bias``): added to the scaled score of every key at a position >=
    ``bias_from`` (the summaries, appended after the sequence), for every query head of the KV head.
    ``token_bias`` [Hkv] (the chosen tokens' logit bias, ``select_token_bias``): added to the scores of the
    columns ``token_cols`` = (first, end) of ``idx`` (where ``with_selection`` puts the chosen tokens)."""
    B, Hq, P, d = q.shape
    Hkv = k.shape[1]
    valid = idx >= 0
    if idx.dim() == 2:
        flat = idx.clamp(min=0).reshape(-1)
        kg = k.index_select(2, flat).view(B, Hkv, P, -1, d)
        vg = v.index_select(2, flat).view(B, Hkv, P, -1, d)
    else:
        flat = idx.clamp(min=0).reshape(B, Hkv, -1, 1).expand(-1, -1, -1, d)
        kg = torch.gather(k, 2, flat).view(B, Hkv, P, -1, d)
        vg = torch.gather(v, 2, flat).view(B, Hkv, P, -1, d)
        valid = valid.unsqueeze(2)  # [B, Hkv, 1, P, K] against the scores' [B, Hkv, group, P, K]
    qg = q.view(B, Hkv, Hq // Hkv, P, d)
    scores = torch.einsum("bhgpd,bhpkd->bhgpk", qg, kg) / math.sqrt(d)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if bias is not None:
        biased = (idx >= bias_from) if idx.dim() == 2 else (idx >= bias_from).unsqueeze(2)
        scores = scores + biased * bias.to(scores.dtype).view(1, Hkv, 1, 1, 1)
    if token_bias is not None:
        first, end = token_cols
        cols = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
        cols[first:end] = 1
        scores = scores + cols * token_bias.to(scores.dtype).view(1, Hkv, 1, 1, 1)
    scores = scores.masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.einsum("bhgpk,bhpkd->bhgpd", probs, vg)
    return out.reshape(B, Hq, P, d)


def with_selection(
    q_text, k, v, config: HaloConfig, positions: torch.Tensor, idx: torch.Tensor, pool=None, router=None
):
    """(k, v, idx) extended by the content-selected part (``halo_lab.graph.selection``) for the text
    queries ``q_text`` ([B, Hq, P, d] at text ``positions``) over ``k``, ``v`` ([B, Hkv, G + N, d]): the
    summaries appended after the G + N positions, and their graph rows ``idx`` ([P, K] positions of k,
    -1 = none) widened to [B, Hkv, P, K + n*b + S] with each query's chosen tokens (not already in its
    row) and the summaries it has as keys, in that order (columns K.. K + n*b: the chosen tokens, see
    ``token_columns``). ``pool``: the learned pooling's u (``select_pooling=learned``); ``router``: the
    choice's router (``select_router_rank``)."""
    G = config.num_globals
    B, Hkv, L, _ = k.shape
    sel = select(q_text, k, v, config, positions, pool, router=router)
    tok = sel.token_index(idx - G)
    S = sel.summary_k.shape[2]
    summary = torch.where(sel.summary_mask(), L + torch.arange(S, device=k.device), -1)
    extra = torch.cat([torch.where(tok >= 0, tok + G, tok), summary], dim=-1)
    wide = torch.cat([idx.expand(B, Hkv, *idx.shape), extra], dim=-1)
    return torch.cat([k, sel.summary_k], 2), torch.cat([v, sel.summary_v], 2), wide


def token_columns(config: HaloConfig, graph_keys: int) -> tuple[int, int]:
    """(first, end): the columns of the chosen tokens in a row that ``with_selection`` widened from
    ``graph_keys`` columns."""
    return graph_keys, graph_keys + config.select_blocks * config.select_block_size


def reference_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, pool=None, bias=None, token_bias=None, router=None
) -> torch.Tensor:
    """The oracle: every position attends over its explicit neighbour list (the fixed graph, and with
    ``select_blocks`` its chosen tokens and scored summaries, built from index tables). ``pool``: the
    learned pooling's u; ``bias`` [Hkv]: the summary keys' logit bias (``select_summary_bias``),
    ``token_bias`` [Hkv] the chosen tokens' (``select_token_bias``), None for none; ``router``: the
    choice's router (``select_router_rank``)."""
    G = config.num_globals
    idx = full_neighbor_index(config, layer, step, q.shape[2] - G, q.device)
    if not config.selects:
        return gather_attention(q, k, v, idx)
    positions = torch.arange(q.shape[2] - G, device=q.device)
    k_all, v_all, text = with_selection(q[:, :, G:], k, v, config, positions, idx[G:], pool, router)
    head = torch.cat([idx[:G], idx.new_full((G, text.shape[-1] - idx.shape[1]), -1)], dim=1)
    wide = torch.cat([head.expand(*text.shape[:2], *head.shape), text], dim=2)  # globals choose nothing
    cols = token_columns(config, idx.shape[1])
    return gather_attention(q, k_all, v_all, wide, bias, k.shape[2], token_bias, cols)
