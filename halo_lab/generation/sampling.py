"""Sampling on the device: logit filters (temperature, top-k, nucleus), token selection (argmax or
Gumbel-max, no host sync), and the seeded noise.

The decode loop's noise is a hash of (seed, position, row, token id) (``halo_lab.graph.hashing``), not a
generator's state: a sampled token depends only on the logits, the seed and where it sits, so the cached
and uncached loops, the eager and the captured steps, and any stop-check cadence give the same tokens for
the same seed.
"""

from __future__ import annotations

import torch

from halo_lab.graph.hashing import M32, mix32


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (got {temperature}, {top_p}, {top_k})"
        )


def noise_base(batch: int, vocab: int, device) -> torch.Tensor:
    """[B, V] per-(row, token) hash words; ``gumbel_noise`` mixes in the seed and the position."""
    ids = torch.arange(batch, device=device).unsqueeze(1) * vocab + torch.arange(vocab, device=device)
    return mix32(ids ^ 0x632BE5AB)


def gumbel_noise(base: torch.Tensor, seed: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """[B, V] float32 standard Gumbel noise for the token at full position ``pos`` ([1] long)."""
    h = mix32(base ^ mix32((seed ^ mix32(pos & M32)) & M32))
    u = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(-torch.log(u))


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """[B, V] float logits / temperature with -inf outside the top-k and the nucleus: the smallest set of
    most likely tokens whose probability mass reaches ``top_p``."""
    logits = logits.float() / temperature
    V = logits.shape[-1]
    if top_k and top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # a token is kept while the mass before it is < top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def select_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gumbel: torch.Tensor | None
) -> torch.Tensor:
    """[B] tokens: argmax at temperature 0, else the Gumbel-max sample of the filtered distribution (no
    host sync, no torch.multinomial)."""
    if temperature == 0:
        return logits.argmax(-1)
    return (filter_logits(logits, temperature, top_k, top_p) + gumbel).argmax(-1)


def seed_tensor(generator: torch.Generator | None, device) -> torch.Tensor:
    """[1] long seed on ``device``, drawn from ``generator`` (or torch's global generator)."""
    kw = {"generator": generator, "device": generator.device} if generator is not None else {}
    return torch.randint(0, 2**31 - 1, (1,), **kw).to(device)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from [B, V] logits: greedy at temperature 0, else top-k / nucleus sampling
    (Gumbel-max with noise from ``generator``; the decode loop uses the hashed noise above instead)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(min=1e-12)
    return select_tokens(logits, temperature, top_k, top_p, -torch.log(-torch.log(u)))
