"""Decode attention: new queries attend over a KV cache. ``static_decode_attention`` is the one-token step
with device-side positions (compiled and captured in a CUDA graph); the others take a few tokens at once
after a prefill."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph.reference import gather_attention
from halo_lab.model.attention.cache import DecodeLayout, KVCache


def decode_key_slots(layout: DecodeLayout, pos: torch.Tensor) -> torch.Tensor:
    """[K] cache slots of the keys of the query at full position ``pos`` ([1] long), -1 = no edge."""
    G = layout.num_globals
    text = pos - G - layout.offsets
    slot = G + (text if layout.ring is None else text % layout.ring)
    rand = layout.rand.index_select(0, pos - layout.row0).view(-1)
    return torch.cat([layout.globals_, torch.where(text >= 0, slot, torch.full_like(slot, -1)), rand])


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
    whole cache with a length mask (its real O(length) cost)."""
    lay = cache.layout
    if lay is None:
        cache.k.index_copy_(2, pos, k)
        cache.v.index_copy_(2, pos, v)
        visible = torch.arange(cache.k.shape[2], device=q.device) <= pos
        return F.scaled_dot_product_attention(
            q, cache.k, cache.v, attn_mask=visible[None, :], enable_gqa=q.shape[1] != cache.k.shape[1]
        )
    slot = pos if lay.ring is None else lay.num_globals + (pos - lay.num_globals) % lay.ring
    cache.k.index_copy_(2, slot, k)
    cache.v.index_copy_(2, slot, v)
    if lay.store is not None:
        extra = lay.store.index_select(0, pos - lay.row0)
        cache.k.index_copy_(2, extra, k)
        cache.v.index_copy_(2, extra, v)
    slots = decode_key_slots(lay, pos)
    if lay.kernel is not None:
        return lay.kernel(q, cache.k, cache.v, slots)
    return gather_decode_attention(q, cache.k, cache.v, slots)


def halo_decode_attention(q, k_all, v_all, config: HaloConfig, layer: int, step: int, start: int):
    """New text queries at text positions start.. attend over their neighbours in the cache.

    Cost per query is O(K): the window, dilated, random and global keys are gathered, not the prefix."""
    G = config.num_globals
    positions = torch.arange(start, start + q.shape[2], device=q.device)
    text = graph.neighbor_index(config, layer, step, positions)
    text = torch.where(text >= 0, text + G, text)
    glob = torch.arange(G, device=q.device).expand(q.shape[2], G)
    return gather_attention(q, k_all, v_all, torch.cat([glob, text], dim=1))


def dense_decode_attention(q, k_all, v_all) -> torch.Tensor:
    """New queries (the last positions of the cache) attend causally over the cache."""
    P, S = q.shape[2], k_all.shape[2]
    if P == 1:
        return F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=q.shape[1] != k_all.shape[1])
    mask = torch.ones(P, S, dtype=torch.bool, device=q.device).tril(S - P)
    return F.scaled_dot_product_attention(
        q, k_all, v_all, attn_mask=mask, enable_gqa=q.shape[1] != k_all.shape[1]
    )
