"""``hybrid``: two paths merged by their log-sum-exp: the window through a block-sparse FlexAttention
kernel (a narrow band of tiles), the ~G + D + R long-range keys gathered per KV head."""

from __future__ import annotations

import math

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.model.attention.flex import _AuxRequest, _flex_kernel, flex_attention, to_block_mask


def gather_attention_lse(q, k, v, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``gather_attention`` but also returns the log-sum-exp [B, Hq, P] (-inf for rows with no key)."""
    B, Hq, P, d = q.shape
    Hkv = k.shape[1]
    if idx.shape[1] == 0:  # no long-range edges at all (an ablated graph)
        return torch.zeros_like(q), torch.full((B, Hq, P), float("-inf"), device=q.device)
    valid = idx >= 0
    flat = idx.clamp(min=0).reshape(-1)
    kg = k.index_select(2, flat).view(B, Hkv, P, -1, d)
    vg = v.index_select(2, flat).view(B, Hkv, P, -1, d)
    scores = torch.einsum("bhgpd,bhpkd->bhgpk", q.view(B, Hkv, Hq // Hkv, P, d), kg) / math.sqrt(d)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    scores = scores.masked_fill(~valid, float("-inf"))
    top = scores.amax(-1, keepdim=True).detach()  # the result does not depend on the shift
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = torch.einsum("bhgpk,bhpkd->bhgpd", (weights / safe).to(v.dtype), vg).reshape(B, Hq, P, d)
    lse = (top + safe.log()).squeeze(-1).reshape(B, Hq, P)
    lse = torch.where(valid.any(-1), lse, torch.full_like(lse, float("-inf")))
    return out, lse


class WindowMask:
    """BlockMask of the local part of the graph (text windows and the globals' rows); step-independent."""

    def __init__(self, config: HaloConfig, text_len: int, device: torch.device):
        G, W = config.num_globals, config.local_window
        layout = graph.layout_from_index(
            graph.window_index(config, text_len, device), config.graph_block_size
        )

        def mask_mod(b, h, q_idx, kv_idx):
            text_key = (kv_idx >= G) & (q_idx - kv_idx < W)
            return (kv_idx <= q_idx) & torch.where(q_idx >= G, text_key, kv_idx < G)

        self.layout = layout
        self.block_mask = to_block_mask(layout, mask_mod)


_window_masks: dict[tuple, WindowMask] = {}
_extra_indices: dict[tuple, tuple[int, torch.Tensor]] = {}


def hybrid_attention(q, k, v, config: HaloConfig, layer: int, step: int) -> torch.Tensor:
    """Two paths merged by their log-sum-exp: the window through a block-sparse FlexAttention kernel (a
    narrow band of tiles), the ~G + D + R long-range keys gathered per KV head. The two edge sets
    partition the graph, so the merge is exactly softmax attention over the whole graph."""
    G = config.num_globals
    text_len = q.shape[2] - G
    key = (graph.graph_key(config), text_len, str(q.device))
    window = _window_masks.get(key)
    if window is None:
        window = _window_masks[key] = WindowMask(config, text_len, q.device)
    cached = _extra_indices.get(key + (layer,))
    if cached is None or cached[0] != step:
        cached = _extra_indices[key + (layer,)] = (
            step,
            graph.extra_index(config, layer, step, text_len, q.device),
        )
    if q.is_cuda:
        local, local_lse = _flex_with_lse(_flex_kernel(), q, k, v, window.block_mask)
    else:
        if not torch.is_grad_enabled():
            q, k, v = q.detach(), k.detach(), v.detach()
        local, local_lse = _flex_with_lse(flex_attention, q, k, v, window.block_mask)
    if q.is_cuda:  # compiled: the gather becomes indirect loads instead of B x H x L x E x d copies
        return _far_kernel()(q, k, v, cached[1], local, local_lse)
    return _far_and_merge(q, k, v, cached[1], local, local_lse)


def _flex_with_lse(fn, q, k, v, block_mask):
    """(output, log-sum-exp) of flex_attention: ``return_aux`` where torch has it (``return_lse`` is
    deprecated there and warns on every call), ``return_lse`` on older torch."""
    gqa = q.shape[1] != k.shape[1]
    if _AuxRequest is not None:
        out, aux = fn(q, k, v, block_mask=block_mask, enable_gqa=gqa, return_aux=_AuxRequest(lse=True))
        return out, aux.lse
    return fn(q, k, v, block_mask=block_mask, enable_gqa=gqa, return_lse=True)


def _far_and_merge(q, k, v, idx, local, local_lse) -> torch.Tensor:
    far, far_lse = gather_attention_lse(q, k, v, idx)
    return merge_by_lse(local, local_lse, far, far_lse)


_compiled_far = None


def _far_kernel():
    global _compiled_far
    if _compiled_far is None:
        _flex_kernel()  # raises dynamo's cache limit once
        _compiled_far = torch.compile(_far_and_merge, dynamic=False)
    return _compiled_far


def merge_by_lse(out_a, lse_a, out_b, lse_b) -> torch.Tensor:
    """Softmax attention over the union of two disjoint key sets, from each set's output and log-sum-exp."""
    acc = torch.promote_types(out_a.dtype, torch.float32)
    total = torch.logaddexp(lse_a.to(acc), lse_b.to(acc))
    out = out_a.to(acc) * torch.exp(lse_a.to(acc) - total).unsqueeze(-1)
    return (out + out_b.to(acc) * torch.exp(lse_b.to(acc) - total).unsqueeze(-1)).to(out_a.dtype)
