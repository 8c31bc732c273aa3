"""Decode attention: new queries attend over a KV cache. ``static_decode_attention`` is the one-token step
with device-side positions (compiled and captured in a CUDA graph); the others take a few tokens at once
after a prefill."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph.reference import gather_attention, token_columns, with_selection
from halo_lab.graph.selection import (
    Selection,
    candidate_blocks,
    choose,
    route_keys,
    route_queries,
    summary_scores,
)
from halo_lab.model.attention.cache import DecodeLayout, KVCache
from halo_lab.model.attention.masked import selection_bias_mask, summary_bias_mask


def _key_slots(layout: DecodeLayout, pos: torch.Tensor) -> torch.Tensor:
    """[n, K] cache slots of the keys of the queries at full positions ``pos`` ([n] long), -1 = no edge."""
    G = layout.num_globals
    text = pos[:, None] - G - layout.offsets[None, :]
    slot = G + (text if layout.ring is None else text % layout.ring)
    window = torch.where(text >= 0, slot, torch.full_like(slot, -1))
    rand = layout.rand.index_select(0, pos - layout.row0)
    return torch.cat([layout.globals_.expand(pos.shape[0], -1), window, rand], dim=1)


def decode_key_slots(layout: DecodeLayout, pos: torch.Tensor) -> torch.Tensor:
    """[K] cache slots of the keys of the query at full position ``pos`` ([1] long), -1 = no edge."""
    return _key_slots(layout, pos).view(-1)


def decode_key_slot_table(layout: DecodeLayout) -> torch.Tensor:
    """``decode_key_slots`` of every decode query at once: [rows, K], row r the query at full position
    ``row0 + r`` (the rows of ``layout.rand``), so that a kernel can read its row instead of a step computing
    it (halo_lab/generation/persistent.py)."""
    return _key_slots(layout, layout.row0 + torch.arange(layout.rand.shape[0], device=layout.rand.device))


def gather_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor):
    """One query per row ([B, Hq, 1, d]) over the cache slots ``slots`` ([K], -1 = none): the torch path
    (and the reference of the Triton kernel): gather the K keys, then one SDPA call over them."""
    return F.scaled_dot_product_attention(
        q,
        k.index_select(2, slots.clamp(min=0)),
        v.index_select(2, slots.clamp(min=0)),
        attn_mask=(slots >= 0)[None, :],
        enable_gqa=q.shape[1] != k.shape[1],
    )


def static_decode_attention(q, k, v, cache: KVCache, pos: torch.Tensor) -> torch.Tensor:
    """One new position per row at device index ``pos`` ([1] long, a full-sequence position): shapes never
    depend on the length, so a decode step can be compiled and captured in a CUDA graph. HALO-S reads its
    K keys from the cache slots of ``cache.layout`` (one Triton kernel on CUDA); dense attends over the
    whole cache with a length mask (its real O(length) cost). The cache write, then the attention
    (``static_decode_write``, ``static_decode_attend``: a fused decode step writes in its own kernel)."""
    static_decode_write(k, v, cache, pos)
    return static_decode_attend(q, cache, pos)


def static_decode_write(k, v, cache: KVCache, pos: torch.Tensor) -> None:
    """Write the new position's key and value ([B, Hkv, 1, d]) into its cache slots (the torch version of
    ``KVCache.decode_write_slots``)."""
    lay = cache.layout
    slot = pos if lay is None or lay.ring is None else lay.num_globals + (pos - lay.num_globals) % lay.ring
    cache.k.index_copy_(2, slot, k)
    cache.v.index_copy_(2, slot, v)
    if lay is not None and lay.store is not None:
        extra = lay.store.index_select(0, pos - lay.row0)
        cache.k.index_copy_(2, extra, k)
        cache.v.index_copy_(2, extra, v)


def static_decode_attend(q, cache: KVCache, pos: torch.Tensor) -> torch.Tensor:
    """The attention of ``static_decode_attention`` ([B, Hq, 1, d] queries), the cache already written."""
    lay = cache.layout
    if lay is None:
        visible = torch.arange(cache.k.shape[2], device=q.device) <= pos
        return F.scaled_dot_product_attention(
            q, cache.k, cache.v, attn_mask=visible[None, :], enable_gqa=q.shape[1] != cache.k.shape[1]
        )
    slots = decode_key_slots(lay, pos)
    if lay.select is not None:
        return _selected_decode_attention(q, cache, pos, slots)
    if lay.kernel is not None:
        return lay.kernel(q, cache.k, cache.v, slots)
    return gather_decode_attention(q, cache.k, cache.v, slots)


def _refresh_summaries(cache: KVCache, block: torch.Tensor, rows: torch.Tensor, m: int, nb: int):
    """Write the summaries (and with the bound score the key extrema) of the block ``block`` whose cache
    rows are ``rows``, and of its group; (min, max) stores for the bound score, else None."""
    d = cache.k.shape[-1]
    weights = None
    if cache.summary_pool is not None:  # the learned pooling (select_pooling=learned)
        vb = cache.v.index_select(2, rows).float()
        logits = torch.einsum("bhkd,hd->bhk", vb, cache.summary_pool.float()) / math.sqrt(d)
        weights = torch.softmax(logits, dim=-1).unsqueeze(-1)
    rows_k = None  # the keys the choice ranks (k without a router), where a store reads them
    if cache.summary_rk is not None or cache.summary_lo is not None:
        rows_k = route_keys(cache.k.index_select(2, rows), cache.router)
    stores = [(cache.summary_k, cache.k), (cache.summary_v, cache.v)]
    if cache.summary_rk is not None:  # a router: its routed keys' summaries too
        stores.append((cache.summary_rk, None))
    for store, x in stores:  # fp32 stores
        rows_x = rows_k if x is None else x.index_select(2, rows).float()
        pooled = rows_x.mean(2) if weights is None else (rows_x * weights).sum(2)
        store.index_copy_(2, block, pooled.unsqueeze(2))
        if m:
            group = torch.div(block, m, rounding_mode="floor")
            fine = store.index_select(2, group * m + torch.arange(m, device=rows.device))
            store.index_copy_(2, nb + group, fine.mean(2, keepdim=True))
    bounds = None
    if cache.summary_lo is not None:  # select_score=bound: the block's (and group's) key min and max
        bounds = (cache.summary_lo, cache.summary_hi)
        for store, new in zip(bounds, (rows_k.amin(2), rows_k.amax(2))):
            store.index_copy_(2, block, new.unsqueeze(2))
            if m:
                group = torch.div(block, m, rounding_mode="floor")
                fine = store.index_select(2, group * m + torch.arange(m, device=rows.device))
                whole = fine.amin(2, keepdim=True) if store is bounds[0] else fine.amax(2, keepdim=True)
                store.index_copy_(2, nb + group, whole)
    return bounds


def _selected_decode_attention(q, cache: KVCache, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The one-token step with content-selected blocks (static shapes): refresh the summary of the new
    token's block and group, choose over the stored summaries, then one SDPA over the graph's keys, the
    chosen tokens and the summaries the query has as keys."""
    cfg, G = cache.layout.select, cache.layout.num_globals
    b, m, nb = cfg.select_block_size, cfg.select_group_size, cache.summary_blocks
    B, Hq, _, d = q.shape
    Hkv, last = cache.k.shape[1], cache.k.shape[2] - 1
    t = pos - G
    block = torch.div(t, b, rounding_mode="floor")
    rows = (G + block * b + torch.arange(b, device=q.device)).clamp(max=last)  # a partial block: unused
    bounds = _refresh_summaries(cache, block, rows, m, nb)
    qg = route_queries(q, cache.router).view(B, Hkv, Hq // Hkv, 1, d)
    ranked = cache.summary_k if cache.summary_rk is None else cache.summary_rk
    scores = summary_scores(cfg, qg, ranked, bounds) / math.sqrt(d)
    candidates = candidate_blocks(cfg, t)
    groups, blocks = choose(cfg, scores, candidates, nb)
    sk, sv = cache.summary_k.to(cache.k.dtype), cache.summary_v.to(cache.v.dtype)
    sel = Selection(cfg, t, candidates, groups, blocks, sk, sv, nb)
    tok = sel.token_index((slots - G)[None])[:, :, 0]  # [B, Hkv, n*b] text positions, -1 = none
    gather = (G + tok).clamp(min=0).unsqueeze(-1).expand(-1, -1, -1, d)
    keys = torch.cat([cache.k.index_select(2, slots.clamp(min=0)).expand(B, -1, -1, -1),
                      torch.gather(cache.k, 2, gather), sk], dim=2)  # fmt: skip
    values = torch.cat([cache.v.index_select(2, slots.clamp(min=0)).expand(B, -1, -1, -1),
                        torch.gather(cache.v, 2, gather), sv], dim=2)  # fmt: skip
    mask = torch.cat([(slots >= 0).expand(B, Hkv, -1), tok >= 0, sel.summary_mask()[:, :, 0]], dim=-1)
    mask = mask.repeat_interleave(Hq // Hkv, dim=1)[:, :, None, :]
    first = mask.shape[-1] - sk.shape[2]  # the summaries' columns: the last S
    if cache.token_bias is not None:  # additive: the chosen tokens' bias on their columns
        chosen = torch.zeros_like(mask[..., :first])
        chosen[..., slots.shape[-1] :] = (tok >= 0).repeat_interleave(Hq // Hkv, dim=1)[:, :, None, :]
        mask = selection_bias_mask(mask, chosen, cache.token_bias, cache.summary_bias, first, q.dtype)
    elif cache.summary_bias is not None:  # additive: the bias on the summaries' columns
        mask = summary_bias_mask(mask, cache.summary_bias, first, q.dtype)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=Hq != Hkv)


def halo_decode_attention(
    q, k_all, v_all, config: HaloConfig, layer: int, step: int, start: int, pool=None, bias=None,
    token_bias=None, router=None,
):  # fmt: skip
    """New text queries at text positions start.. attend over their neighbours in the cache (``pool``,
    ``bias``, ``token_bias``, ``router``: the layer's learned summary pooling, summary and chosen-token
    logit biases and the choice's router, content-selected blocks).

    Cost per query is O(K): the window, dilated, random and global keys are gathered, not the prefix."""
    G = config.num_globals
    positions = torch.arange(start, start + q.shape[2], device=q.device)
    text = graph.neighbor_index(config, layer, step, positions)
    text = torch.where(text >= 0, text + G, text)
    glob = torch.arange(G, device=q.device).expand(q.shape[2], G)
    idx = torch.cat([glob, text], dim=1)
    length = k_all.shape[2]  # the summaries come after: keys length.. carry the bias
    cols = token_columns(config, idx.shape[1])
    if config.selects:
        k_all, v_all, idx = with_selection(q, k_all, v_all, config, positions, idx, pool, router)
    return gather_attention(q, k_all, v_all, idx, bias, length, token_bias, cols)


def dense_decode_attention(q, k_all, v_all) -> torch.Tensor:
    """New queries (the last positions of the cache) attend causally over the cache."""
    P, S = q.shape[2], k_all.shape[2]
    if P == 1:
        return F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=q.shape[1] != k_all.shape[1])
    mask = torch.ones(P, S, dtype=torch.bool, device=q.device).tril(S - P)
    return F.scaled_dot_product_attention(
        q, k_all, v_all, attn_mask=mask, enable_gqa=q.shape[1] != k_all.shape[1]
    )
