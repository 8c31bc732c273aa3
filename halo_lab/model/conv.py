"""The short causal depthwise convolution before attention (``HaloConfig.short_conv``), with its cached form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from halo_lab.model import attention as attn


class CausalConv(nn.Module):
    """Short causal depthwise convolution over time (HaloConfig.short_conv = kernel size), with a skip:
    ``y_t = x_t + sum_j w_j * x_{t-j}`` for ``j < kernel`` (zero before the first position).

    Under a KV cache it keeps its inputs per position in ``cache.conv_inputs`` ([B, capacity, C], made on
    the first call), so decoding (one token at a device-side ``pos``, or a few at ``cache.length``) reads
    the last ``kernel - 1`` inputs from there: shapes never depend on the length (CUDA-graph friendly)."""

    def __init__(self, hidden_size: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel, groups=hidden_size)

    def _mix(self, window: torch.Tensor) -> torch.Tensor:  # [B, T + k - 1, C] -> [B, T, C]
        w, b = self.conv.weight.to(window.dtype), self.conv.bias.to(window.dtype)
        return F.conv1d(window.transpose(1, 2), w, b, groups=window.shape[-1]).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: attn.KVCache | None = None, pos=None) -> torch.Tensor:
        k = self.kernel
        if cache is None:
            return x + self._mix(F.pad(x, (0, 0, k - 1, 0)))
        buf = getattr(cache, "conv_inputs", None)
        if buf is None or buf.shape[0] != x.shape[0]:
            buf = cache.conv_inputs = x.new_zeros(x.shape[0], cache.k.shape[2], x.shape[-1])
        if pos is not None:  # one token per row at device position pos ([1] long tensor)
            buf.index_copy_(1, pos, x)
            idx = pos + torch.arange(1 - k, 1, device=x.device)
            window = buf.index_select(1, idx.clamp(min=0)) * (idx >= 0).to(x.dtype)[None, :, None]
            return x + self._mix(window)
        start = cache.length
        buf[:, start : start + x.shape[1]] = x
        lo = max(0, start - k + 1)
        window = F.pad(buf[:, lo : start + x.shape[1]], (0, 0, k - 1 - (start - lo), 0))
        return x + self._mix(window)
