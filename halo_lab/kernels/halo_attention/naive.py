"""The naive form of what the fused kernels compute, from the same tables (for tests, not for speed),
content-selected blocks included (from the kernels' selection tables).

Each query's key list is rebuilt from the ranges and tables the kernels read (globals, window, dilated
distances, the random table), then one masked softmax: so a wrong table fails against the reference here,
and a wrong kernel fails against this.
"""

from __future__ import annotations

import torch

from halo_lab.config import HaloConfig
from halo_lab.graph.reference import gather_attention
from halo_lab.kernels.halo_attention.tables import GraphTables


def key_index(config: HaloConfig, tables: GraphTables, seq_len: int, device) -> torch.Tensor:
    """[L, K] full-position keys of every position from the kernel's tables (-1 = no edge)."""
    G, W = config.num_globals, config.local_window
    pos = torch.arange(seq_len, device=device)
    text = (pos >= G).unsqueeze(1)
    glob = torch.arange(G, device=device).expand(seq_len, G)
    glob = torch.where(glob <= pos.unsqueeze(1), glob, -1)
    window = pos.unsqueeze(1) - torch.arange(W, device=device)
    window = torch.where(text & (window >= G), window, -1)
    dist = tables.dist.long()[: len(config.dilated_distances)]
    dil = pos.unsqueeze(1) - dist
    dil = torch.where(text & (dil >= G), dil, -1)
    rand = tables.rand.long()[pos // tables.unit][:, : config.num_random]
    dup = (rand.unsqueeze(2) == dil.unsqueeze(1)).any(2)
    rand = torch.where(text & ~dup, rand, -1)
    return torch.cat([glob, window, dil, rand], dim=1)


def selected_index(config: HaloConfig, idx: torch.Tensor, sel) -> torch.Tensor:
    """[B, Hkv, L, n*b + S] the content-selected keys of every position from the kernel's selection tables
    (``interface.SelectionTables``): the chosen blocks' tokens not already in the row ``idx`` [L, K], then the
    summaries the row has as keys (positions L.. of k and the summary keys concatenated)."""
    G, W, b, m = config.num_globals, config.local_window, config.select_block_size, config.select_group_size
    L = idx.shape[0]
    blk = sel.blk.long()
    tok = blk.unsqueeze(-1) * b + torch.arange(b, device=idx.device) + G
    tok = torch.where(blk.unsqueeze(-1) >= 0, tok, -1).flatten(-2)
    dup = ((tok.unsqueeze(-1) == idx[None, None, :, None, :]) & (tok.unsqueeze(-1) >= 0)).any(-1)
    tok = torch.where(dup, -1, tok)
    j = torch.arange(sel.nsum, device=idx.device)
    pos = torch.arange(L, device=idx.device)
    first = pos - G - W + 1
    c = torch.minimum(
        torch.div(first + b - 1, b, rounding_mode="floor"), torch.div(pos - G + 1, b, rounding_mode="floor")
    )
    c = torch.where((pos >= G) & (first > 0), c, 0).view(1, 1, L, 1)
    fine = (j < sel.nb) & (j < c)
    if m:
        chosen = ((j // m).view(1, 1, 1, -1, 1) == sel.grps.long().unsqueeze(3)).any(-1)
        fine = fine & ((j >= (c // m) * m) | chosen)
        fine = fine | ((j >= sel.nb) & (j - sel.nb < c // m))
    summary = torch.where(fine & config.select_summary_keys, L + j, -1)
    return torch.cat([tok, summary.expand(*tok.shape[:3], -1)], dim=-1)


def naive_attention(
    q, k, v, tables: GraphTables, config: HaloConfig, selection=None, bias=None, token_bias=None
) -> torch.Tensor:
    """``selection`` (with content-selected blocks): (summary keys, summary values, SelectionTables);
    ``bias`` [Hkv]: the summary keys' logit bias (``select_summary_bias``), ``token_bias`` [Hkv] the chosen
    tokens' (``select_token_bias``), None for none."""
    idx = key_index(config, tables, q.shape[2], q.device)
    if selection is None:
        return gather_attention(q, k, v, idx)
    sk, sv, sel = selection
    chosen = selected_index(config, idx, sel)  # the chosen tokens right after the graph columns
    wide = torch.cat([idx.expand(*k.shape[:2], *idx.shape), chosen], dim=-1)
    cols = (idx.shape[1], idx.shape[1] + chosen.shape[-1] - sel.nsum)
    k_all, v_all = torch.cat([k, sk], 2), torch.cat([v, sv], 2)
    return gather_attention(q, k_all, v_all, wide, bias, k.shape[2], token_bias, cols)
