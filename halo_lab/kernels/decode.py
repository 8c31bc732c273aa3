"""One Triton kernel per layer for a HALO-S decode step: gather the K keys of one query, softmax, sum.

``halo_decode_attention(q, k_cache, v_cache, slots)``: q [B, Hq, 1, d]; k_cache, v_cache [B, Hkv, S, d]
(grouped-query: query head h reads KV head h // (Hq / Hkv)); slots [K] long cache slots, -1 = no edge
(the same keys for every row and head: the graph depends on the position only). One program per
(row, query head) loads its K key rows by index, computes the K scores, the softmax and the weighted sum of
the K value rows in registers, and writes d outputs: one launch replaces the gather + SDPA's several.

``reference_decode_attention`` beside it is the plain-torch oracle (the gather path). The kernel runs on
CPU under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
``halo_decode_attention_op`` is the same function registered as a torch custom op, so that a
``torch.compile``d decode step calls it as one opaque kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from halo_lab.kernels import pdl

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False


def available() -> bool:
    return HAS_TRITON


def reference_decode_attention(q, k_cache, v_cache, slots) -> torch.Tensor:
    """The gather path: [B, Hq, 1, d] outputs in q's dtype (fp32 softmax)."""
    B, Hq, _, d = q.shape
    Hkv = k_cache.shape[1]
    valid = slots >= 0
    kg = k_cache.index_select(2, slots.clamp(min=0)).float()  # [B, Hkv, K, d]
    vg = v_cache.index_select(2, slots.clamp(min=0)).float()
    qg = q.float().view(B, Hkv, Hq // Hkv, d)
    scores = torch.einsum("bhgd,bhkd->bhgk", qg, kg) / math.sqrt(d)
    probs = F.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    return torch.einsum("bhgk,bhkd->bhgd", probs, vg).reshape(B, Hq, 1, d).to(q.dtype)


if HAS_TRITON:

    @triton.jit
    def _decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        slot_ptr,
        o_ptr,
        sqb,
        sqh,
        skb,
        skh,
        sks,
        svb,
        svh,
        svs,
        sob,
        soh,
        n_keys,
        group,
        scale,
        HEADS: tl.constexpr,
        D: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        PDL: tl.constexpr,
    ):
        if PDL:  # launch the next kernel early; everything this one reads an earlier kernel wrote (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        pid = tl.program_id(0)
        b = (pid // HEADS).to(tl.int64)  # 64-bit offsets: a large batch x long cache exceeds 2**31 elements
        h = (pid % HEADS).to(tl.int64)
        hk = h // group
        j = tl.arange(0, BLOCK_K)
        c = tl.arange(0, BLOCK_D)
        in_k = j < n_keys
        in_d = c < D
        slot = tl.load(slot_ptr + j, mask=in_k, other=-1)
        valid = slot >= 0
        safe = tl.where(valid, slot, 0).to(tl.int64)
        q = tl.load(q_ptr + b * sqb + h * sqh + c, mask=in_d, other=0.0).to(tl.float32)
        rows = valid[:, None] & in_d[None, :]
        kt = tl.load(k_ptr + b * skb + hk * skh + safe[:, None] * sks + c[None, :], mask=rows, other=0.0)
        s = tl.sum(kt.to(tl.float32) * q[None, :], axis=1) * scale
        s = tl.where(valid, s, float("-inf"))
        m = tl.max(s, axis=0)
        p = tl.exp(s - m)
        p = tl.where(valid, p, 0.0)
        p = p / tl.sum(p, axis=0)
        vt = tl.load(v_ptr + b * svb + hk * svh + safe[:, None] * svs + c[None, :], mask=rows, other=0.0)
        o = tl.sum(vt.to(tl.float32) * p[:, None], axis=0)
        tl.store(o_ptr + b * sob + h * soh + c, o.to(o_ptr.dtype.element_ty), mask=in_d)


def halo_decode_attention(q, k_cache, v_cache, slots) -> torch.Tensor:
    """The Triton kernel (see the module doc); every row must have at least one valid key (globals or self)."""
    B, Hq, P, d = q.shape
    if P != 1:
        raise ValueError(f"the decode kernel takes one query per row, got {P}")
    Hkv = k_cache.shape[1]
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the decode kernel needs the head dimension contiguous")
    q = q.contiguous()
    slots = slots.contiguous()
    out = torch.empty(B, Hq, 1, d, device=q.device, dtype=q.dtype)
    K = slots.numel()
    _decode_kernel[(B * Hq,)](
        q,
        k_cache,
        v_cache,
        slots,
        out,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        out.stride(0),
        out.stride(1),
        K,
        Hq // Hkv,
        1.0 / math.sqrt(d),
        HEADS=Hq,
        D=d,
        BLOCK_K=max(16, triton.next_power_of_2(K)),
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        num_warps=4,
        **pdl.launch_options(),
    )
    return out


halo_decode_attention_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::halo_decode_attention", mutates_args=())
    def halo_decode_attention_op(
        q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        return halo_decode_attention(q, k_cache, v_cache, slots)

    @halo_decode_attention_op.register_fake
    def _(q, k_cache, v_cache, slots):
        return torch.empty_like(q, memory_format=torch.contiguous_format)
