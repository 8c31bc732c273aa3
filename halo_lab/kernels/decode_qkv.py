"""A decode step's q/k/v projection, RoPE and KV-cache write in one launch.

The batch-1 decode step is launch-bound (kernel_notes.md, section "Decode step"): per layer the q/k/v
GEMV (``halo_lab.kernels.gemv``, norm prologue fused in) was followed by RoPE on q and k and the two cache
writes, one more kernel a layer even with Inductor fusing them. ``decode_qkv`` does all of it in the
GEMV's launch: ``qkv = norm(x) @ W_qkv.T``, rotate-half RoPE on the q and k heads at the device-side
position ``pos``, k and v stored into the cache slot(s) of ``pos``, and q returned as [B, Hq, 1, d], the
layout the decode attention (``halo_lab.kernels.decode``, SDPA, the selection path) reads.

RoPE pairs row i of a head with row i + d/2 (``o1 = x1 cos - x2 sin``, ``o2 = x2 cos + x1 sin``). A
program takes BLOCK_P such pairs and holds both rows of each, interleaved (row 2j the pair's first half,
2j + 1 its second) in one [2 BLOCK_P, CHUNK] weight tile: the GEMV's body (``gemv._rows_dot``) runs on
it unchanged and its sums split into the two halves afterwards. v's rows are paired the same way and
only skip the rotation, so every program runs the same code wherever its rows fall (q, k or v).

Block sizes: the GEMV's (``gemv.block_sizes``): tiles of about 2048 weight values, 2 BLOCK_P = BLOCK_N
rows. The medium model (hidden 512, 8/2 heads of 64): q/k/v 768 x 512, 2 pairs a program, 192 programs,
as the plain q/k/v GEMV.

Cache slots (``attention.decode_write_slots``): ``pos`` (full cache), ``G + (pos - G) % ring`` (HALO-S's
ring cache), and for a ring cache also ``store[pos - row0]`` (its random-key store or trash slot).

Rounding follows the unfused step: the product is rounded to the weight's dtype (the GEMV's output), RoPE
is computed in fp32 from that and the cos/sin tables' values and rounded once (as Inductor's fused RoPE
does), then stored. ``reference_decode_qkv`` is the plain-torch oracle; the kernel runs on CPU under
Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
``decode_qkv_op`` is the same function as a torch custom op that mutates the two caches, so that a
``torch.compile``d step calls it as one kernel.
"""

from __future__ import annotations

import torch

from halo_lab.graph.reference import apply_rope
from halo_lab.kernels import gemv as kg
from halo_lab.kernels import pdl

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False


def available() -> bool:
    return HAS_TRITON


def write_slots(
    pos: torch.Tensor, num_globals: int = 0, ring: int = 0, store: torch.Tensor | None = None, row0: int = 0
) -> list[torch.Tensor]:
    """The [1] long cache slots the position ``pos`` is written to (see the module doc)."""
    slots = [pos if not ring else num_globals + (pos - num_globals) % ring]
    if store is not None:
        slots.append(store.index_select(0, pos - row0))
    return slots


def reference_decode_qkv(
    x: torch.Tensor,
    w: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    num_heads: int,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    num_globals: int = 0,
    ring: int = 0,
    store: torch.Tensor | None = None,
    row0: int = 0,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused ops: q [B, Hq, 1, d] (roped); k (roped) and v written into the caches [B, Hkv, S, d] at
    the slots of ``pos``. x [B, C]; w [(Hq + 2 Hkv) d, C]; cos, sin [positions, d] tables; ``acc``: the
    input is x + acc rounded (the split-K FFN's sums, ``gemv.reference_gemv``)."""
    B, d = x.shape[0], cos.shape[-1]
    Hkv = k_cache.shape[1]
    qkv = kg.reference_gemv(x, w, norm=norm, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps, acc=acc)
    q, k, v = qkv.view(B, -1, 1, d).split([num_heads, Hkv, Hkv], dim=1)
    c, s = cos.index_select(0, pos).float(), sin.index_select(0, pos).float()
    q, k = (apply_rope(t.float(), c, s).to(t.dtype) for t in (q, k))  # fp32, rounded once
    for slot in write_slots(pos, num_globals, ring, store, row0):
        k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
        v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
    return q.contiguous()


if HAS_TRITON:

    @triton.jit
    def _store_kv(ptr, b, sb, sh, ss, slot, hh, i, o1, o2, mask, HALF: tl.constexpr):
        """The pairs' two halves into (row b, head hh, slot) of a cache."""
        base = ptr + b * sb + hh * sh + slot * ss + i
        tl.store(base, o1.to(ptr.dtype.element_ty), mask=mask)
        tl.store(base + HALF, o2.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _decode_qkv_kernel(
        x_ptr, w_ptr, q_ptr, k_ptr, v_ptr, nw_ptr, nb_ptr, cos_ptr, sin_ptr, pos_ptr, store_ptr,
        acc_ptr, xo_ptr, zero_ptr, zero2_ptr,
        K, sxb, swn, sqb, skb, skh, sks, svb, svh, svs, scos, ssin, sab, sxo, szb, sz2b,
        eps, num_globals, ring, row0,
        HQ: tl.constexpr,
        HKV: tl.constexpr,
        HALF: tl.constexpr,
        NORM: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        RING: tl.constexpr,
        HAS_STORE: tl.constexpr,
        BLOCK_P: tl.constexpr,
        CHUNK: tl.constexpr,
        ONE_CHUNK: tl.constexpr,
        PDL: tl.constexpr,
        ACC: tl.constexpr,
        FFN_OUT: tl.constexpr,
        ZERO2: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may launch while this one runs; no store before _rows_dot's wait (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        n_pairs = (HQ + 2 * HKV) * HALF
        # the tile's rows: pair j's first half at 2j, its second at 2j + 1 (a head's rows: h * 2 HALF + ...)
        r = tl.arange(0, 2 * BLOCK_P)
        pr = pid * BLOCK_P + r // 2
        rows = (pr // HALF) * (2 * HALF) + pr % HALF + (r % 2) * HALF
        acc = kg._rows_dot(
            x_ptr + b * sxb, w_ptr, rows, pr < n_pairs, swn, nw_ptr, nb_ptr, K, eps,
            NORM, HAS_BIAS, False, 2 * BLOCK_P, CHUNK, ONE_CHUNK, PDL, acc_ptr + b * sab, ACC,
        )  # fmt: skip
        if FFN_OUT:  # for the split-K FFN after it (see decode_qkv): program 0 of each row, after the wait
            if pid == 0:
                dt = w_ptr.dtype.element_ty
                for k0 in range(0, K, CHUNK):
                    kk = k0 + tl.arange(0, CHUNK)
                    in_k = kk < K
                    xr = kg._x(x_ptr + b * sxb, acc_ptr + b * sab, kk, in_k, ACC, dt)
                    tl.store(xo_ptr + b * sxo + kk, xr.to(dt), mask=in_k)
                    tl.store(zero_ptr + b * szb + kk, tl.zeros([CHUNK], dtype=tl.float32), mask=in_k)
                    if ZERO2:  # the split attention's sums (decode_attn_o_split), one kernel later
                        tl.store(zero2_ptr + b * sz2b + kk, tl.zeros([CHUNK], dtype=tl.float32), mask=in_k)
        # the GEMV's rounding (its output's dtype), then the two halves of each pair
        y = acc.to(w_ptr.dtype.element_ty).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(y, [BLOCK_P, 2]))
        p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        h = p // HALF  # 0..HQ-1 q heads, then HKV k heads, then HKV v heads
        i = p % HALF
        in_p = p < n_pairs
        pos = tl.load(pos_ptr)
        c1 = tl.load(cos_ptr + pos * scos + i).to(tl.float32)
        c2 = tl.load(cos_ptr + pos * scos + HALF + i).to(tl.float32)
        s1 = tl.load(sin_ptr + pos * ssin + i).to(tl.float32)
        s2 = tl.load(sin_ptr + pos * ssin + HALF + i).to(tl.float32)
        roped = h < HQ + HKV  # q and k; v passes through
        o1 = tl.where(roped, x1 * c1 - x2 * s1, x1).to(w_ptr.dtype.element_ty)
        o2 = tl.where(roped, x2 * c2 + x1 * s2, x2).to(w_ptr.dtype.element_ty)
        is_q = in_p & (h < HQ)
        tl.store(q_ptr + b * sqb + h * (2 * HALF) + i, o1, mask=is_q)
        tl.store(q_ptr + b * sqb + h * (2 * HALF) + HALF + i, o2, mask=is_q)
        is_k = in_p & (h >= HQ) & (h < HQ + HKV)
        is_v = in_p & (h >= HQ + HKV)
        slot = pos
        if RING:
            slot = num_globals + (pos - num_globals) % ring
        _store_kv(k_ptr, b, skb, skh, sks, slot, h - HQ, i, o1, o2, is_k, HALF)
        _store_kv(v_ptr, b, svb, svh, svs, slot, h - HQ - HKV, i, o1, o2, is_v, HALF)
        if HAS_STORE:  # a ring cache's second copy: the random-key store (or its trash slot)
            extra = tl.load(store_ptr + pos - row0)
            _store_kv(k_ptr, b, skb, skh, sks, extra, h - HQ, i, o1, o2, is_k, HALF)
            _store_kv(v_ptr, b, svb, svh, svs, extra, h - HQ - HKV, i, o1, o2, is_v, HALF)


def _check(x, w, cos, k_cache, v_cache, num_heads, norm, norm_weight) -> None:
    kg.check_norm(norm, norm_weight)
    B, Hkv, _, d = k_cache.shape
    if d % 2 or cos.shape[-1] != d:
        raise ValueError(f"RoPE needs an even head_dim and tables as wide: d={d}, tables {cos.shape[-1]}")
    if w.shape != ((num_heads + 2 * Hkv) * d, x.shape[1]) or num_heads % Hkv:
        raise ValueError(f"W_qkv {tuple(w.shape)} is not [({num_heads} + 2 x {Hkv}) x {d}, {x.shape[1]}]")
    if v_cache.shape != k_cache.shape or x.shape[0] != B:
        raise ValueError(f"caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)} for {x.shape[0]} rows")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or cos.stride(-1) != 1:
        raise ValueError("the caches' and tables' last dimension must be contiguous")


def decode_qkv(
    x: torch.Tensor,
    w: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    num_heads: int,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    num_globals: int = 0,
    ring: int = 0,
    store: torch.Tensor | None = None,
    row0: int = 0,
    acc: torch.Tensor | None = None,
    ffn_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The Triton kernel: what ``reference_decode_qkv`` computes, in one launch (see the module doc).

    For the split-K FFN (``decode_ffn``): ``acc`` makes the input x + acc rounded (the FFN before's sums),
    and ``ffn_out`` = (x_res [B, C], zero [B, C] fp32[, zero2 [B, C] fp32]) receives that input (the
    layer's residual) and zeros (the sums of this layer's FFN, which launches two kernels later, and of
    its split attention + o-projection, one kernel later)."""
    _check(x, w, cos, k_cache, v_cache, num_heads, norm, norm_weight)
    if acc is not None and (acc.shape != x.shape or acc.dtype != torch.float32):
        raise ValueError(f"acc {tuple(acc.shape)} {acc.dtype}: need fp32 in x's shape {tuple(x.shape)}")
    B, Hkv, _, d = k_cache.shape
    x, w = x.contiguous(), w.contiguous()
    q = torch.empty(B, num_heads, 1, d, device=x.device, dtype=w.dtype)
    nw = norm_weight if norm_weight is not None else w
    nb = norm_bias if norm_bias is not None else nw
    block_n, chunk = kg.block_sizes(w.shape[1])
    block_p = block_n // 2
    grid = (triton.cdiv((num_heads + 2 * Hkv) * d // 2, block_p), B)
    acc = acc.contiguous() if acc is not None else x
    xo, zero, *zero2 = ffn_out if ffn_out is not None else (x, acc)
    zero2 = zero2[0] if zero2 else zero
    _decode_qkv_kernel[grid](
        x, w, q, k_cache, v_cache, nw, nb, cos, sin, pos, store if store is not None else pos,
        acc, xo, zero, zero2,
        w.shape[1], x.stride(0), w.stride(0), q.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        cos.stride(0), sin.stride(0), acc.stride(0), xo.stride(0), zero.stride(0), zero2.stride(0),
        eps, num_globals, max(ring, 1), row0,
        HQ=num_heads,
        HKV=Hkv,
        HALF=d // 2,
        NORM=kg.NORMS[norm],
        HAS_BIAS=norm_bias is not None,
        RING=ring > 0,
        HAS_STORE=store is not None,
        BLOCK_P=block_p,
        CHUNK=chunk,
        ONE_CHUNK=w.shape[1] <= chunk,
        ACC=acc is not x,
        FFN_OUT=ffn_out is not None,
        ZERO2=zero2 is not zero,
        num_warps=4,
        **pdl.launch_options(),
    )  # fmt: skip
    return q


decode_qkv_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_qkv", mutates_args=("k_cache", "v_cache"))
    def decode_qkv_op(
        x: torch.Tensor,
        w: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        store: torch.Tensor | None,
        norm: str,
        eps: float,
        num_heads: int,
        num_globals: int,
        ring: int,
        row0: int,
    ) -> torch.Tensor:
        return decode_qkv(
            x, w, cos, sin, pos, k_cache, v_cache, num_heads=num_heads, norm=norm, norm_weight=norm_weight,
            norm_bias=norm_bias, eps=eps, num_globals=num_globals, ring=ring, store=store, row0=row0,
        )  # fmt: skip

    @decode_qkv_op.register_fake
    def _(x, w, norm_weight, norm_bias, cos, sin, pos, k_cache, v_cache, store, norm, eps, num_heads, *_):
        return x.new_empty(x.shape[0], num_heads, 1, k_cache.shape[-1], dtype=w.dtype)


def _qkv_ffn(
    x, acc, w, nw, nb, cos, sin, pos, k_cache, v_cache, store, norm, eps, heads, g, ring, row0, zeros
):
    """The body of the two ops below: q, the residual x + acc, and ``zeros`` fp32 buffers zeroed, each its
    own allocation (Inductor and mutated views of one allocation: experiments/bench/README.md, "Eighth
    session")."""
    x_res = torch.empty(x.shape, device=x.device, dtype=w.dtype)
    zero = tuple(torch.empty(x.shape, device=x.device, dtype=torch.float32) for _ in range(zeros))
    q = decode_qkv(
        x, w, cos, sin, pos, k_cache, v_cache, num_heads=heads, norm=norm, norm_weight=nw, norm_bias=nb,
        eps=eps, num_globals=g, ring=ring, store=store, row0=row0, acc=acc, ffn_out=(x_res, *zero),
    )  # fmt: skip
    return q, x_res, *zero


def _qkv_ffn_fake(x, w, k_cache, num_heads: int, zeros: int):
    q = x.new_empty(x.shape[0], num_heads, 1, k_cache.shape[-1], dtype=w.dtype)
    return (
        q,
        x.new_empty(x.shape, dtype=w.dtype),
        *(x.new_empty(x.shape, dtype=torch.float32) for _ in range(zeros)),
    )


decode_qkv_ffn_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_qkv_ffn", mutates_args=("k_cache", "v_cache"))
    def decode_qkv_ffn_op(
        x: torch.Tensor,
        acc: torch.Tensor | None,
        w: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        store: torch.Tensor | None,
        norm: str,
        eps: float,
        num_heads: int,
        num_globals: int,
        ring: int,
        row0: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode_qkv_op`` in a step with the split-K FFN: (q, the layer's residual x + acc, this layer's
        FFN sums zeroed); ``acc``: the previous layer's FFN sums (None: the first layer)."""
        args = (x, acc, w, norm_weight, norm_bias, cos, sin, pos, k_cache, v_cache, store, norm, eps)
        return _qkv_ffn(*args, num_heads, num_globals, ring, row0, zeros=1)

    @decode_qkv_ffn_op.register_fake
    def _(x, acc, w, norm_weight, norm_bias, cos, sin, pos, k_cache, v_cache, store, norm, eps, heads, *_):
        return _qkv_ffn_fake(x, w, k_cache, heads, zeros=1)


decode_qkv_ffn_split_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_qkv_ffn_split", mutates_args=("k_cache", "v_cache"))
    def decode_qkv_ffn_split_op(
        x: torch.Tensor,
        acc: torch.Tensor | None,
        w: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        store: torch.Tensor | None,
        norm: str,
        eps: float,
        num_heads: int,
        num_globals: int,
        ring: int,
        row0: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode_qkv_ffn_op`` with the attention + o-projection split over KV heads after it
        (``decode_attn_o.decode_attn_o_split``): (q, the residual, the FFN's sums zeroed, the attention's
        sums zeroed)."""
        args = (x, acc, w, norm_weight, norm_bias, cos, sin, pos, k_cache, v_cache, store, norm, eps)
        return _qkv_ffn(*args, num_heads, num_globals, ring, row0, zeros=2)

    @decode_qkv_ffn_split_op.register_fake
    def _(x, acc, w, norm_weight, norm_bias, cos, sin, pos, k_cache, v_cache, store, norm, eps, heads, *_):
        return _qkv_ffn_fake(x, w, k_cache, heads, zeros=2)
