"""Decode-step GEMVs with their neighbours fused in: ``norm -> x @ W.T``, ``swiglu -> x @ W.T``, ``+ residual``.

At batch 1 the decode step's cuBLAS GEMVs are latency-bound: 3.8 µs each on an H200 for matrices read in
well under 1 µs, 33 of them a token, and each norm, SwiGLU and residual add between them is a kernel of
its own (kernel_notes.md, section "Decode step"). ``gemv`` does one layer's projection in one launch: the
row's norm (LayerNorm or RMSNorm) or SwiGLU as a prologue, the residual add as an epilogue.

Block sizes: each program holds a [BLOCK_N, CHUNK] weight tile of about 2048 values (16 a thread at 4
warps) with CHUNK = the whole row up to 4096 columns, so a projection of the medium model is one load
of x and one of the weight per program, and 128-512 programs stream the weight (q/k/v 768 x 512: 4 rows
a program, 192 programs; SwiGLU down 512 x 2048: 2 rows, 256 programs). The first version walked K in
128-column steps on 16-row tiles: a chain of dependent loads on 32-96 programs, 8 µs a GEMV on an H200
against cuBLAS's 3.8 (experiments/bench/kernel_notes.md, section "Decode step"). Rows wider than 4096 columns
loop over chunks, after a first pass for a norm's statistics.

Rounding follows the unfused step: the normalised (or SwiGLU) input is rounded to the weight's dtype
before the product, and the product before the residual add, as separate bf16 kernels would. So the
fused step gives the unfused step's tokens, up to the order of the fp32 sums.

``reference_gemv`` beside it is the plain-torch oracle. The kernel runs on CPU under Triton's
interpreter (``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo_lab.kernels import pdl

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

NORMS = {"none": 0, "layernorm": 1, "rmsnorm": 2}
TILE = 2048  # weight values per program and step
MAX_CHUNK = 4096  # widest row read in one step


def block_sizes(k: int) -> tuple[int, int]:
    """(BLOCK_N, CHUNK) for rows of ``k`` columns (see the module doc)."""
    chunk = min(1 << max(k - 1, 0).bit_length(), MAX_CHUNK)
    return max(2, TILE // chunk), chunk


def check_norm(norm: str, norm_weight: torch.Tensor | None) -> None:
    """A norm prologue's name and weight, as the decode kernels take them (gemv, decode_qkv, decode_ffn)."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: must be one of {sorted(NORMS)}")
    if norm != "none" and norm_weight is None:
        raise ValueError(f"norm={norm!r} needs its weight")


def reference_gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, N] = residual + prologue(x) @ w.T, with the unfused step's ops; x [B, K] (or [B, 2K] for swiglu).
    ``acc`` (fp32 [B, K]): x is first x + acc.to(x.dtype), rounded (the split-K FFN's sums, decode_ffn)."""
    if acc is not None:
        x = x + acc.to(x.dtype)
    if swiglu:
        gate, up = x.chunk(2, dim=-1)
        x = F.silu(gate) * up
    if norm == "layernorm":
        x = F.layer_norm(x, x.shape[-1:], norm_weight, norm_bias, eps)
    elif norm == "rmsnorm":
        x = F.rms_norm(x, x.shape[-1:], norm_weight, eps)
    y = F.linear(x, w)
    return y if residual is None else residual + y


if HAS_TRITON:

    @triton.jit
    def _x(x_row, acc_row, kk, in_k, ACC: tl.constexpr, dt: tl.constexpr):
        """x's columns kk in fp32; ACC: x + the split-K FFN's fp32 sums (decode_ffn), rounded as the unfused
        step rounds the down projection and then its residual add."""
        x = tl.load(x_row + kk, mask=in_k, other=0.0).to(tl.float32)
        if ACC:
            y = tl.load(acc_row + kk, mask=in_k, other=0.0).to(dt).to(tl.float32)
            x = (x + y).to(dt).to(tl.float32)
        return x

    @triton.jit
    def _input(x_row, acc_row, kk, in_k, K, SWIGLU: tl.constexpr, ACC: tl.constexpr, dt: tl.constexpr):
        """The prologue's input columns kk in fp32: x (see _x), or silu(gate) * up rounded as the unfused ops
        round."""
        if SWIGLU:  # x holds [gate | up], each K wide
            g = tl.load(x_row + kk, mask=in_k, other=0.0).to(tl.float32)
            u = tl.load(x_row + K + kk, mask=in_k, other=0.0).to(tl.float32)
            silu = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
            return (silu * u).to(dt).to(tl.float32)
        return _x(x_row, acc_row, kk, in_k, ACC, dt)

    @triton.jit
    def _normalise(
        a, kk, in_k, mean, rstd, nw_ptr, nb_ptr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr, dt: tl.constexpr
    ):
        if NORM != 0:
            a = (a - mean) * rstd * tl.load(nw_ptr + kk, mask=in_k, other=0.0).to(tl.float32)
            if HAS_BIAS:
                a += tl.load(nb_ptr + kk, mask=in_k, other=0.0).to(tl.float32)
            a = tl.where(in_k, a, 0.0).to(dt).to(tl.float32)
        return a

    @triton.jit
    def _dot_loaded(wt, x_row, nw_ptr, nb_ptr, K, eps, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SWIGLU: tl.constexpr, CHUNK: tl.constexpr, acc_row, ACC: tl.constexpr):  # fmt: skip
        """fp32 rows of prologue(x) . w for a loaded [rows, CHUNK] weight tile holding whole rows (K <= CHUNK):
        x read, the norm's statistics in registers. Shared with decode_step's phases, which load the tile
        before their barrier."""
        kk = tl.arange(0, CHUNK)
        a = _input(x_row, acc_row, kk, kk < K, K, SWIGLU, ACC, wt.dtype)
        return _dot_input(wt, a, nw_ptr, nb_ptr, K, eps, NORM, HAS_BIAS, CHUNK)

    @triton.jit
    def _dot_input(wt, a, nw_ptr, nb_ptr, K, eps, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                   CHUNK: tl.constexpr):  # fmt: skip
        """fp32 rows of norm(a) . w for an input a [CHUNK] already in registers (0 past K): the norm's
        statistics, then the product."""
        dt = wt.dtype
        kk = tl.arange(0, CHUNK)
        in_k = kk < K
        mean = 0.0
        rstd = 1.0
        if NORM == 1:
            mean = tl.sum(a, axis=0) / K
            diff = tl.where(in_k, a - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / K + eps)
        elif NORM == 2:
            rstd = 1.0 / tl.sqrt(tl.sum(a * a, axis=0) / K + eps)
        a = _normalise(a, kk, in_k, mean, rstd, nw_ptr, nb_ptr, NORM, HAS_BIAS, dt)
        return tl.sum(wt.to(tl.float32) * a[None, :], axis=1)

    @triton.jit
    def _rows_dot(
        x_row,
        w_ptr,
        n,
        in_n,
        swn,
        nw_ptr,
        nb_ptr,
        K,
        eps,
        NORM: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SWIGLU: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK: tl.constexpr,
        ONE_CHUNK: tl.constexpr,
        PDL: tl.constexpr,
        acc_row,
        ACC: tl.constexpr,
    ):
        """fp32 [BLOCK_N] = prologue(x) . w[n] for one row of x: the GEMV's body, shared with decode_qkv.
        PDL: the weights (which no kernel writes) load before the wait for the previous kernel (pdl.py)."""
        dt = w_ptr.dtype.element_ty
        # one chunk: the whole row at once, the weight load issued first, the norm statistics in registers
        if ONE_CHUNK:
            kk = tl.arange(0, CHUNK)
            in_k = kk < K
            wt = tl.load(
                w_ptr + n[:, None] * swn + kk[None, :], mask=in_n[:, None] & in_k[None, :], other=0.0
            )
            if PDL:
                tl.extra.cuda.gdc_wait()
            acc = _dot_loaded(wt, x_row, nw_ptr, nb_ptr, K, eps, NORM, HAS_BIAS, SWIGLU, CHUNK, acc_row, ACC)
        else:
            if PDL:
                tl.extra.cuda.gdc_wait()
            mean = 0.0
            rstd = 1.0
            if NORM != 0:  # the row's statistics first: a second pass normalises chunk by chunk
                s1 = tl.zeros([CHUNK], dtype=tl.float32)
                s2 = tl.zeros([CHUNK], dtype=tl.float32)
                for k0 in range(0, K, CHUNK):
                    kk = k0 + tl.arange(0, CHUNK)
                    a = _x(x_row, acc_row, kk, kk < K, ACC, dt)
                    s1 += a
                    s2 += a * a
                if NORM == 1:
                    mean = tl.sum(s1, axis=0) / K
                    var = tl.maximum(tl.sum(s2, axis=0) / K - mean * mean, 0.0)
                    rstd = 1.0 / tl.sqrt(var + eps)
                else:
                    rstd = 1.0 / tl.sqrt(tl.sum(s2, axis=0) / K + eps)
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K, CHUNK):
                kk = k0 + tl.arange(0, CHUNK)
                in_k = kk < K
                wt = tl.load(
                    w_ptr + n[:, None] * swn + kk[None, :], mask=in_n[:, None] & in_k[None, :], other=0.0
                )
                a = _input(x_row, acc_row, kk, in_k, K, SWIGLU, ACC, dt)
                a = _normalise(a, kk, in_k, mean, rstd, nw_ptr, nb_ptr, NORM, HAS_BIAS, dt)
                acc += tl.sum(wt.to(tl.float32) * a[None, :], axis=1)
        return acc

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        w_ptr,
        out_ptr,
        res_ptr,
        nw_ptr,
        nb_ptr,
        acc_ptr,
        K,
        N,
        sxb,
        swn,
        sob,
        srb,
        sab,
        eps,
        NORM: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SWIGLU: tl.constexpr,
        HAS_RES: tl.constexpr,
        ACC: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK: tl.constexpr,
        ONE_CHUNK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        if PDL:  # the next kernel may launch and load its weights while this one runs (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = n < N
        dt = w_ptr.dtype.element_ty
        acc = _rows_dot(
            x_ptr + b * sxb, w_ptr, n, in_n, swn, nw_ptr, nb_ptr, K, eps,
            NORM, HAS_BIAS, SWIGLU, BLOCK_N, CHUNK, ONE_CHUNK, PDL, acc_ptr + b * sab, ACC,
        )  # fmt: skip
        y = acc.to(dt)
        if HAS_RES:
            y = (y.to(tl.float32) + tl.load(res_ptr + b * srb + n, mask=in_n, other=0.0).to(tl.float32)).to(
                dt
            )
        tl.store(out_ptr + b * sob + n, y, mask=in_n)


def available() -> bool:
    return HAS_TRITON


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton kernel: what ``reference_gemv`` computes, in one launch (see the module doc)."""
    check_norm(norm, norm_weight)
    if norm != "none" and swiglu:
        raise ValueError("a gemv takes a norm or a SwiGLU prologue, not both")
    if acc is not None and (swiglu or acc.shape != x.shape or acc.dtype != torch.float32):
        raise ValueError(f"acc {tuple(acc.shape)} {acc.dtype}: fp32 in x's shape {tuple(x.shape)}, no SwiGLU")
    B, K_in = x.shape
    N, K = w.shape
    if K_in != (2 * K if swiglu else K):
        raise ValueError(f"x has {K_in} columns for a weight of {K} ({'swiglu: 2K' if swiglu else 'K'})")
    x, w = x.contiguous(), w.contiguous()
    out = torch.empty(B, N, device=x.device, dtype=w.dtype)
    res = residual.contiguous() if residual is not None else out
    nw = norm_weight if norm_weight is not None else w
    nb = norm_bias if norm_bias is not None else nw
    acc = acc.contiguous() if acc is not None else x
    block_n, chunk = block_sizes(K)
    _gemv_kernel[(triton.cdiv(N, block_n), B)](
        x, w, out, res, nw, nb, acc,
        K, N, x.stride(0), w.stride(0), out.stride(0), res.stride(0), acc.stride(0),
        eps,
        NORM=NORMS[norm],
        HAS_BIAS=norm_bias is not None,
        SWIGLU=swiglu,
        HAS_RES=residual is not None,
        ACC=acc is not x,
        BLOCK_N=block_n,
        CHUNK=chunk,
        ONE_CHUNK=K <= chunk,
        num_warps=4,
        **pdl.launch_options(),
    )  # fmt: skip
    return out


gemv_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::gemv", mutates_args=())
    def gemv_op(
        x: torch.Tensor,
        w: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        residual: torch.Tensor | None,
        norm: str,
        eps: float,
        swiglu: bool,
        acc: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return gemv(
            x,
            w,
            norm=norm,
            norm_weight=norm_weight,
            norm_bias=norm_bias,
            eps=eps,
            swiglu=swiglu,
            residual=residual,
            acc=acc,
        )

    @gemv_op.register_fake
    def _(x, w, norm_weight, norm_bias, residual, norm, eps, swiglu, acc=None):
        return x.new_empty(x.shape[0], w.shape[0], dtype=w.dtype)
