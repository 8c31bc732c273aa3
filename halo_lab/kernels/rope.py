"""Rotate-half RoPE on q and k in one launch, rounded once into the dtype attention reads.

The eager ``attention.apply_rope`` is five elementwise kernels per tensor (neg, cat, two muls, add) with
fp32 intermediates under autocast (bf16 activations times fp32 tables), then a cast to bf16 at the
attention call, and about as many kernels again in the backward. For the attention layer's q and k that
is ~20 launches and ~20 autograd nodes a layer, and several full fp32 copies of q: more GPU time than
the fused HALO attention itself at 65K tokens, and a good part of a small-batch step's host time
(experiments/bench/kernel_notes.md, section 2026-12-02r). Both models use it (dense and HALO-S), so it
moves no ratio between them by itself.

``rope_qk`` does the forward in one launch for both tensors and the backward in one more (the
backward is the rotation by the opposite angle). The math is fp32; the output is stored once, in the
autocast dtype when autocast is on for the device (the dtype attention would cast q and k to anyway),
else in the dtype eager RoPE gives. ``reference_rope`` is the oracle (the eager ops); the tests compare
values and gradients under Triton's interpreter and on CUDA.

Block sizes: a program rotates BLOCK_L = 64 positions of one head ([64, head_dim] values, 16-64 a thread
at 4 warps): enough independent loads per thread to stream at memory speed, and 1-2K programs at the
smallest training shapes.
"""

from __future__ import annotations

import torch

from halo_lab.graph.reference import apply_rope as reference_rope  # the oracle: the eager ops
from halo_lab.kernels.launch import Launcher

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

BLOCK_L = 64


def supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the kernel takes these shapes, dtypes and layouts (``rope_qk`` also needs CUDA)."""
    half = q.shape[-1] // 2
    return (
        HAS_TRITON
        and q.dim() == 4
        and k.dim() == 4
        and q.dtype == k.dtype
        and q.shape[-1] == k.shape[-1] == 2 * half
        and half >= 1
        and half & (half - 1) == 0  # a tile's columns are a power of two
        and q.shape[-2] == k.shape[-2] == cos.shape[0]
        and cos.shape == sin.shape == (q.shape[-2], q.shape[-1])
        and cos.dtype == sin.dtype
        and not (cos.requires_grad or sin.requires_grad)
        and q.stride(-1) == k.stride(-1) == 1
        and cos.stride(-1) == sin.stride(-1) == 1
        and cos.stride(0) == sin.stride(0)
    )


if HAS_TRITON:

    @triton.jit
    def _rope_kernel(
        q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
        sqb, sqh, sql, skb, skh, skl, sob, soh, sol, spb, sph, spl, sc,
        L, HQ, HK, NQ,
        HALF: tl.constexpr,
        BLOCK_L: tl.constexpr,
        BACKWARD: tl.constexpr,
    ):  # fmt: skip
        """Rows [pid0 * BLOCK_L, +BLOCK_L) of one (batch, head): program_id(1) < NQ = B * HQ is q's, the
        rest k's.

        forward: o1 = x1 c1 - x2 s1, o2 = x2 c2 + x1 s2; backward (the transpose): o1 = x1 c1 + x2 s2,
        o2 = x2 c2 - x1 s1 (halves 1, 2 of the last dimension; c, s the tables' halves)."""
        bh = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, HALF)
        if bh < NQ:  # a query head
            b = bh // HQ
            h = bh % HQ
            src = q_ptr + b.to(tl.int64) * sqb + h * sqh + rows[:, None].to(tl.int64) * sql
            dst = qo_ptr + b.to(tl.int64) * sob + h * soh + rows[:, None].to(tl.int64) * sol
        else:
            bh -= NQ
            b = bh // HK
            h = bh % HK
            src = k_ptr + b.to(tl.int64) * skb + h * skh + rows[:, None].to(tl.int64) * skl
            dst = ko_ptr + b.to(tl.int64) * spb + h * sph + rows[:, None].to(tl.int64) * spl
        mask = (rows < L)[:, None]
        x1 = tl.load(src + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        table = rows[:, None] * sc + cols[None, :]
        c1 = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + table + HALF, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + table + HALF, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:
            o1 = x1 * c1 + x2 * s2
            o2 = x2 * c2 - x1 * s1
        else:
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
        dt = qo_ptr.dtype.element_ty
        tl.store(dst + cols[None, :], o1.to(dt), mask=mask)
        tl.store(dst + HALF + cols[None, :], o2.to(dt), mask=mask)

    _launch = Launcher(_rope_kernel)


def _rotate(q, k, cos, sin, out_dtype: torch.dtype, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    qo, ko = torch.empty_like(q, dtype=out_dtype), torch.empty_like(k, dtype=out_dtype)
    B, HQ, L, d = q.shape
    HK = k.shape[1]
    _launch(
        ((L + BLOCK_L - 1) // BLOCK_L, B * (HQ + HK)),
        (
            q, k, qo, ko, cos, sin,
            *q.stride()[:3], *k.stride()[:3], *qo.stride()[:3], *ko.stride()[:3], cos.stride(0),
            L, HQ, HK, B * HQ,
        ),
        {"HALF": d // 2, "BLOCK_L": BLOCK_L, "BACKWARD": backward, "num_warps": 4, "num_stages": 1},
    )  # fmt: skip
    return qo, ko


class _RopeQK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, out_dtype):
        ctx.save_for_backward(cos, sin)
        ctx.dtype = q.dtype
        return _rotate(q, k, cos, sin, out_dtype, backward=False)

    @staticmethod
    def backward(ctx, gq, gk):
        cos, sin = ctx.saved_tensors
        # grads come materialised (zeros for an unused output), in the outputs' dtype
        gq, gk = (g if g.stride(-1) == 1 else g.contiguous() for g in (gq, gk))
        dq, dk = _rotate(gq, gk, cos, sin, ctx.dtype, backward=True)
        return dq, dk, None, None, None


def rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q [B, Hq, L, d] and k [B, Hkv, L, d] with [L, d] tables: the kernel on CUDA where
    ``supported``, else the eager ops (and under torch.compile, which fuses them itself)."""
    if not q.is_cuda or torch.compiler.is_compiling() or not supported(q, k, cos, sin):
        return reference_rope(q, cos, sin), reference_rope(k, cos, sin)
    return _fused(q, k, cos, sin)


def fused_rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_qk`` through the kernel (CUDA, or any device under TRITON_INTERPRET=1); the results come out
    in the autocast dtype when autocast is on, else in the eager ops' dtype."""
    if not supported(q, k, cos, sin):
        raise ValueError(
            f"the RoPE kernel takes q [B, Hq, L, d], k [B, Hkv, L, d] of one dtype with d / 2 a power of two"
            f" and [L, d] tables, not q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, "
            f"cos {tuple(cos.shape)}"
        )
    return _fused(q, k, cos, sin)


def _fused(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:  # shapes already checked by ``supported``
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        out_dtype = torch.get_autocast_dtype(dev)
    else:
        out_dtype = torch.promote_types(q.dtype, cos.dtype)
    return _RopeQK.apply(q, k, cos, sin, out_dtype)
