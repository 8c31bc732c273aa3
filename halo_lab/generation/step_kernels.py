"""Which fused kernels the decoder's step can use for a model, and the arguments they take: the stacked
weights (``fused_weights``), the GEMV, the fused q/k/v, the attention + o-projection and the split-K FFN
ops (each None where it cannot run), and a norm as the GEMV's prologue arguments."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def fused_weights(model) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer (W_qkv, W_up) for the fused decode step, as each block gives them
    (``fused_decode_weights``); None when any block has none (then the step runs the blocks themselves)."""
    out = []
    for layer in model.layers:
        ask = getattr(layer, "fused_decode_weights", None)
        weights = ask() if ask is not None else None
        if weights is None:
            return None
        out.append(weights)
    return out


def gemv_kernel(model, device: torch.device) -> Callable | None:
    """``halo_lab.kernels.gemv``'s op for the gemv decode step, or None where it cannot run: no Triton, no GPU
    (or interpreter), a norm it does not fuse, or a head with a bias."""
    from halo_lab.kernels import gemv as kg

    on_device = device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
    norms = [model.ln_f] + [n for layer in model.layers for n in (layer.ln_1, layer.ln_2)]
    if not (kg.available() and on_device and model.lm_head.bias is None):
        return None
    if not all(isinstance(n, (torch.nn.LayerNorm, torch.nn.RMSNorm)) and n.weight is not None for n in norms):
        return None
    return kg.gemv_op


def qkv_kernel(model) -> Callable | None:
    """``halo_lab.kernels.decode_qkv``'s op for the gemv step's q/k/v (projection, RoPE and cache write in one
    launch), or None where it cannot run: no Triton, or a layer whose attention has no ``decode_attend``."""
    from halo_lab.kernels import decode_qkv as kq

    if not kq.available() or not all(hasattr(layer.attn, "decode_attend") for layer in model.layers):
        return None
    return kq.decode_qkv_op


def attn_o_kernel(model) -> Callable | None:
    """``halo_lab.kernels.decode_attn_o``'s op (attention over the graph's keys + o-projection + residual in
    one launch) for the fused q/k/v step, or None: no Triton, or an attention without ``decode_key_slots``."""
    from halo_lab.kernels import decode_attn_o as ka

    if not ka.available() or not all(hasattr(layer.attn, "decode_key_slots") for layer in model.layers):
        return None
    return ka.decode_attn_o_op


def ffn_kernels(model) -> tuple[Callable, Callable] | None:
    """(``decode_qkv_ffn_op``, ``decode_ffn_op``) for the split-K FFN step (halo_lab/kernels/decode_ffn.py:
    each layer's SwiGLU FFN in one launch, its residual add in the next layer's q/k/v kernel), or None: no
    Triton, a GELU FFN, or a model wider than the kernel reads whole."""
    from halo_lab.kernels import decode_ffn as kf
    from halo_lab.kernels import decode_qkv as kq

    if not kf.available() or model.config.hidden_size > kf.MAX_C:
        return None
    if not all(layer.ffn.w3 is not None for layer in model.layers):
        return None
    return kq.decode_qkv_ffn_op, kf.decode_ffn_op


def split_attn_kernels(model) -> tuple[Callable, Callable, Callable] | None:
    """(``decode_qkv_ffn_split_op``, ``decode_attn_o_split_op``, ``decode_ffn_split_op``) for the split-K
    FFN step with HALO-S's attention + o-projection split over KV heads (halo_lab/kernels/decode_attn_o.py),
    or None where the split-K FFN or the attention + o kernel cannot run."""
    from halo_lab.kernels import decode_attn_o as ka
    from halo_lab.kernels import decode_ffn as kf
    from halo_lab.kernels import decode_qkv as kq

    if ffn_kernels(model) is None or attn_o_kernel(model) is None:
        return None
    return kq.decode_qkv_ffn_split_op, ka.decode_attn_o_split_op, kf.decode_ffn_split_op


def norm_args(norm: torch.nn.Module | None) -> tuple:
    """(weight, bias) of ``gemv_op`` for a norm prologue (None: no norm)."""
    if norm is None:
        return None, None
    return norm.weight, getattr(norm, "bias", None)


def norm_kind(norm: torch.nn.Module | None) -> tuple[str, float]:
    """(kind, eps) of ``gemv_op`` for a norm prologue."""
    if norm is None:
        return "none", 0.0
    if isinstance(norm, torch.nn.RMSNorm):
        return "rmsnorm", norm.eps if norm.eps is not None else torch.finfo(norm.weight.dtype).eps
    return "layernorm", norm.eps
