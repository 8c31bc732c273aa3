"""``masked``: SDPA with the graph as an L x L boolean mask (the CPU training path). With content-selected
blocks the mask grows by the summaries' columns and becomes one per batch row and head, built from the same
``Selection`` that the reference turns into index tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph.selection import select

_masks: dict[tuple, tuple[int, torch.Tensor]] = {}


def masked_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, pool=None, bias=None, token_bias=None, router=None
) -> torch.Tensor:
    """SDPA with the graph as an L x L boolean mask: O(L^2) memory, so only for short CPU sequences,
    where it is several times faster than the gather (fused kernels, no B x H x L x K x d copies).
    ``bias`` [Hkv] (the summary keys' logit bias) and ``token_bias`` [Hkv] (the chosen tokens'): the mask
    becomes additive, each on its columns. ``router``: the choice's router (``select_router_rank``)."""
    text_len = q.shape[2] - config.num_globals
    key = (graph.graph_key(config), layer, text_len, str(q.device))
    cached = _masks.get(key)
    if cached is None or cached[0] != step:
        cached = _masks[key] = (step, graph.dense_mask(config, layer, step, text_len, q.device))
    mask = cached[1]
    if config.selects:
        L = k.shape[2]
        k, v, mask, tokens = _with_selection(q, k, v, config, mask, pool, router)
        if token_bias is not None:
            mask = selection_bias_mask(mask, tokens, token_bias, bias, L, q.dtype)
        elif bias is not None:
            mask = summary_bias_mask(mask, bias, L, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _with_selection(q, k, v, config: HaloConfig, mask: torch.Tensor, pool=None, router=None):
    """(k, v, mask, tokens) with the summaries appended to k and v and the [L, L] graph mask widened to
    [B, Hq, L, L + S]: each text query's chosen tokens and the summaries it has as keys; ``tokens``
    [B, Hq, L, L]: the chosen tokens that are not graph keys (what ``select_token_bias`` biases)."""
    G = config.num_globals
    B, Hq, L, _ = q.shape
    Hkv = k.shape[1]
    sel = select(q[:, :, G:], k, v, config, torch.arange(L - G, device=q.device), pool, router=router)
    tok = sel.token_index()  # duplicates of graph keys need no removal in a mask: it is a set
    chosen = torch.zeros(B, Hkv, L - G, L + 1, dtype=torch.bool, device=q.device)
    chosen.scatter_(-1, torch.where(tok >= 0, tok + G, L), True)
    text = torch.cat([chosen[..., :L], sel.summary_mask()], dim=-1)
    wide = torch.cat([mask.new_zeros(B, Hkv, G, text.shape[-1]), text], dim=2)
    S = sel.summary_k.shape[2]
    tokens = (wide[..., :L] & ~mask).repeat_interleave(Hq // Hkv, dim=1)
    wide[..., :L] |= mask
    wide = wide.repeat_interleave(Hq // Hkv, dim=1)  # SDPA broadcasts a mask over heads, not KV groups
    return torch.cat([k, sel.summary_k], 2), torch.cat([v, sel.summary_v], 2), wide[..., : L + S], tokens


def summary_bias_mask(mask: torch.Tensor, bias: torch.Tensor, first: int, dtype) -> torch.Tensor:
    """The boolean mask [B, Hq, P, S] as SDPA's additive mask in ``dtype``: 0 for an edge, -inf for none,
    plus ``bias`` [Hkv] (each KV head's, for its query heads) on the columns ``first``.. (the summaries)."""
    B, Hq = mask.shape[:2]
    add = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    head_bias = bias.to(dtype).repeat_interleave(Hq // bias.shape[0]).view(1, Hq, 1, 1)
    return torch.cat([add[..., :first], add[..., first:] + head_bias], dim=-1)


def selection_bias_mask(mask, tokens, token_bias, bias, first: int, dtype) -> torch.Tensor:
    """``summary_bias_mask`` (or the plain additive mask without ``bias``) plus ``token_bias`` [Hkv] on the
    chosen tokens' entries ``tokens`` [B, Hq, P, first] (columns ..first)."""
    Hq = mask.shape[1]
    if bias is None:
        add = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    else:
        add = summary_bias_mask(mask, bias, first, dtype)
    head_bias = token_bias.to(dtype).repeat_interleave(Hq // token_bias.shape[0]).view(1, Hq, 1, 1)
    return torch.cat([add[..., :first] + tokens * head_bias, add[..., first:]], dim=-1)
