"""The HALO-S attention graph, in one place: which keys each position reads (``edges``), the same edges as
tiles (``tiles``), the hash behind its random edges (``hashing``), and the oracle attention over it
(``reference``). Plain PyTorch; the kernels and the model's backends import it from here, below them."""

from halo_lab.graph.edges import (
    EVAL_STEP,
    dense_mask,
    full_neighbor_index,
    graph_key,
    neighbor_index,
    random_keys,
    random_keys_layers,
    random_unit,
)
from halo_lab.graph.tiles import (
    BlockLayout,
    block_layout,
    extra_index,
    layout_from_index,
    split_columns,
    window_index,
)

__all__ = [
    "EVAL_STEP",
    "BlockLayout",
    "block_layout",
    "dense_mask",
    "extra_index",
    "full_neighbor_index",
    "graph_key",
    "layout_from_index",
    "neighbor_index",
    "random_keys",
    "random_keys_layers",
    "random_unit",
    "split_columns",
    "window_index",
]
