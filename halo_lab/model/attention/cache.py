"""The KV cache of cached decoding: the full cache (every position, dense and HALO-S) and HALO-S's exact
ring cache, with the decode layout that tells a decode step where its K keys sit."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph.selection import block_weights, key_bounds, num_summaries, route_keys, summaries


@dataclass
class DecodeLayout:
    """Where a HALO-S decode step finds its K keys in one layer's cache (the eval graph, on the device).

    A query at text position t needs the G globals, its window t-W+1..t, its dilated keys t-d and its R
    random keys. The cache holds the G globals in slots 0..G-1; text position s sits in slot G + s (full
    cache, ``ring=None``) or G + s % ring (ring cache). The tables cover the decode queries only, text
    positions ``base``..capacity-1 (row t - base): ``rand`` holds the *slots* of their random keys (-1 = no
    edge); ``store`` (ring cache only) the second slot each decode position is written to: its place in
    the random-key store when a later query uses it as a random key, else a trash slot (the last one).
    ``prefill_pos``/``prefill_slot``: the prompt positions that go to the store, and where. Built by
    ``decode_layout``: O(new tokens x R) integers, not the O(capacity x K) neighbour index."""

    num_globals: int
    offsets: torch.Tensor  # [W + D] long: 0..W-1 then the dilated distances
    rand: torch.Tensor  # [capacity - base, R] long cache slots, -1 = none
    globals_: torch.Tensor  # [G] long: 0..G-1
    row0: torch.Tensor  # [1] long: G + base, the full position of table row 0
    base: int = 0
    ring: int | None = None
    store: torch.Tensor | None = None  # [capacity - base] long
    prefill_pos: torch.Tensor | None = None
    prefill_slot: torch.Tensor | None = None
    kernel: object = None  # the Triton decode op (``decode_kernel_op``), None: the gather path
    select: HaloConfig | None = None  # with content-selected blocks: the config that defines them

    @property
    def num_keys(self) -> int:
        return self.num_globals + self.offsets.numel() + self.rand.shape[1]


def ring_size(config: HaloConfig) -> int:
    """Text slots a ring cache keeps: every key within the window or a dilated distance of a future query."""
    return max([config.local_window] + [d + 1 for d in config.dilated_distances])


def decode_layout(
    config: HaloConfig, layer: int, capacity: int, device, ring: bool = False, first_query: int = 0
) -> tuple[DecodeLayout, int]:
    """The decode layout of one layer for decode queries at text positions ``first_query..capacity-1``
    (the prompt's length..), and the number of cache slots it needs.

    ``ring=True`` (exact, see ``KVCache``): text slots ``ring_size(config)`` plus one store slot per distinct
    random key of those queries plus a trash slot. Falls back to the full layout when that is not smaller."""
    G, W = config.num_globals, config.local_window
    if ring and config.selects:
        raise ValueError(
            "cache='ring' cannot hold the content-selected blocks (select_blocks > 0): any old block may be "
            "chosen at any step; use cache='full'"
        )
    base = min(max(int(first_query), 0), capacity)
    dists = torch.tensor(config.dilated_distances, dtype=torch.long, device=device)
    offsets = torch.cat([torch.arange(W, device=device), dists])
    positions = torch.arange(base, capacity, device=device)
    rand_pos = graph.neighbor_index(config, layer, graph.EVAL_STEP, positions)[:, offsets.numel() :]
    globals_ = torch.arange(G, device=device)
    row0 = torch.tensor([G + base], dtype=torch.long, device=device)
    S = ring_size(config)
    if ring and capacity > S:
        keep = torch.unique(rand_pos[rand_pos >= 0])  # sorted text positions some decode query reads randomly
        if S + keep.numel() + 1 < capacity:
            trash = G + S + keep.numel()
            rank = torch.searchsorted(keep, positions).clamp(max=max(keep.numel() - 1, 0))
            hit = keep[rank] == positions if keep.numel() else torch.zeros_like(positions, dtype=torch.bool)
            store = torch.where(hit, G + S + rank, torch.full_like(positions, trash))
            slots = G + S + torch.searchsorted(keep, rand_pos.clamp(min=0))
            rand = torch.where(rand_pos >= 0, slots, torch.full_like(rand_pos, -1))
            early = keep < base
            lay = DecodeLayout(G, offsets, rand, globals_, row0, base, S, store)
            lay.prefill_pos = keep[early]
            lay.prefill_slot = G + S + torch.arange(int(early.sum()), device=device)  # keep is sorted
            return lay, trash + 1
    rand = torch.where(rand_pos >= 0, rand_pos + G, rand_pos)
    lay = DecodeLayout(G, offsets, rand, globals_, row0, base, select=config if config.selects else None)
    return lay, G + capacity


def summary_rows(config: HaloConfig, capacity: int) -> tuple[int, int]:
    """(block rows, group rows) of a cache's summary store for ``capacity`` text tokens: blocks rounded up
    to whole groups, so that a step can always recompute the group of its block."""
    b, m = config.select_block_size, config.select_group_size
    blocks = -(-capacity // b)
    if m:
        blocks = -(-blocks // m) * m
    return blocks, (blocks // m if m else 0)


@dataclass
class KVCache:
    """Keys and values (RoPE applied) of one layer.

    Full cache (the default): every position so far, in order (slot = position), for dense and HALO-S.
    Ring cache (HALO-S, ``layout.ring`` set): the last ``ring`` text positions (slot G + s % ring), which
    hold every window and dilated key a later query can ask for, plus a store of exactly the positions that
    the later queries use as *random* keys. The eval graph's random edges (block mode: one draw per block of
    queries, anywhere in the past outside the window) can point to any earlier position, so no window-sized
    cache alone is exact; but the eval graph is a fixed function of position, so the random keys of every
    query up to the capacity are known when the cache is made, and storing those is exact. The price: the
    capacity (prompt + new tokens) is fixed up front, and the multi-token ``append`` after a prefill (the
    ``_run`` decode path) is not supported; the one-token decode step is.
    Memory per layer and row: (G + ring + R' + 1) slots against dense's capacity, R' <= R x (blocks the
    new tokens span); with the defaults (W=64, distances up to 512) 522 slots at any context: the medium
    model (8 layers, 2 KV heads, d=64, bf16) at 128K context + 256 new tokens holds 2.0 MB against 513 MB
    (0.4%), plus 49 KB of index tables."""

    k: torch.Tensor  # [B, Hkv, slots, d]
    v: torch.Tensor
    length: int = 0
    layout: DecodeLayout | None = None  # HALO-S: the decode step's key slots; None: dense
    # with content-selected blocks: the block summaries (``summary_rows``: blocks, then groups), written
    # as blocks complete (the prefill writes the prompt's; each decode step its own block and group)
    summary_k: torch.Tensor | None = None
    summary_v: torch.Tensor | None = None
    summary_blocks: int = 0
    summary_pool: torch.Tensor | None = None  # the learned pooling's u (select_pooling=learned)
    summary_bias: torch.Tensor | None = None  # the summary keys' logit bias [Hkv] (select_summary_bias)
    token_bias: torch.Tensor | None = None  # the chosen tokens' logit bias [Hkv] (select_token_bias)
    router: tuple | None = None  # the choice's router (select_router_rank)
    summary_rk: torch.Tensor | None = None  # with a router: its routed keys' summaries, rows as summary_k
    # select_score=bound: the elementwise min and max of each block's (and group's) keys, rows as summary_k
    summary_lo: torch.Tensor | None = None
    summary_hi: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, device, dtype) -> KVCache:
        shape = (batch, heads, capacity, head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def decode_write_slots(self) -> tuple[int, int, torch.Tensor | None, int]:
        """Where the one-token decode step at full position ``pos`` writes its key and value, as numbers a
        kernel reads (``halo_lab.kernels.decode_qkv``): (G, ring, store, row0). The slot is ``pos`` (ring =
        0: a full cache, dense or HALO-S) or ``G + (pos - G) % ring`` (a ring cache), which also writes to
        ``store[pos - row0]`` (store None: no second slot). ``attention.static_decode_write`` does the same."""
        lay = self.layout
        if lay is None:
            return 0, 0, None, 0
        return lay.num_globals, lay.ring or 0, lay.store, lay.num_globals + lay.base

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        lay = self.layout
        if lay is not None and lay.ring is not None:
            if self.length:
                raise ValueError("a ring KV cache takes one prefill, then the one-token decode step only")
            self._ring_prefill(k, v)
            self.length = end
            return k, v
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        if self.summary_k is not None:
            self._write_summaries(end)
        return self.k[:, :, :end], self.v[:, :, :end]

    def add_summaries(
        self,
        config: HaloConfig,
        capacity: int,
        pool: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        token_bias: torch.Tensor | None = None,
        router: tuple | None = None,
    ) -> None:
        """Make the summary store of content-selected blocks for ``capacity`` text tokens (``pool``: the
        layer's learned pooling, None for the mean; ``bias``, ``token_bias``: its summary keys' and chosen
        tokens' logit biases, None for none; ``router``: the choice's, None for none). With a router the
        choice reads the routed keys' summaries (``summary_rk``) and bounds instead of the keys'."""
        self.summary_pool, self.summary_bias, self.token_bias = pool, bias, token_bias
        self.router = router
        blocks, groups = summary_rows(config, capacity)
        B, H, _, d = self.k.shape
        # fp32 whatever the cache's dtype: the choice is made from fp32 summaries (graph/selection.py)
        self.summary_k = self.k.new_zeros(B, H, blocks + groups, d, dtype=torch.float32)
        self.summary_v = self.v.new_zeros(B, H, blocks + groups, d, dtype=torch.float32)
        self.summary_blocks = blocks
        if router is not None:
            self.summary_rk = torch.zeros_like(self.summary_k)
        if config.select_score == "bound":
            self.summary_lo, self.summary_hi = (torch.zeros_like(self.summary_k) for _ in range(2))

    def _write_summaries(self, end: int) -> None:
        """The summaries of every complete block (and group) of the first ``end`` positions."""
        cfg, G = self.layout.select, self.layout.num_globals
        nb, ng = num_summaries(cfg, end - G)
        pool = self.summary_pool
        w = block_weights(self.v[:, :, :end].float(), cfg, G, pool) if pool is not None else None
        written = [
            (self.summary_k, summaries(self.k[:, :, :end].float(), cfg, G, w)),
            (self.summary_v, summaries(self.v[:, :, :end].float(), cfg, G, w)),
        ]
        if self.summary_rk is not None or self.summary_lo is not None:  # the keys the choice ranks
            rk = route_keys(self.k[:, :, :end], self.router)  # k without a router
        if self.summary_rk is not None:
            written.append((self.summary_rk, summaries(rk, cfg, G, w)))
        if self.summary_lo is not None:
            written += zip((self.summary_lo, self.summary_hi), key_bounds(rk, cfg, G))
        for store, s in written:
            store[:, :, :nb] = s[:, :, :nb]
            store[:, :, self.summary_blocks : self.summary_blocks + ng] = s[:, :, nb:]

    def _ring_prefill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        lay = self.layout
        G, S = lay.num_globals, lay.ring
        n = k.shape[2] - G
        if n != lay.base:
            raise ValueError(f"this ring KV cache was made for a {lay.base}-token prompt, got {n} tokens")
        self.k[:, :, :G], self.v[:, :, :G] = k[:, :, :G], v[:, :, :G]
        pos = torch.arange(max(0, n - S), n, device=k.device)
        self.k[:, :, G + pos % S] = k[:, :, G + pos]
        self.v[:, :, G + pos % S] = v[:, :, G + pos]
        if lay.prefill_pos.numel():
            self.k[:, :, lay.prefill_slot] = k[:, :, G + lay.prefill_pos]
            self.v[:, :, lay.prefill_slot] = v[:, :, G + lay.prefill_pos]
