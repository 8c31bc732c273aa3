"""The naive form of what the fused kernels compute, from the same tables (for tests, not for speed).

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


def naive_attention(q, k, v, tables: GraphTables, config: HaloConfig) -> torch.Tensor:
    return gather_attention(q, k, v, key_index(config, tables, q.shape[2], q.device))
