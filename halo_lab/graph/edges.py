"""The HALO-S connectivity graph, in one place.

Positions: the model prepends G global tokens, so a sequence of N text tokens becomes L = G + N
positions; text token i sits at position G + i. Edges of text token i (all into the past or itself):

* globals: the G global positions (always);
* window: text keys i-W+1 .. i (self included);
* dilated: text key i-d for each distance d in ``config.dilated_distances`` (all >= W, so outside the
  window; with the default rule d = offset * W);
* random: R text keys drawn from i's past outside the window, [0, i-W].

Global token g attends to globals 0..g (they sit before the text, so they never see it).

Random edges are a pure function of (graph_seed, layer, step, unit, slot) through a counter-based hash,
so they are identical on every process and in every backend, cached generation included, and the edges
of position i do not depend on the sequence length. ``unit`` is the text position (``token`` mode) or
the index of the block of ``graph_block_size`` positions that holds the query (``block`` mode: all
queries of a block share their random keys, drawn from before the block's first query minus W). In
token mode the R keys avoid each other and the dilated keys, so a token with a long enough past has
exactly K = G + W + D + R distinct keys; in block mode a random key that lands on a token's dilated key
counts once (the graph is a set). Training uses the trainer's step; evaluation uses EVAL_STEP, so the
eval graph is fixed per layer.
"""

from __future__ import annotations

import torch

from halo_lab.config import HaloConfig
from halo_lab.graph.hashing import M32, mix32, stream_key

EVAL_STEP = -1


def _skip_sorted(rank: torch.Tensor, excluded_sorted: torch.Tensor) -> torch.Tensor:
    """Map ranks among the integers minus an excluded set to the integers themselves.

    ``excluded_sorted`` is [P, E], ascending per row (use a huge value for "no exclusion")."""
    for e in range(excluded_sorted.shape[1]):
        rank = rank + (rank >= excluded_sorted[:, e : e + 1]).long()
    return rank


def _sample_distinct(hash_rows: torch.Tensor, pool: torch.Tensor, count: int) -> torch.Tensor:
    """Draw ``count`` distinct integers in [0, pool) per row, -1 where the pool runs out.

    hash_rows: [P] int64 per-row hash; pool: [P] int64 pool sizes."""
    picks: list[torch.Tensor] = []
    for slot in range(count):
        u = mix32(hash_rows ^ ((slot * 0x27D4EB2F) & M32))
        remaining = (pool - slot).clamp(min=0)
        x = (u * remaining) >> 32  # uniform in [0, remaining)
        if picks:
            prev = torch.stack(picks, dim=1).sort(dim=1).values
            prev = torch.where(prev < 0, torch.full_like(prev, 1 << 40), prev)
            x = _skip_sorted(x.unsqueeze(1), prev).squeeze(1)
        picks.append(torch.where(remaining > 0, x, torch.full_like(x, -1)))
    return torch.stack(picks, dim=1) if picks else hash_rows.new_empty(hash_rows.shape[0], 0)


def graph_key(config: HaloConfig) -> tuple:
    """The config fields that decide the graph: a cache key for anything built from it (masks, tables)."""
    return (
        config.num_globals,
        config.local_window,
        config.dilated_distances,
        config.num_random,
        config.random_edges,
        config.graph_block_size,
        config.graph_seed,
    )


def random_unit(config: HaloConfig, positions: torch.Tensor) -> torch.Tensor:
    """The sampling unit of each text position: itself, or its block of the full (globals + text) sequence."""
    if config.random_edges == "token":
        return positions
    return (positions + config.num_globals) // config.graph_block_size


def random_keys(config: HaloConfig, layer: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """[P, R] random text keys of the given text positions (-1 where the past is too short)."""
    return _random_keys(config, stream_key(config.graph_seed, layer, step), positions.long())


def random_keys_layers(config: HaloConfig, layers: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """[layers, P, R] ``random_keys`` of layers 0..layers-1 at once: one set of small kernels per training
    step instead of one per layer (a step's host time at small batch)."""
    keys = torch.tensor([stream_key(config.graph_seed, i, step) for i in range(layers)], dtype=torch.long)
    if positions.is_cuda:  # pinned + non_blocking: no host sync
        keys = keys.pin_memory().to(positions.device, non_blocking=True)
    P = positions.shape[0]
    out = _random_keys(config, keys.repeat_interleave(P), positions.long().repeat(layers))
    return out.view(layers, P, -1)


def _random_keys(config: HaloConfig, key, positions: torch.Tensor) -> torch.Tensor:
    """``random_keys`` for a stream key that is an int or a tensor of one key per position."""
    R, W = config.num_random, config.local_window
    if config.random_edges == "token":
        # ascending keys; built from Python ints, so no host-to-device copy (and no sync) on the GPU
        dists = config.dilated_distances[::-1]
        dil_keys = torch.stack([positions - d for d in dists], 1) if dists else positions[:, None][:, :0]
        n_dil = (dil_keys >= 0).sum(1)
        pool = (positions - W + 1).clamp(min=0) - n_dil
        rows = mix32(key ^ (positions & M32))
        ranks = _sample_distinct(rows, pool, R)
        excluded = torch.where(dil_keys >= 0, dil_keys, torch.full_like(dil_keys, 1 << 40))
        keys = _skip_sorted(ranks, excluded.sort(dim=1).values)
        return torch.where(ranks >= 0, keys, torch.full_like(keys, -1))
    # per position, not per unique unit: the same values without torch.unique's host sync
    units = random_unit(config, positions)
    first_query = (units * config.graph_block_size - config.num_globals).clamp(min=0)
    pool = (first_query - W + 1).clamp(min=0)
    return _sample_distinct(mix32(key ^ (units & M32)), pool, R)


def neighbor_index(config: HaloConfig, layer: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """[P, W + D + R] text keys of each text position: window, dilated, random; -1 marks no edge.

    Rows hold no duplicates and no key after its query. Global keys are implicit (every row has them)."""
    positions = positions.long()
    device = positions.device
    offsets = torch.cat(
        [
            torch.arange(config.local_window, device=device),
            torch.tensor(config.dilated_distances, dtype=torch.long, device=device),
        ]
    )
    static = positions.unsqueeze(1) - offsets.unsqueeze(0)
    static = torch.where(static >= 0, static, torch.full_like(static, -1))
    rand = random_keys(config, layer, step, positions)
    if config.random_edges == "block" and rand.numel():
        dilated = static[:, config.local_window :]
        dup = (rand.unsqueeze(2) == dilated.unsqueeze(1)).any(2) & (rand >= 0)
        rand = torch.where(dup, torch.full_like(rand, -1), rand)
    return torch.cat([static, rand], dim=1)


def full_neighbor_index(config: HaloConfig, layer: int, step: int, seq_len: int, device) -> torch.Tensor:
    """[L, G + W + D + R] keys over the full sequence (globals then text) for every position; -1 = none."""
    G = config.num_globals
    text = neighbor_index(config, layer, step, torch.arange(seq_len, device=device))
    text = torch.where(text >= 0, text + G, text)
    glob = torch.arange(G, device=device).expand(seq_len, G)
    rows = torch.cat([glob, text], dim=1)
    if G:
        # global query g sees globals 0..g
        q = torch.arange(G, device=device).unsqueeze(1)
        k = torch.arange(G, device=device).unsqueeze(0)
        head = torch.full((G, rows.shape[1]), -1, dtype=torch.long, device=device)
        head[:, :G] = torch.where(k <= q, k.expand(G, G), torch.full((G, G), -1, device=device))
        rows = torch.cat([head, rows], dim=0)
    return rows


def dense_mask(config: HaloConfig, layer: int, step: int, seq_len: int, device=None) -> torch.Tensor:
    """[L, L] boolean adjacency (query, key). For tests and small-N inspection only: it is O(L^2)."""
    idx = full_neighbor_index(config, layer, step, seq_len, device)
    L = idx.shape[0]
    mask = torch.zeros(L, L + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, torch.where(idx >= 0, idx, torch.full_like(idx, L)), True)
    return mask[:, :L]
