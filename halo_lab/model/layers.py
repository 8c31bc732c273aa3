"""The plain layers of the network (network.py): rotate-half RoPE tables, the norm, the feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from halo_lab.config import HaloConfig


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE (the reference's convention) with a cos/sin table grown on demand."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_positions)

    def _build(self, n: int) -> None:
        freqs = torch.outer(torch.arange(n, dtype=torch.float32, device=self.inv_freq.device), self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if start + length > self.cos.shape[0]:
            self._build(start + length)
        return self.cos[start : start + length].to(dtype), self.sin[start : start + length].to(dtype)


def make_norm(config: HaloConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); GELU (use_swiglu=False): w2(gelu(w1 x))."""

    def __init__(self, config: HaloConfig):
        super().__init__()
        inner = config.ffn_mult * config.hidden_size
        self.w1 = nn.Linear(config.hidden_size, inner, bias=False)
        self.w2 = nn.Linear(inner, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, inner, bias=False) if config.use_swiglu else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.w1(x)) * self.w3(x) if self.w3 is not None else F.gelu(self.w1(x))
        return self.dropout(self.w2(h))
