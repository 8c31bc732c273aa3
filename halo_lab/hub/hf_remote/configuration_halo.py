"""HALO-S configuration for transformers (``trust_remote_code=True``); copied into every halo_lab export.

The fields are halo_lab's ``HaloConfig`` fields with their names (config.json holds them flat), plus
``arch`` ("halo": HALO-S, "dense": the dense baseline twin). It imports no halo_lab module.
"""

from __future__ import annotations

try:  # transformers >= 5
    from transformers import PreTrainedConfig as _Base
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _Base


class HaloSConfig(_Base):
    model_type = "halo-s"

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 512,
        num_layers: int = 6,
        num_heads: int = 8,
        num_kv_heads: int = 2,
        num_globals: int = 2,
        local_window: int = 64,
        dilated_offsets: list[int] | None = None,
        num_random: int = 2,
        dropout: float = 0.1,
        max_seq_len: int = 4096,
        use_swiglu: bool = True,
        dilation_rule: str = "window_multiple",
        random_edges: str = "block",
        graph_block_size: int = 128,
        graph_seed: int = 0,
        ffn_mult: int = 4,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        rope_base: float = 10000.0,
        tie_embeddings: bool = False,
        init_std: float = 0.02,
        short_conv: int = 0,
        select_blocks: int = 0,
        select_block_size: int = 32,
        select_summary_keys: bool = True,
        select_group_size: int = 16,
        select_groups: int = 2,
        select_pooling: str = "mean",
        select_summary_bias: float | None = None,
        select_token_bias: float | None = None,
        select_score: str = "mean",
        select_router_rank: int = 0,
        arch: str = "halo",
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.num_globals = num_globals
        self.local_window = local_window
        self.dilated_offsets = list(dilated_offsets if dilated_offsets is not None else [1, 2, 4, 8])
        self.num_random = num_random
        self.dropout = dropout
        self.max_seq_len = max_seq_len
        self.use_swiglu = use_swiglu
        self.dilation_rule = dilation_rule
        self.random_edges = random_edges
        self.graph_block_size = graph_block_size
        self.graph_seed = graph_seed
        self.ffn_mult = ffn_mult
        self.norm = norm
        self.norm_eps = norm_eps
        self.rope_base = rope_base
        self.tie_embeddings = tie_embeddings
        self.init_std = init_std
        self.short_conv = short_conv
        self.select_blocks = select_blocks
        self.select_block_size = select_block_size
        self.select_summary_keys = select_summary_keys
        self.select_group_size = select_group_size
        self.select_groups = select_groups
        self.select_pooling = select_pooling
        self.select_summary_bias = select_summary_bias
        self.select_token_bias = select_token_bias
        self.select_score = select_score
        self.select_router_rank = select_router_rank
        if arch not in ("halo", "dense"):
            raise ValueError(f"HaloSConfig.arch={arch!r}: expected 'halo' or 'dense'")
        self.arch = arch
        # the names transformers' generic code reads
        self.num_hidden_layers = num_layers
        self.num_attention_heads = num_heads
        self.num_key_value_heads = num_kv_heads
        self.max_position_embeddings = max_seq_len
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(tie_word_embeddings=tie_embeddings, **kwargs)
