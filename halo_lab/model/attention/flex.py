"""``flex``: one block-sparse FlexAttention kernel over the whole graph, with a BlockMask built from the
graph's tile layout and a mask_mod that encodes the same edge set. Compiled on CUDA; eager (forward
only, unfused) elsewhere."""

from __future__ import annotations

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig

try:  # FlexAttention ships with torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    HAS_FLEX = True
    try:  # torch >= 2.9: return_aux replaces return_lse
        from torch.nn.attention.flex_attention import AuxRequest as _AuxRequest
    except ImportError:
        _AuxRequest = None
except ImportError:  # pragma: no cover - old torch
    HAS_FLEX = False

_compiled_flex = None


def _flex_kernel():
    """flex_attention compiled once per process on CUDA (eager elsewhere: slow but exact)."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo

        # one compiled kernel per (length, dtype) bucket; the default cache limit (8) is too small for sweeps
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def to_block_mask(layout: graph.BlockLayout, mask_mod) -> BlockMask:
    """A FlexAttention BlockMask from a tile layout; mask_mod runs only on the partial tiles."""
    L = layout.seq_len
    return BlockMask.from_kv_blocks(
        layout.kv_num_blocks[None, None],
        layout.kv_indices[None, None],
        layout.full_kv_num_blocks[None, None],
        layout.full_kv_indices[None, None],
        BLOCK_SIZE=layout.block_size,
        mask_mod=mask_mod,
        seq_lengths=(L, L),
    )


class FlexGraphMask:
    """A BlockMask for one (layer, length, device), rebuilt in place when the training step changes.

    The random-key table is updated in place so the compiled kernel, which captures it through the
    mask_mod, is reused across steps instead of recompiled."""

    def __init__(self, config: HaloConfig, layer: int, text_len: int, device: torch.device):
        self.config, self.layer, self.text_len, self.device = config, layer, text_len, device
        self.step: int | None = None
        G, W, N = config.num_globals, config.local_window, text_len
        positions = torch.arange(N, device=device)
        units = graph.random_unit(config, positions)
        self.unit_of_pos = units - units[0]
        n_units = int(self.unit_of_pos[-1]) + 1 if N else 1
        self.rand_table = torch.full((n_units, config.num_random), -1, dtype=torch.long, device=device)
        dists = config.dilated_distances
        R = config.num_random
        rand_table, unit_of_pos = self.rand_table, self.unit_of_pos

        def mask_mod(b, h, q_idx, kv_idx):
            qi, ki = q_idx - G, kv_idx - G
            dist = qi - ki
            text_edge = dist < W
            for d in dists:
                text_edge = text_edge | (dist == d)
            if R:
                row = unit_of_pos[qi.clamp(0, N - 1)]
                for j in range(R):
                    text_edge = text_edge | (rand_table[row, j] == ki)
            return (kv_idx <= q_idx) & ((kv_idx < G) | ((qi >= 0) & (ki >= 0) & text_edge))

        self.mask_mod = mask_mod
        self.block_mask: BlockMask | None = None
        self.layout: graph.BlockLayout | None = None

    def get(self, step: int) -> BlockMask:
        if step != self.step or self.block_mask is None:
            cfg, N = self.config, self.text_len
            if cfg.num_random and N:
                raw = graph.random_keys(cfg, self.layer, step, torch.arange(N, device=self.device))
                table = torch.full_like(self.rand_table, -1)
                table[self.unit_of_pos] = raw  # block mode: the rows of one unit are identical
                self.rand_table.copy_(table)
            self.layout = graph.block_layout(cfg, self.layer, step, N, self.device)
            self.block_mask = to_block_mask(self.layout, self.mask_mod)
            self.step = step
        return self.block_mask


_flex_masks: dict[tuple, FlexGraphMask] = {}


def flex_graph_mask(config: HaloConfig, layer: int, text_len: int, device: torch.device) -> FlexGraphMask:
    """Block masks cached per (graph config, layer, length, device)."""
    key = (graph.graph_key(config), layer, text_len, str(device))
    entry = _flex_masks.get(key)
    if entry is None:
        entry = _flex_masks[key] = FlexGraphMask(config, layer, text_len, device)
    return entry


def flex_graph_attention(q, k, v, config: HaloConfig, layer: int, step: int) -> torch.Tensor:
    text_len = q.shape[2] - config.num_globals
    block_mask = flex_graph_mask(config, layer, text_len, q.device).get(step)
    if q.is_cuda:
        kernel = _flex_kernel()
    else:  # eager, forward-only: the CPU flex path refuses inputs that require grad even under no_grad
        kernel = flex_attention
        if not torch.is_grad_enabled():
            q, k, v = q.detach(), k.detach(), v.detach()
    return kernel(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
