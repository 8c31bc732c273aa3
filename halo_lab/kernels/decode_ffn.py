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
        x_ptr, wu_ptr, wd_ptr, nw_ptr, nb_ptr, acc_ptr, ain_ptr, xo_ptr,
        C, H, sxb, swu, swd, sab, sai, sxo, eps,
        NORM: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_H: tl.constexpr,
        CHUNK: tl.constexpr,
        PDL: tl.constexpr,
        ACC_IN: tl.constexpr,
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
        a_row = ain_ptr + b * sai  # ACC_IN: the input is x + round(acc_in) (gemv._x), the layer's residual
        gate = kg._dot_loaded(wg, x_row, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, False, CHUNK, a_row, ACC_IN)
        up = kg._dot_loaded(wu, x_row, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, False, CHUNK, a_row, ACC_IN)
        if ACC_IN:  # program 0 of each row stores that residual for the kernel after the FFN
            if tl.program_id(0) == 0:
                xr = kg._x(x_row, a_row, c, in_c, True, dt)
                tl.store(xo_ptr + b * sxo + c, xr.to(dt), mask=in_c)
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
    acc_in: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """The Triton kernel: adds what ``reference_decode_ffn`` computes into ``acc`` (fp32 [B, C], zero
    before), in one launch (see the module doc). ``acc_in`` = (a, x_out): the input is x + a rounded (a:
    fp32 [B, C], the split attention's sums, ``decode_attn_o.decode_attn_o_split``) and x_out [B, C]
    receives it, the residual that the kernel after this one adds the FFN's sums to."""
    kg.check_norm(norm, norm_weight)
    B, C = x.shape
    H = w_down.shape[1]
    if w_up.shape != (2 * H, C) or w_down.shape != (C, H) or C > MAX_C:
        raise ValueError(
            f"x [{B}, {C}], W_up {tuple(w_up.shape)}, W_down {tuple(w_down.shape)}: need W_up [2H, C], "
            f"W_down [C, H], C <= {MAX_C}"
        )
    for name, a in (("acc", acc), ("acc_in", acc_in[0] if acc_in is not None else acc)):
        if a.shape != (B, C) or a.dtype != torch.float32 or a.stride(-1) != 1:
            raise ValueError(f"{name} {tuple(a.shape)} {a.dtype}: need fp32 [{B}, {C}], contiguous columns")
    x, w_up, w_down = x.contiguous(), w_up.contiguous(), w_down.contiguous()
    a_in, x_out = acc_in if acc_in is not None else (acc, x)
    if x_out.shape != x.shape or x_out.dtype != w_up.dtype or x_out.stride(-1) != 1:
        raise ValueError(f"x_out {tuple(x_out.shape)} {x_out.dtype}: need {tuple(x.shape)} {w_up.dtype}")
    nw = norm_weight if norm_weight is not None else w_up
    nb = norm_bias if norm_bias is not None else nw
    _ffn_kernel[(triton.cdiv(H, BLOCK_H), B)](
        x, w_up, w_down, nw, nb, acc, a_in, x_out,
        C, H, x.stride(0), w_up.stride(0), w_down.stride(0), acc.stride(0), a_in.stride(0), x_out.stride(0),
        eps,
        NORM=kg.NORMS[norm],
        HAS_BIAS=norm_bias is not None,
        BLOCK_H=BLOCK_H,
        CHUNK=triton.next_power_of_2(C),
        ACC_IN=acc_in is not None,
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


decode_ffn_split_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_ffn_split", mutates_args=("acc",))
    def decode_ffn_split_op(
        x: torch.Tensor,
        acc_in: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        norm_weight: torch.Tensor | None,
        norm_bias: torch.Tensor | None,
        acc: torch.Tensor,
        norm: str,
        eps: float,
    ) -> torch.Tensor:
        """``decode_ffn_op`` after the split attention (``decode_attn_o.decode_attn_o_split``): its input is
        x + acc_in rounded, returned as the residual that the FFN's sums in ``acc`` are added to."""
        x_out = torch.empty(x.shape, device=x.device, dtype=w_up.dtype)
        kw = {"norm": norm, "norm_weight": norm_weight, "norm_bias": norm_bias, "eps": eps}
        decode_ffn(x, w_up, w_down, acc, acc_in=(acc_in, x_out), **kw)
        return x_out

    @decode_ffn_split_op.register_fake
    def _(x, acc_in, w_up, *_):
        return x.new_empty(x.shape, dtype=w_up.dtype)
