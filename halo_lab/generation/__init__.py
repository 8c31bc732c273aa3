"""Generation, in one home: ``sampling`` (logit filters, token selection, the seeded noise), ``decoder``
(the cached, compiled, CUDA-graph-captured decode loop) and ``generate`` (the one entry point that the
model's method, the runner's sample callback, the CLI and ``halo_lab.api`` call).

It knows no model class: a model is used through its public decoding interface (``new_caches``,
``forward_cached``, ``decode_step``, ``layers[i].fused_decode_weights()``), so ``halo_lab.model`` can call
down into it without an import cycle.
"""

from halo_lab.generation.decoder import Decoder, fused_weights
from halo_lab.generation.generate import generate, stop_token_id
from halo_lab.generation.sampling import (
    check_sampling,
    filter_logits,
    gumbel_noise,
    noise_base,
    sample_next_token,
    seed_tensor,
    select_tokens,
)

__all__ = [
    "Decoder",
    "check_sampling",
    "filter_logits",
    "fused_weights",
    "generate",
    "gumbel_noise",
    "noise_base",
    "sample_next_token",
    "seed_tensor",
    "select_tokens",
    "stop_token_id",
]
