"""A decode step's whole SwiGLU FFN in one launch, split over the hidden units (split-K for the down projection).

At batch 1 the gemv step ran each layer's FFN as two dependent GEMVs: ``ln_2 -> [gate | up]`` and then
``swiglu -> down + residual``, each a launch whose time is mostly the wait for the one before it (about
2.5 µs a kernel with PDL on an H100; experiments/bench/README.md, "Issue 30: timed"). The down projection
needs every hidden unit, so it cannot start before the up projection ends. Unless it is split the other
way: each program owns a slice of the hidden units, computes their gate and up rows
(``norm(x) . W_up[rows]``), SwiGLU, and multiplies them by its columns of W_down. That is a partial sum
of every output, which it adds into an fp32 [B, C] buffer (``acc``) with atomics. No program waits for
another, so the FFN is one launch.

Nobody rounds the sums in this kernel: the consumer does (``gemv``'s ``acc`` prologue, ``decode_qkv``'s
``acc`` input), reading x + round(acc) as the unfused step computes ``residual + down(...)``. So the
FFN's residual add costs no launch either. ``acc`` must be zero before the launch (``decode_qkv`` zeroes
the layer's buffer, see its doc). The fp32 atomics add in the order the programs arrive: the sums differ
from the unfused GEMV's in the last bits of fp32, which the rounding to bf16 mostly hides.

Block sizes: BLOCK_H = 16 hidden units a program (hidden 2048: 128 programs, about one per SM of an
H100), each holding its [2 x 16, C] rows of W_up and its [C, 16] columns of W_down, 48 KB at C = 512
(8 warps: 96 values a thread); these load first, before the PDL wait, since no kernel writes them.
CHUNK = C padded to a power of two: x is read whole (the norm needs the row's statistics).

``reference_decode_ffn`` is the plain-torch oracle. The kernel runs on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo_lab.kernels import gemv as kg
from halo_lab.kernels import pdl

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

BLOCK_H = 16  # hidden units a program (see the module doc)
MAX_C = 4096  # widest model: x and a [BLOCK_H, C] tile are read whole


def available() -> bool:
    return HAS_TRITON


def reference_decode_ffn(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The fp32 [B, C] down projection of the SwiGLU FFN before its rounding: ``swiglu(norm(x) @ w_up.T) @
    w_down.T`` with the unfused step's roundings up to the down product; x [B, C], w_up [2H, C] (gate rows,
    then up rows), w_down [C, H]."""
    h = kg.reference_gemv(x, w_up, norm=norm, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps)
    gate, up = h.to(w_up.dtype).chunk(2, dim=-1)
    a = (F.silu(gate.float()).to(w_up.dtype).float() * up.float()).to(w_up.dtype)
    return F.linear(a.to(w_down.dtype).float(), w_down.float())


if HAS_TRITON:

    @triton.jit
    def _ffn_kernel(
        x_ptr, wu_ptr, wd_ptr, nw_ptr, nb_ptr, acc_ptr,
        C, H, sxb, swu, swd, sab, eps,
        NORM: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_H: tl.constexpr,
        CHUNK: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may launch while this one runs (pdl.py)
            tl.extra.cuda.gdc_launch_dependents()
        b = tl.program_id(1).to(tl.int64)
        j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # this program's hidden units
        in_j = j < H
        c = tl.arange(0, CHUNK)
        in_c = c < C
        dt = wu_ptr.dtype.element_ty
        # the weights first: no kernel writes them, so under PDL they stream while the kernel before runs
        tile = in_j[:, None] & in_c[None, :]
        wg = tl.load(wu_ptr + j[:, None] * swu + c[None, :], mask=tile, other=0.0)
        wu = tl.load(wu_ptr + (H + j)[:, None] * swu + c[None, :], mask=tile, other=0.0)
        wd = tl.load(wd_ptr + c[:, None] * swd + j[None, :], mask=in_c[:, None] & in_j[None, :], other=0.0)
        if PDL:  # x is the kernel before's output; the atomics are stores
            tl.extra.cuda.gdc_wait()
        x_row = x_ptr + b * sxb
        gate = kg._dot_loaded(wg, x_row, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, False, CHUNK, x_row, False)
        up = kg._dot_loaded(wu, x_row, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, False, CHUNK, x_row, False)
        # the up GEMV's rounding, then SwiGLU as gemv's prologue rounds it
        g = gate.to(dt).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
        a = (silu * up.to(dt).to(tl.float32)).to(dt).to(tl.float32)
        a = tl.where(in_j, a, 0.0)
        part = tl.sum(wd.to(tl.float32) * a[None, :], axis=1)  # [CHUNK]: this slice's share of every output
        tl.atomic_add(acc_ptr + b * sab + c, part, mask=in_c, sem="relaxed")


def decode_ffn(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    acc: torch.Tensor,
    *,
    norm: str = "none",
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> None:
    """The Triton kernel: adds what ``reference_decode_ffn`` computes into ``acc`` (fp32 [B, C], zero
    before), in one launch (see the module doc)."""
    kg.check_norm(norm, norm_weight)
    B, C = x.shape
    H = w_down.shape[1]
    if w_up.shape != (2 * H, C) or w_down.shape != (C, H) or C > MAX_C:
        raise ValueError(
            f"x [{B}, {C}], W_up {tuple(w_up.shape)}, W_down {tuple(w_down.shape)}: need W_up [2H, C], "
            f"W_down [C, H], C <= {MAX_C}"
        )
    if acc.shape != (B, C) or acc.dtype != torch.float32 or acc.stride(-1) != 1:
        raise ValueError(f"acc {tuple(acc.shape)} {acc.dtype}: need a contiguous fp32 [{B}, {C}]")
    x, w_up, w_down = x.contiguous(), w_up.contiguous(), w_down.contiguous()
    nw = norm_weight if norm_weight is not None else w_up
    nb = norm_bias if norm_bias is not None else nw
    _ffn_kernel[(triton.cdiv(H, BLOCK_H), B)](
        x, w_up, w_down, nw, nb, acc,
        C, H, x.stride(0), w_up.stride(0), w_down.stride(0), acc.stride(0), eps,
        NORM=kg.NORMS[norm],
        HAS_BIAS=norm_bias is not None,
        BLOCK_H=BLOCK_H,
        CHUNK=triton.next_power_of_2(C),
        num_warps=8,
        **pdl.launch_options(),
    )  # fmt: skip


decode_ffn_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_ffn", mutates_args=("acc",))
    def decode_ffn_op(
        x: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        acc: torch.Tensor,
        norm: str,
        eps: float,
    ) -> None:
        decode_ffn(x, w_up, w_down, acc, norm=norm, norm_weight=norm_weight, norm_bias=norm_bias, eps=eps)
