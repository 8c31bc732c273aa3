"""The graph as tiles: which (query block, key block) tiles hold edges (FlexAttention's BlockMask layout),
and the two-path split of the graph into its local part and its long-range part."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from halo_lab.config import HaloConfig
from halo_lab.graph.edges import EVAL_STEP, full_neighbor_index

# ---------------------------------------------------------------------------------------- block masks


@dataclass
class BlockLayout:
    """Block-sparse description of the graph, in the layout FlexAttention's BlockMask takes."""

    kv_num_blocks: torch.Tensor  # [nQ] partial blocks per query block
    kv_indices: torch.Tensor  # [nQ, nK]
    full_kv_num_blocks: torch.Tensor  # [nQ] blocks where every edge is present (mask_mod skipped)
    full_kv_indices: torch.Tensor  # [nQ, nK]
    block_size: int
    seq_len: int  # L

    @property
    def computed_blocks(self) -> int:
        return int(self.kv_num_blocks.sum() + self.full_kv_num_blocks.sum())


def block_layout(config: HaloConfig, layer: int, step: int, seq_len: int, device) -> BlockLayout:
    """Which (query block, key block) tiles hold edges of the whole graph, and which tiles are complete."""
    idx = full_neighbor_index(config, layer, step, seq_len, device)
    return layout_from_index(idx, config.graph_block_size)


def layout_from_index(idx: torch.Tensor, block_size: int) -> BlockLayout:
    """Tile layout of an [L, K] key table (rows without duplicate keys; -1 = none)."""
    BS, device = block_size, idx.device
    L = idx.shape[0]
    nb = (L + BS - 1) // BS
    q_block = (torch.arange(L, device=device) // BS).unsqueeze(1)
    # missing edges count in an extra bin: no boolean indexing, so no host sync on the GPU
    tile = torch.where(idx >= 0, q_block * nb + idx // BS, nb * nb)
    counts = torch.bincount(tile.flatten(), minlength=nb * nb + 1)[: nb * nb].view(nb, nb)
    present = counts > 0
    full = counts == BS * BS  # rows have no duplicate keys, so a count of BS*BS means a complete tile
    partial = present & ~full

    def to_indices(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = sel.sum(1).to(torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return num, order

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    return BlockLayout(kv_num, kv_idx, full_num, full_idx, BS, L)


# ------------------------------------------------------------------------------------ two-path split


def split_columns(config: HaloConfig) -> tuple[slice, slice]:
    """Columns of ``full_neighbor_index`` that hold the globals and the local window."""
    G, W = config.num_globals, config.local_window
    return slice(0, G), slice(G, G + W)


def window_index(config: HaloConfig, seq_len: int, device) -> torch.Tensor:
    """[L, G + W] the local part of the graph: each text token's window, and the globals' own rows.

    Together with ``extra_index`` it partitions the graph: every edge is in exactly one of the two."""
    no_extras = config.replace(dilated_offsets=[], num_random=0)
    idx = full_neighbor_index(no_extras, 0, EVAL_STEP, seq_len, device)
    idx[config.num_globals :, : config.num_globals] = -1  # text rows reach the globals via the extras
    return idx


def extra_index(config: HaloConfig, layer: int, step: int, seq_len: int, device) -> torch.Tensor:
    """[L, G + D + R] the long-range part: globals, dilated and random keys of text rows (none for globals)."""
    idx = full_neighbor_index(config, layer, step, seq_len, device)
    _, window = split_columns(config)
    extras = torch.cat([idx[:, : window.start], idx[:, window.stop :]], dim=1)
    extras[: config.num_globals] = -1
    return extras
