"""The graph as the fused kernel reads it: a few small device tensors, built once and reused.

The window and the globals need no table (they are ranges). The dilated distances are a [D] int32 tensor.
The random keys are a [U, R] int32 table of full-sequence positions (-1 = none): one row per block of
``graph_block_size`` positions in ``block`` mode (every query of a block shares its keys), one row per
position in ``token`` mode. The table of a (layer, length, device) is allocated once and refilled in place
when the training step changes, from the same counter-based hash as ``halo_lab.graph`` (so every backend
sees the same edges); no host sync, no per-step allocation.

The content-selected part's tables (interface.SelectionTables) come from the two helpers at the end: every
position's choices padded to the kernels' widths, and each query tile's distinct choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig


@dataclass
class GraphTables:
    dist: torch.Tensor  # [max(D, 1)] int32 dilated distances
    rand: torch.Tensor  # [U, max(R, 1)] int32 random keys (full positions), -1 = none
    unit: int  # positions per row of ``rand``: graph_block_size (block mode) or 1 (token mode)
    step: int | None = None


@dataclass
class _LayerTables:
    dist: torch.Tensor
    rand: torch.Tensor  # [layers, U, max(R, 1)]
    step: int | None = None


_tables: dict[tuple, _LayerTables] = {}
MAX_CACHED = 64  # (graph, length, device) entries kept, oldest dropped first


def random_table(config: HaloConfig, layers: int, step: int, seq_len: int, device) -> torch.Tensor:
    """[layers, U, R] random keys in full positions for a sequence of ``seq_len`` positions (globals
    included), for layers 0..layers-1."""
    G, unit = config.num_globals, _unit(config)
    n_units = (seq_len + unit - 1) // unit
    first = torch.arange(n_units, device=device) * unit  # first full position of each row
    text = (first - G).clamp(min=0)  # a text position whose random keys are the row's
    keys = graph.random_keys_layers(config, layers, step, text)
    keys = torch.where(keys >= 0, keys + G, keys)
    no_text = (first + unit - 1 < G).view(1, -1, 1)  # rows made only of global positions
    return torch.where(no_text, torch.full_like(keys, -1), keys).to(torch.int32)


def _unit(config: HaloConfig) -> int:
    return config.graph_block_size if config.random_edges == "block" else 1


def graph_tables(config: HaloConfig, layer: int, step: int, seq_len: int, device) -> GraphTables:
    """The tables of one (graph, layer, length, device). Every layer's random table is refilled in place,
    all at once, when ``step`` changes."""
    layers = max(config.num_layers, layer + 1)
    # the eval graph (step < 0) keeps its own tables: a validation pass never refills a training step's
    key = (graph.graph_key(config), layers, seq_len, str(device), step < 0)
    entry = _tables.get(key)
    if entry is None:
        dist = torch.tensor(list(config.dilated_distances) or [0], dtype=torch.int32).to(device)
        n_units = (seq_len + _unit(config) - 1) // _unit(config)
        shape = (layers, n_units, max(config.num_random, 1))
        if len(_tables) >= MAX_CACHED:  # prompts of many lengths (generation) must not grow it forever
            _tables.pop(next(iter(_tables)))
        entry = _tables[key] = _LayerTables(dist, torch.full(shape, -1, dtype=torch.int32, device=device))
    if entry.step != step:
        if config.num_random:
            entry.rand.copy_(random_table(config, layers, step, seq_len, device))
        entry.step = step
    return GraphTables(entry.dist, entry.rand[layer], _unit(config), step)


def padded_choices(t: torch.Tensor, width: int, head: int) -> torch.Tensor:
    """[B, H, N, n] -> [B, H, head + N, width] int32: -1 before (the global rows) and after (the columns)."""
    return torch.nn.functional.pad(t.to(torch.int32), (0, width - t.shape[-1], head, 0), value=-1)


def distinct_per_tile(t: torch.Tensor, block_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, H, NT, U], [B, H, NT]) the distinct non-negative entries of ``t`` [B, H, L, n] (-1 = none) over
    each tile of ``block_t`` positions, ascending, -1 after them, and how many."""
    B, H, L, _ = t.shape
    nt = -(-L // block_t)
    tiles = t if nt * block_t == L else torch.nn.functional.pad(t, (0, 0, 0, nt * block_t - L), value=-1)
    big = torch.iinfo(torch.int32).max
    # none (-1) with its sign bit off is int32's max: it sorts after every entry
    tiles = (tiles.reshape(B, H, nt, -1) & big).sort(-1).values
    later = tiles[..., 1:]
    later.masked_fill_(later == tiles[..., :-1], big)  # an entry's repeats, then sorted after the entries
    tiles = tiles.sort(-1).values
    valid = tiles < big
    return torch.where(valid, tiles, -1), valid.sum(-1, dtype=torch.int32)
