"""The model layer, plain PyTorch (no Lightning, no Hydra): ``network`` (HALO-S and its dense twin), ``conv``
(the short causal convolution) and ``attention`` (the backends over the graph, the dispatch, the KV cache,
decode attention).

Below it: ``halo_lab.config`` (HaloConfig), ``halo_lab.graph`` (the graph and the oracle attention),
``halo_lab.kernels`` (Triton), ``halo_lab.generation`` (which the models' ``generate`` calls) and
``halo_lab.checkpoint`` (which ``from_pretrained`` reads through).
"""

from halo_lab.model.conv import CausalConv
from halo_lab.model.network import (
    ARCHS,
    Attention,
    BaselineModel,
    Block,
    FeedForward,
    HaloSModel,
    RotaryEmbedding,
    build_model,
    make_norm,
)

__all__ = [
    "ARCHS",
    "Attention",
    "BaselineModel",
    "Block",
    "CausalConv",
    "FeedForward",
    "HaloSModel",
    "RotaryEmbedding",
    "build_model",
    "make_norm",
]
