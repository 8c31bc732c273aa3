"""Properties of the connectivity graph: degree, uniqueness, causality, reproducibility."""

import subprocess
import sys

import pytest
import torch

from halo_lab import graph
from halo_lab.config import HaloConfig


def cfg(**kw) -> HaloConfig:
    base = dict(
        hidden_size=32, num_heads=2, num_kv_heads=1, local_window=8, num_random=3, graph_block_size=16
    )
    base.update(kw)
    return HaloConfig(**base)


@pytest.mark.parametrize("mode", ["token", "block"])
@pytest.mark.parametrize("n", [5, 77, 300])
def test_no_future_edges_no_duplicates(mode, n):
    c = cfg(random_edges=mode)
    idx = graph.full_neighbor_index(c, layer=1, step=3, seq_len=n, device="cpu")
    L = n + c.num_globals
    assert idx.shape == (L, c.num_neighbors)
    q = torch.arange(L).unsqueeze(1)
    assert ((idx <= q) | (idx < 0)).all(), "an edge points to the future"
    for row in idx:
        keys = row[row >= 0].tolist()
        assert len(keys) == len(set(keys)), f"duplicate edge in {keys}"


def test_token_mode_degree_is_exactly_k():
    c = cfg(random_edges="token")
    n = 400
    idx = graph.full_neighbor_index(c, 0, 0, n, "cpu")
    degree = (idx >= 0).sum(1)
    # a text token whose past holds the window, the largest dilated distance and R more keys has K edges
    first_full = c.num_globals + max(c.dilated_distances) + c.num_random + len(c.dilated_distances)
    assert (degree[first_full:] == c.num_neighbors).all()
    assert (degree <= c.num_neighbors).all()


def test_block_mode_degree_at_most_k_and_shared_random_keys():
    c = cfg(random_edges="block")
    pos = torch.arange(200)
    rk = graph.random_keys(c, 0, 7, pos)
    units = graph.random_unit(c, pos)
    for u in units.unique():
        rows = rk[units == u]
        assert (rows == rows[0]).all()
    degree = (graph.full_neighbor_index(c, 0, 7, 200, "cpu") >= 0).sum(1)
    assert (degree <= c.num_neighbors).all()


@pytest.mark.parametrize("mode", ["token", "block"])
def test_random_keys_outside_window(mode):
    c = cfg(random_edges=mode)
    pos = torch.arange(500)
    rk = graph.random_keys(c, 2, 11, pos)
    ok = (rk < 0) | (rk <= pos.unsqueeze(1) - c.local_window)
    assert ok.all()
    assert (rk[300:] >= 0).all(), "long past but no random edge"


def test_window_and_dilated_edges():
    c = cfg(num_random=0, num_globals=2)
    idx = graph.neighbor_index(c, 0, 0, torch.tensor([100]))[0].tolist()
    assert idx[: c.local_window] == list(range(100, 100 - c.local_window, -1))
    assert idx[c.local_window :] == [100 - d for d in c.dilated_distances]
    # the default rule puts every dilated distance outside the window
    assert min(c.dilated_distances) >= c.local_window


def test_absolute_rule_drops_in_window_offsets():
    c = cfg(dilation_rule="absolute", dilated_offsets=[1, 2, 4, 8, 16], local_window=8)
    assert c.dilated_distances == (8, 16)


def test_random_edges_reproducible_change_with_step_and_layer():
    c = cfg(random_edges="token")
    pos = torch.arange(300)
    a = graph.random_keys(c, 0, 5, pos)
    assert torch.equal(a, graph.random_keys(c, 0, 5, pos))
    assert not torch.equal(a, graph.random_keys(c, 1, 5, pos)), "layers share random edges"
    assert not torch.equal(a, graph.random_keys(c, 0, 6, pos)), "steps share random edges"
    assert not torch.equal(a, graph.random_keys(c.replace(graph_seed=1), 0, 5, pos))


def test_edges_of_a_position_do_not_depend_on_length():
    c = cfg(random_edges="block")
    short = graph.full_neighbor_index(c, 0, 2, 100, "cpu")
    long = graph.full_neighbor_index(c, 0, 2, 250, "cpu")
    assert torch.equal(short, long[: short.shape[0]])


def test_same_random_edges_in_another_process():
    c = cfg(random_edges="token")
    here = graph.random_keys(c, 3, 42, torch.arange(300)).tolist()
    code = (
        "import torch, json; from halo_lab import graph; from halo_lab.config import HaloConfig;"
        "c = HaloConfig(hidden_size=32, num_heads=2, num_kv_heads=1, local_window=8, num_random=3,"
        " graph_block_size=16, random_edges='token');"
        "print(json.dumps(graph.random_keys(c, 3, 42, torch.arange(300)).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == here


def test_random_keys_roughly_uniform():
    c = cfg(random_edges="token", num_random=1, dilated_offsets=[100])
    counts = torch.zeros(20)
    for step in range(400):
        k = graph.random_keys(c, 0, step, torch.tensor([27]))[0, 0]  # pool: 0..19
        counts[k] += 1
    assert counts.min() > 5 and counts.max() < 45


@pytest.mark.parametrize("mode", ["token", "block"])
def test_block_layout_covers_every_edge(mode):
    c = cfg(random_edges=mode)
    n = 150
    mask = graph.dense_mask(c, 0, 4, n)
    layout = graph.block_layout(c, 0, 4, n, "cpu")
    BS, L = c.graph_block_size, n + c.num_globals
    nb = (L + BS - 1) // BS
    tiles = torch.zeros(nb, nb, dtype=torch.bool)
    full = torch.zeros(nb, nb, dtype=torch.bool)
    for qb in range(nb):
        tiles[qb, layout.kv_indices[qb, : layout.kv_num_blocks[qb]].long()] = True
        full[qb, layout.full_kv_indices[qb, : layout.full_kv_num_blocks[qb]].long()] = True
    assert not (tiles & full).any()
    q, k = mask.nonzero(as_tuple=True)
    assert (tiles | full)[q // BS, k // BS].all(), "an edge falls in a tile the block mask skips"
    for qb, kb in full.nonzero().tolist():
        assert mask[qb * BS : (qb + 1) * BS, kb * BS : (kb + 1) * BS].all()
    # sparse: far fewer tiles than the causal triangle
    assert layout.computed_blocks < nb * (nb + 1) // 2
