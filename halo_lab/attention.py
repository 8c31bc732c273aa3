"""Attention backends over the HALO graph, the dense baseline's attention, and the KV cache.

* ``reference_attention``: gathers each query's K neighbours and runs a softmax over them. Simple and
  obviously right; it materialises B x H x L x K x d, so it is the oracle, not the fast path.
* ``flex_attention`` backend: FlexAttention with a BlockMask built from the graph's tile layout and a
  mask_mod that encodes the same edge set. Compiled on CUDA; eager (unfused) elsewhere.
* ``dense_attention``: causal SDPA for the baseline.
* ``decode_attention``: queries at the end of a KV cache attend over their gathered neighbours.

Tensors are laid out [B, heads, L, head_dim]; K/V have ``num_kv_heads`` heads (grouped-query attention).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
MASKED_MAX_LEN = 4096  # an L x L boolean mask is cheap on a CPU up to here
AUTO_CUDA_BACKEND = "triton"  # fastest attention and training step at every length (experiments/bench)
# auto uses the fused kernels up to this head_dim: the shapes measured on an H200 (16-64; smaller or odd
# ones run zero-padded). head_dim 128 in bf16 hit a CUDA error there (experiments/bench/kernel_notes.md);
# it stays selectable with attention_backend=triton, and auto uses flex for it.
TRITON_AUTO_MAX_HEAD_DIM = 64


def _flex_kernel():
    """flex_attention compiled once per process on CUDA (eager elsewhere: slow but exact)."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo

        # one compiled kernel per (length, dtype) bucket; the default cache limit (8) is too small for sweeps
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the reference's convention) on [..., L, head_dim] with [L, head_dim] tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@functools.cache
def _has_triton() -> bool:  # asked on every layer call: look the package up once
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors only under its interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and _has_triton()


def resolve_backend(config: HaloConfig, device: torch.device, seq_len: int | None = None) -> str:
    """``auto``: the fused Triton kernels on CUDA (flex for a head_dim or a query heads per KV head ratio
    they do not cover: the ratio must be a power of two); elsewhere SDPA
    with the graph as a boolean mask up to MASKED_MAX_LEN positions, the reference gather beyond."""
    if config.attention_backend != "auto":
        return config.attention_backend
    # FlexAttention compiles through Triton, which needs compute capability 7.0 or newer
    fused = HAS_FLEX and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)
    if fused:
        group = config.num_heads // config.num_kv_heads
        covered = config.head_dim <= TRITON_AUTO_MAX_HEAD_DIM and group & (group - 1) == 0
        return AUTO_CUDA_BACKEND if _has_triton() and covered else "flex"
    return "masked" if seq_len is not None and seq_len <= MASKED_MAX_LEN else "reference"


_warned: set[str] = set()
_compile_failed: set[tuple] = set()  # (backend, dtype, q shape, kv heads, device type) that did not compile


def _compile_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import BackendCompilerFailed

        errors.append(BackendCompilerFailed)
    except ImportError:  # pragma: no cover - old torch
        pass
    import torch._inductor.exc as inductor_exc

    # InductorError wraps lowering failures in recent torch ("LoweringException: NoValidChoicesError: ..")
    errors += [
        getattr(inductor_exc, n) for n in ("InductorError", "LoweringException") if hasattr(inductor_exc, n)
    ]
    return tuple(errors)


_COMPILE_ERRORS = _compile_errors()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


# ------------------------------------------------------------------------------------ reference


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
    idx = graph.full_neighbor_index(config, layer, step, q.shape[2] - config.num_globals, q.device)
    return gather_attention(q, k, v, idx)


# ------------------------------------------------------------------------------------ masked (CPU)

_masks: dict[tuple, tuple[int, torch.Tensor]] = {}


def masked_attention(q, k, v, config: HaloConfig, layer: int, step: int) -> torch.Tensor:
    """SDPA with the graph as an L x L boolean mask: O(L^2) memory, so only for short CPU sequences,
    where it is several times faster than the gather (fused kernels, no B x H x L x K x d copies)."""
    text_len = q.shape[2] - config.num_globals
    key = (_graph_key(config), layer, text_len, str(q.device))
    cached = _masks.get(key)
    if cached is None or cached[0] != step:
        cached = _masks[key] = (step, graph.dense_mask(config, layer, step, text_len, q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=cached[1], enable_gqa=q.shape[1] != k.shape[1])


# ------------------------------------------------------------------------------------ flex


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
    key = (_graph_key(config), layer, text_len, str(device))
    entry = _flex_masks.get(key)
    if entry is None:
        entry = _flex_masks[key] = FlexGraphMask(config, layer, text_len, device)
    return entry


_graph_key = graph.graph_key


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


# ------------------------------------------------------------------------------------ hybrid (two paths)


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
    key = (_graph_key(config), text_len, str(q.device))
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


# ------------------------------------------------------------------------------------ dense


def dense_attention(q, k, v) -> torch.Tensor:
    """Causal SDPA (flash / memory-efficient kernels where available)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


# The backend that last ran, by grad mode ("training" / "inference"): what a fallback really ran, for
# the runner's metrics.json (resolve_backend only says what was asked for).
last_backend_used: dict[str, str] = {}


def _ran(backend: str) -> str:
    last_backend_used["training" if torch.is_grad_enabled() else "inference"] = backend
    return backend


def halo_attention(q, k, v, config: HaloConfig, layer: int, step: int, backend: str) -> torch.Tensor:
    """Full-sequence HALO attention with the named backend (q/k/v include the global positions)."""
    if backend in ("flex", "hybrid"):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            _warn_once("FlexAttention has no backward on CPU: using the reference backend for this pass")
            _ran("reference")
            return reference_attention(q, k, v, config, layer, step)
        key = (backend, q.dtype, tuple(q.shape[1:]), k.shape[1], q.device.type)
        if key not in _compile_failed:
            try:
                out = (hybrid_attention if backend == "hybrid" else flex_graph_attention)(
                    q, k, v, config, layer, step
                )
                _ran(backend)
                return out
            except _COMPILE_ERRORS as e:
                # Inductor can find no kernel for some shapes/dtypes (seen: float32 prefill, 8 query heads
                # on 2 KV heads, H200). Same function, another backend; never retry the failed compile.
                _compile_failed.add(key)
                _warn_once(
                    f"attention_backend={backend} failed to compile for {q.dtype} q{tuple(q.shape)} "
                    f"({type(e).__name__}): using the masked/reference backend for this shape"
                )
        fallback = "masked" if q.shape[2] <= MASKED_MAX_LEN else "reference"
        return halo_attention(q, k, v, config, layer, step, fallback)
    if backend == "triton":
        if q.is_cuda or triton_interpreted():
            from halo_lab.kernels.halo_attention import halo_triton_attention

            _ran(backend)
            return halo_triton_attention(q, k, v, config, layer, step)
        _warn_once("attention_backend=triton needs CUDA (or TRITON_INTERPRET=1): using the reference backend")
        _ran("reference")
        return reference_attention(q, k, v, config, layer, step)
    if backend == "reference":
        _ran(backend)
        return reference_attention(q, k, v, config, layer, step)
    if backend == "masked":
        _ran(backend)
        return masked_attention(q, k, v, config, layer, step)
    raise ValueError(
        f"attention_backend={backend!r} is not a HALO backend (reference, masked, triton, flex, hybrid, auto)"
    )


# ------------------------------------------------------------------------------------ KV cache


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
    return DecodeLayout(G, offsets, rand, globals_, row0, base), G + capacity


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

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, device, dtype) -> KVCache:
        shape = (batch, heads, capacity, head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

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
        return self.k[:, :, :end], self.v[:, :, :end]

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


DECODE_KERNEL = "auto"  # "auto": the Triton kernel on CUDA when it imports and passes its check; "torch"
_decode_kernel_ok: dict[tuple, bool] = {}


def check_decode_kernel(device, dtype) -> bool:
    """Run the Triton decode kernel once on a small input (eagerly: call before compiling or capturing) and
    remember whether it matches the gather path; a failing kernel is warned about and not used."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype)
    if key in _decode_kernel_ok:
        return _decode_kernel_ok[key]
    ok = False
    if DECODE_KERNEL != "torch" and device.type == "cuda":
        try:
            from halo_lab.kernels import decode as kdecode

            if kdecode.available():
                g = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(2, 4, 1, 64, device=device, dtype=dtype, generator=g)
                k, v = (torch.randn(2, 2, 100, 64, device=device, dtype=dtype, generator=g) for _ in range(2))
                slots = torch.tensor([0, 1, 5, -1, 50, 99, 7], device=device)
                out = kdecode.halo_decode_attention_op(q, k, v, slots)
                ref = kdecode.reference_decode_attention(q, k, v, slots)
                ok = bool((out.float() - ref.float()).abs().max() < 5e-2)
                if not ok:
                    _warn_once("the Triton decode kernel disagrees with the gather path: not using it")
        except Exception as e:  # noqa: BLE001 - any failure: the gather path is exact
            _warn_once(f"the Triton decode kernel failed ({type(e).__name__}: {e}): using the gather path")
    _decode_kernel_ok[key] = ok
    return ok


def decode_kernel_op(device, dtype):
    """The Triton decode kernel as a torch op for ``device``/``dtype``, or None (use the gather path)."""
    if not check_decode_kernel(device, dtype):
        return None
    return torch.ops.halo_lab.halo_decode_attention.default


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
