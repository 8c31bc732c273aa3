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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the reference's convention) on [..., L, head_dim] with [L, head_dim] tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Softmax attention of each query over its listed keys.

    q: [B, Hq, P, d]; k, v: [B, Hkv, S, d]; idx: [P, K] key positions in 0..S-1, -1 = no edge."""
    B, Hq, P, d = q.shape
    Hkv = k.shape[1]
    valid = idx >= 0
    flat = idx.clamp(min=0).reshape(-1)
    kg = k.index_select(2, flat).view(B, Hkv, P, -1, d)
    vg = v.index_select(2, flat).view(B, Hkv, P, -1, d)
    qg = q.view(B, Hkv, Hq // Hkv, P, d)
    scores = torch.einsum("bhgpd,bhpkd->bhgpk", qg, kg) / math.sqrt(d)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)).masked_fill(~valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.einsum("bhgpk,bhpkd->bhgpd", probs, vg)
    return out.reshape(B, Hq, P, d)


def reference_attention(q, k, v, config: HaloConfig, layer: int, step: int) -> torch.Tensor:
    """The oracle: every position attends over its explicit neighbour list."""
    idx = full_neighbor_index(config, layer, step, q.shape[2] - config.num_globals, q.device)
    return gather_attention(q, k, v, idx)
