"""Primitives of the fused HALO kernels: the tensor-core product and row loads."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# No -inf as a global constexpr: Inductor writes a traced kernel's globals out by repr, and "-inf" is not
# Python (NameError on CUDA, 2026-12-05): the kernels write float("-inf") where they need it.


@triton.jit
def mma(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; exact fp32 (no tf32) for fp32 inputs. UPCAST: Triton's CPU
    interpreter computes bf16/fp16 dots wrongly, so there the operands go through fp32 (same values)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def load_rows(base, pos, valid, stride, cols):
    """[N, HD] rows ``pos`` of a [L, HD] matrix (zeros where not valid; no address outside the matrix)."""
    pos = tl.where(valid, pos, 0)
    return tl.load(base + pos[:, None] * stride + cols[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def load_query_rows(base, b, head, tok, stride_b, stride_h, stride_l, cols, row_ok):
    """[BLOCK_M, HD] rows (position, head) of a [B, H, L, HD] tensor (q, o, dO)."""
    ptr = base + b * stride_b + head[:, None] * stride_h + tok[:, None] * stride_l + cols[None, :]
    return tl.load(ptr, mask=row_ok[:, None], other=0.0)
