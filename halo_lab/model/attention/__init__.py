"""The attention backends over the HALO graph, the dense baseline's attention, and the KV cache.

One module per concern: ``masked`` (SDPA with the graph as a boolean mask: the CPU path), ``flex`` (one
block-sparse FlexAttention kernel), ``hybrid`` (window kernel + gathered long-range keys, merged by their
log-sum-exp), ``dispatch`` (``resolve_backend``, ``halo_attention``, the dense SDPA, ``BackendRecord``),
``cache`` (the full and ring KV caches), ``decode`` (decode attention over a cache). The oracle they are
all tested against is ``halo_lab.graph.reference``; the fused Triton kernels are ``halo_lab.kernels``.
"""

from halo_lab.graph.reference import apply_rope, gather_attention, reference_attention
from halo_lab.model.attention.cache import DecodeLayout, KVCache, decode_layout, ring_size
from halo_lab.model.attention.decode import (
    decode_key_slot_table,
    decode_key_slots,
    dense_decode_attention,
    gather_decode_attention,
    halo_decode_attention,
    static_decode_attend,
    static_decode_attention,
    static_decode_write,
)
from halo_lab.model.attention.dispatch import (
    MASKED_MAX_LEN,
    BackendRecord,
    check_decode_kernel,
    decode_kernel_op,
    dense_attention,
    halo_attention,
    resolve_backend,
    triton_interpreted,
)
from halo_lab.model.attention.flex import flex_graph_attention, flex_graph_mask
from halo_lab.model.attention.hybrid import gather_attention_lse, hybrid_attention, merge_by_lse
from halo_lab.model.attention.masked import masked_attention

__all__ = [
    "MASKED_MAX_LEN",
    "BackendRecord",
    "DecodeLayout",
    "KVCache",
    "apply_rope",
    "check_decode_kernel",
    "decode_key_slot_table",
    "decode_key_slots",
    "decode_kernel_op",
    "decode_layout",
    "dense_attention",
    "dense_decode_attention",
    "flex_graph_attention",
    "flex_graph_mask",
    "gather_attention",
    "gather_attention_lse",
    "gather_decode_attention",
    "halo_attention",
    "halo_decode_attention",
    "hybrid_attention",
    "masked_attention",
    "merge_by_lse",
    "reference_attention",
    "resolve_backend",
    "ring_size",
    "static_decode_attend",
    "static_decode_attention",
    "static_decode_write",
    "triton_interpreted",
]
