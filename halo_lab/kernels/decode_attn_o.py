"""A HALO-S decode step's attention over its K graph keys and the o-projection (+ residual) in one launch.

After ``decode_qkv`` (q roped, the cache written) the batch-1 step ran the decode attention
(``halo_lab.kernels.decode``: one program per query head, 8 programs on the medium model) and then the
o-projection GEMV with the residual add (``gemv``): two launches a layer, ~3 µs each, both latency-bound
(kernel_notes.md, section "Decode step"). ``decode_attn_o`` does both in one.

Design: each program owns BLOCK_N output rows of ``x + attn @ W_o.T`` and recomputes every head's
attention for them: per KV head it loads the K key and value rows once (the slots are the same for
every head: the graph depends on the position only) and runs its query heads over them, then multiplies
each head's d outputs by its [BLOCK_N, d] slice of W_o. So no program waits for another: no fp32
atomics, no second pass for the rounding and the residual, and the sums have a fixed order. A split over
KV heads needs both: ``decode_attn_o_split`` at the end of this module, for the step with the split-K FFN,
whose kernel does the rounding and the residual add.
Every query head is a row of one product each way against a KV head's keys (q . K^T, then p . V; Hq
padded to HP >= 16 rows, tl.dot's smallest), and each row keeps the output of its own KV head. In bf16 the
products run on the tensor cores: q . K^T of bf16 values is exact in fp32, and p goes in as two bf16
halves (p = hi + lo, about 16 bits), so the result matches the decode attention kernel's fp32 math to
~1e-5; fp32 caches take fp32 products (``IEEE``). The fp32 products for bf16 too (the version before
2026-12-06) spilled about 5 KB a thread on sm_90 (``experiments/bench/kernel_regs.py``); this one spills
none. The first version ran one head at a time, 8 chains of dependent reductions per program, and took
12.8 µs a launch on an H100 (the attention kernel and the GEMV it replaces: about 6;
experiments/bench/kernel_notes.md, "Decode step, 2026-12-05"). This one takes 6.9 µs under PDL and the
step is slower with it (experiments/bench/README.md, "Tenth session: issue 30 timed"), so the decoder
keeps it off (``Decoder.fused_attn_o``). Each program loads its whole [BLOCK_N, Hq, d] tile of
W_o first, then (under PDL, ``pdl.py``) waits for the kernel before it, so the weights stream while that
kernel still runs; the heads' outputs form one [Hq, d] tile for a single product with it.
The price is the attention recomputed by every program: 2 Hkv x K x d values read per program (the
medium model: 2 x 2 x 72 x 64 x 2 bytes = 37 KB, from L2 after the first programs), against the
16 KB of W_o each program streams.

Block sizes: BLOCK_N = C / 64 rows (2..16), so that about 64 programs stream W_o (hidden 512: 8 rows, 64
programs; the o-projection GEMV alone ran 128 programs of 4 rows); BLOCK_K = the K keys padded to a power
of two, BLOCK_D = d: one [BLOCK_K, d] key tile and one value tile in registers per KV head, as the
decode attention kernel holds them.

Rounding follows the unfused step: each head's attention output is rounded to q's dtype (the attention
kernel's output), the product to the weight's dtype, then the residual is added and the sum rounded (the
GEMV's epilogue). ``reference_decode_attn_o`` is the plain-torch oracle; the kernel runs on CPU under
Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
Only the fixed graph's key list: dense attention (the whole cache) and content-selected blocks (keys
chosen per row and head) keep the attention + GEMV.
"""

from __future__ import annotations

import math

import torch

from halo_lab.kernels import gemv as kg
from halo_lab.kernels import pdl
from halo_lab.kernels.decode import reference_decode_attention
from halo_lab.kernels.launch import INTERPRETED

try:
    import triton
    import triton.language as tl

    from halo_lab.kernels.halo_attention.common import mma

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

PROGRAMS = 64  # programs streaming W_o (BLOCK_N = C / PROGRAMS rows each, clamped to 2..16)


def available() -> bool:
    return HAS_TRITON


def reference_decode_attn_o(q, k_cache, v_cache, slots, w_o, residual) -> torch.Tensor:
    """The unfused ops: ``residual + attention(q over the slots) @ w_o.T``; q [B, Hq, 1, d], caches
    [B, Hkv, S, d], slots [K] (-1 = none), w_o [C, Hq d], residual [B, C]; [B, C] in w_o's dtype."""
    y = reference_decode_attention(q, k_cache, v_cache, slots)
    return kg.reference_gemv(y.reshape(q.shape[0], -1), w_o, residual=residual)


def block_n(rows: int) -> int:
    """BLOCK_N for an o-projection of ``rows`` outputs (see the module doc)."""
    return min(16, max(2, triton.next_power_of_2(triton.cdiv(rows, PROGRAMS))))


if HAS_TRITON:

    @triton.jit
    def _kv_head_attention(q, kt, vt, valid, scale, IEEE: tl.constexpr, UPCAST: tl.constexpr):
        """Every row of q [HP, BLOCK_D] against one KV head's keys and values [BLOCK_K, BLOCK_D]: the decode
        attention kernel's fp32 math (halo_lab/kernels/decode.py). IEEE: fp32 caches, fp32 products; bf16
        / fp16: their products are exact in fp32, summed in fp32 on the tensor cores, p as two 16-bit
        halves (p = hi + lo to ~16 bits)."""
        s = mma(q, tl.trans(kt), IEEE, UPCAST)
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        p = tl.where(valid[None, :], p, 0.0)
        p = p / tl.sum(p, axis=1)[:, None]
        if IEEE:
            return mma(p, vt.to(tl.float32), True, UPCAST)  # [HP, BLOCK_D]
        p_hi = p.to(vt.dtype)
        p_lo = (p - p_hi.to(tl.float32)).to(vt.dtype)
        return mma(p_hi, vt, False, UPCAST) + mma(p_lo, vt, False, UPCAST)

    @triton.jit
    def _attn_o_kernel(
        q_ptr, k_ptr, v_ptr, slot_ptr, w_ptr, res_ptr, out_ptr,
        sqb, sqh, skb, skh, sks, svb, svh, svs, swn, srb, sob,
        n_keys, N, scale,
        HQ: tl.constexpr,
        HKV: tl.constexpr,
        HP: tl.constexpr,
        HW: tl.constexpr,
        D: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may launch while this one runs (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
        b = tl.program_id(1).to(tl.int64)  # 64-bit offsets: a large batch x long cache exceeds 2**31
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = n < N
        j = tl.arange(0, BLOCK_K)
        c = tl.arange(0, BLOCK_D)
        in_d = c < D
        h = tl.arange(0, HP)  # every query head as a row of one product (padded to HP >= 16)
        in_h = h < HQ
        # W_o's [BLOCK_N, HQ, d] tile first (HW = HQ padded to a power of two): no kernel writes it, so
        # under PDL it loads while the kernel before this one still runs, and without PDL its loads
        # overlap the attention's
        hw = tl.arange(0, HW)
        w_mask = in_n[:, None, None] & (hw < HQ)[None, :, None] & in_d[None, None, :]
        w_all = tl.load(
            w_ptr + n[:, None, None] * swn + hw[None, :, None] * D + c[None, None, :], mask=w_mask, other=0.0
        )
        if PDL:  # everything below reads what earlier kernels wrote (q, the cache, the slots, the residual)
            tl.extra.cuda.gdc_wait()
        slot = tl.load(slot_ptr + j, mask=j < n_keys, other=-1)
        valid = slot >= 0
        safe = tl.where(valid, slot, 0).to(tl.int64)
        rows = valid[:, None] & in_d[None, :]
        q = tl.load(
            q_ptr + b * sqb + h[:, None] * sqh + c[None, :], mask=in_h[:, None] & in_d[None, :], other=0.0
        )
        o_all = tl.zeros([HP, BLOCK_D], dtype=tl.float32)  # every query head's attention output
        for hk in tl.static_range(HKV):  # the KV head's keys and values once, every head's rows against them
            kt = tl.load(k_ptr + b * skb + hk * skh + safe[:, None] * sks + c[None, :], mask=rows, other=0.0)
            vt = tl.load(v_ptr + b * svb + hk * svh + safe[:, None] * svs + c[None, :], mask=rows, other=0.0)
            o = _kv_head_attention(q, kt, vt, valid, scale, IEEE, UPCAST)
            # the rows of this KV head's query heads keep their output (GQA: heads hk * HQ / HKV ...)
            o_all = tl.where((h // (HQ // HKV) == hk)[:, None], o, o_all)
        o_all = o_all.to(q_ptr.dtype.element_ty).to(tl.float32)  # the attention's output dtype
        # its first HW rows (the padding rows past HQ are zero: no KV head's group takes them)
        o_w = tl.sum(tl.reshape(o_all, [HP // HW, HW, BLOCK_D]), axis=0)
        acc = tl.sum(tl.sum(w_all.to(tl.float32) * o_w[None, :, :], axis=2), axis=1)
        dt = w_ptr.dtype.element_ty
        res = tl.load(res_ptr + b * srb + n, mask=in_n, other=0.0).to(tl.float32)
        tl.store(out_ptr + b * sob + n, (acc.to(dt).to(tl.float32) + res).to(dt), mask=in_n)


def _checked(q, k_cache, v_cache, slots, w_o) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, W_o and the slots as both kernels take them, after the checks they share."""
    Hq, P, d = q.shape[1:]
    Hkv = k_cache.shape[1]
    if P != 1 or Hq % Hkv or w_o.shape[1] != Hq * d:
        raise ValueError(
            f"q {tuple(q.shape)}, {Hkv} KV heads, W_o {tuple(w_o.shape)}: need one query per row, Hq a "
            "multiple of Hkv, W_o [C, Hq d]"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the caches' head dimension must be contiguous")
    return q.contiguous(), w_o.contiguous(), slots.contiguous()


def _shared_args(q, k_cache, v_cache, slots) -> tuple[tuple, dict]:
    """The strides of q and the caches, and the constexprs and launch options, that both kernels take."""
    d = q.shape[-1]
    strides = (q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3])
    meta = dict(
        D=d,
        BLOCK_K=max(16, triton.next_power_of_2(slots.numel())),
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        IEEE=q.dtype == torch.float32 or k_cache.dtype == torch.float32,
        UPCAST=INTERPRETED,
        num_warps=4,
        **pdl.launch_options(),
    )
    return strides, meta


def decode_attn_o(q, k_cache, v_cache, slots, w_o, residual) -> torch.Tensor:
    """The Triton kernel: what ``reference_decode_attn_o`` computes, in one launch (see the module doc);
    every row must have at least one valid key (globals or self)."""
    q, w_o, slots = _checked(q, k_cache, v_cache, slots, w_o)
    B, Hq, _, d = q.shape
    C = w_o.shape[0]
    if tuple(residual.shape) != (B, C):
        raise ValueError(f"residual {tuple(residual.shape)}: need [B, C] = [{B}, {C}]")
    residual = residual.contiguous()
    out = torch.empty(B, C, device=q.device, dtype=w_o.dtype)
    bn = block_n(C)
    strides, meta = _shared_args(q, k_cache, v_cache, slots)
    _attn_o_kernel[(triton.cdiv(C, bn), B)](
        q, k_cache, v_cache, slots, w_o, residual, out,
        *strides, w_o.stride(0), residual.stride(0), out.stride(0),
        slots.numel(), C, 1.0 / math.sqrt(d),
        HQ=Hq,
        HKV=k_cache.shape[1],
        HP=max(16, triton.next_power_of_2(Hq)),
        HW=triton.next_power_of_2(Hq),
        BLOCK_N=bn,
        **meta,
    )  # fmt: skip
    return out


decode_attn_o_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_attn_o", mutates_args=())
    def decode_attn_o_op(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        w_o: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        return decode_attn_o(q, k_cache, v_cache, slots, w_o, residual)

    @decode_attn_o_op.register_fake
    def _(q, k_cache, v_cache, slots, w_o, residual):
        return residual.new_empty(residual.shape[0], w_o.shape[0], dtype=w_o.dtype)


# ---------------------------------------------------------------- split over KV heads, for the split-K FFN
#
# The kernel above recomputes every head's attention in every program, which costs it more than the
# attention kernel and the GEMV it replaces (H100: 6.9 µs a launch against 3.5 + ~3.1; experiments/bench,
# "Tenth session: issue 30 timed"). In a step with the split-K FFN the layer's FFN reads x + round(acc)
# anyway, so the o-projection can be split over KV heads the same way: program (hk, rows) attends with
# hk's query heads only, multiplies their outputs by its [BLOCK_N, G d] tile of W_o, and adds that partial
# sum into a zeroed fp32 buffer with atomics. Each KV head's attention is computed C / BLOCK_N times, not
# C / BLOCK_N x Hkv, and no rounding or residual add happens here: the FFN kernel rounds (decode_ffn's
# ``acc_in``). The sums' order follows the programs' arrival, as the FFN's does.
# Block sizes: BLOCK_N = 16 rows of W_o a program (hidden 512, 2 KV heads: 64 programs, 8 KB of W_o each at
# d 64 and 4 query heads a KV head); HP = the group's query heads padded to 16 (tl.dot's smallest).
SPLIT_BLOCK_N = 16


def reference_decode_attn_o_split(q, k_cache, v_cache, slots, w_o) -> torch.Tensor:
    """The fp32 [B, C] o-projection of the attention before its rounding: ``attention(q) @ w_o.T`` with the
    attention's output rounded to q's dtype (the unfused step's), summed in fp32."""
    y = reference_decode_attention(q, k_cache, v_cache, slots)
    return torch.nn.functional.linear(y.reshape(q.shape[0], -1).float(), w_o.float())


if HAS_TRITON:

    @triton.jit
    def _attn_o_split_kernel(
        q_ptr, k_ptr, v_ptr, slot_ptr, w_ptr, acc_ptr,
        sqb, sqh, skb, skh, sks, svb, svh, svs, swn, sab,
        n_keys, N, scale,
        G: tl.constexpr,
        HP: tl.constexpr,
        GW: tl.constexpr,
        D: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
        UPCAST: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may launch while this one runs (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
        n_blocks = tl.cdiv(N, BLOCK_N)
        hk = tl.program_id(0) // n_blocks  # this program's KV head
        n = (tl.program_id(0) % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        b = tl.program_id(1).to(tl.int64)  # 64-bit offsets: a large batch x long cache exceeds 2**31
        in_n = n < N
        j = tl.arange(0, BLOCK_K)
        c = tl.arange(0, BLOCK_D)
        in_d = c < D
        g = tl.arange(0, HP)  # the KV head's query heads hk * G + g as the rows of one product
        in_g = g < G
        # W_o's [BLOCK_N, G, d] tile of this KV head's heads first: no kernel writes it (see _attn_o_kernel)
        gw = tl.arange(0, GW)
        w_cols = (hk * G + gw)[None, :, None] * D + c[None, None, :]
        w_mask = in_n[:, None, None] & (gw < G)[None, :, None] & in_d[None, None, :]
        w_all = tl.load(w_ptr + n[:, None, None] * swn + w_cols, mask=w_mask, other=0.0)
        if PDL:  # everything below reads what earlier kernels wrote (q, the cache, the slots); atomics after
            tl.extra.cuda.gdc_wait()
        slot = tl.load(slot_ptr + j, mask=j < n_keys, other=-1)
        valid = slot >= 0
        safe = tl.where(valid, slot, 0).to(tl.int64)
        rows = valid[:, None] & in_d[None, :]
        q_mask = in_g[:, None] & in_d[None, :]
        q = tl.load(q_ptr + b * sqb + (hk * G + g)[:, None] * sqh + c[None, :], mask=q_mask, other=0.0)
        kt = tl.load(k_ptr + b * skb + hk * skh + safe[:, None] * sks + c[None, :], mask=rows, other=0.0)
        vt = tl.load(v_ptr + b * svb + hk * svh + safe[:, None] * svs + c[None, :], mask=rows, other=0.0)
        o = _kv_head_attention(q, kt, vt, valid, scale, IEEE, UPCAST)
        # the attention's output dtype; the padding rows (no query head) to zero, then the first GW rows
        o = tl.where(in_g[:, None], o.to(q_ptr.dtype.element_ty).to(tl.float32), 0.0)
        o_w = tl.sum(tl.reshape(o, [HP // GW, GW, BLOCK_D]), axis=0)
        part = tl.sum(tl.sum(w_all.to(tl.float32) * o_w[None, :, :], axis=2), axis=1)
        tl.atomic_add(acc_ptr + b * sab + n, part, mask=in_n, sem="relaxed")


def decode_attn_o_split(q, k_cache, v_cache, slots, w_o, acc) -> None:
    """The Triton kernel: adds what ``reference_decode_attn_o_split`` computes into ``acc`` (fp32 [B, C],
    zero before; its rows may be strided, its columns not), in one launch; every row must have at least
    one valid key (globals or self)."""
    q, w_o, slots = _checked(q, k_cache, v_cache, slots, w_o)
    B, Hq, _, d = q.shape
    Hkv, C = k_cache.shape[1], w_o.shape[0]
    if acc.shape != (B, C) or acc.dtype != torch.float32 or acc.stride(-1) != 1:
        raise ValueError(f"acc {tuple(acc.shape)} {acc.dtype}: need fp32 [{B}, {C}] with contiguous columns")
    G = Hq // Hkv
    strides, meta = _shared_args(q, k_cache, v_cache, slots)
    _attn_o_split_kernel[(Hkv * triton.cdiv(C, SPLIT_BLOCK_N), B)](
        q, k_cache, v_cache, slots, w_o, acc,
        *strides, w_o.stride(0), acc.stride(0),
        slots.numel(), C, 1.0 / math.sqrt(d),
        G=G,
        HP=max(16, triton.next_power_of_2(G)),
        GW=triton.next_power_of_2(G),
        BLOCK_N=SPLIT_BLOCK_N,
        **meta,
    )  # fmt: skip


decode_attn_o_split_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_attn_o_split", mutates_args=("acc",))
    def decode_attn_o_split_op(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        w_o: torch.Tensor,
        acc: torch.Tensor,
    ) -> None:
        decode_attn_o_split(q, k_cache, v_cache, slots, w_o, acc)
