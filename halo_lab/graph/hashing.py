"""The counter-based hash behind every "random" choice of halo_lab: the graph's random edges and the
sampling noise of generation. A pure function of integers (Python ints or int64 tensors alike), so the
same edges and the same sampled tokens come out on every process, device and backend, with no generator
state to carry."""

from __future__ import annotations

M32 = 0xFFFFFFFF
_MUL = 0x045D9F3B


def mix32(x):
    """A 32-bit integer hash (works on Python ints and int64 tensors alike; values stay < 2**63)."""
    x = ((x ^ (x >> 16)) * _MUL) & M32
    x = ((x ^ (x >> 16)) * _MUL) & M32
    return x ^ (x >> 16)


def stream_key(seed: int, layer: int, step: int) -> int:
    """The hash stream of one (seed, layer, step): the graph's random edges of that layer at that step."""
    h = mix32((seed & M32) ^ 0x9E3779B9)
    h = mix32(h ^ (layer & M32))
    return mix32(h ^ (step & M32))
