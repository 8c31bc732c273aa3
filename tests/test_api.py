"""halo_lab.api: the reference package's estimate_graph_stats, estimate_memory and free generate()."""

from __future__ import annotations

import pytest
import torch

from halo_lab import HaloConfig, estimate_graph_stats, estimate_memory
from halo_lab import graph as g
from halo_lab.api import generate
from halo_lab.model import build_model

CFG = HaloConfig(
    vocab_size=50, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, local_window=8,
    dilated_offsets=[1, 2], num_random=2, max_seq_len=40, graph_block_size=16, dropout=0.0,
)  # fmt: skip


def test_graph_stats_match_the_graph_itself():
    n, G = 100, CFG.num_globals
    stats = estimate_graph_stats(CFG, n)
    masks = [g.dense_mask(CFG, layer, g.EVAL_STEP, n) for layer in range(CFG.num_layers)]
    text = masks[0][G:]
    assert stats["edges_per_token"] == pytest.approx(text.sum(1).float().mean().item())
    assert stats["max_edges_per_token"] == int(text.sum(1).max()) <= CFG.num_neighbors
    assert stats["total_edges"] == int(text.sum())
    assert stats["coverage"] == pytest.approx(int(text[:, G:].sum()) / (n * (n + 1) / 2))
    # receptive field of the last token through the last 1, 2, 3 layers: boolean reachability
    reach = torch.zeros(G + n, dtype=torch.bool)
    reach[-1] = True
    expected = []
    for m in reversed(masks):
        reach = reach | m[reach].any(0)
        expected.append(reach[G:].float().mean().item())
    assert stats["receptive_field_by_layer"] == pytest.approx(expected)
    assert expected[0] < expected[-1] <= 1.0  # more layers see further: the long-range edges compose
    no_extras = estimate_graph_stats(CFG.replace(dilated_offsets=[], num_random=0), n)
    assert no_extras["receptive_field_by_layer"][-1] == pytest.approx((3 * 7 + 1) / n)  # window only


def test_graph_stats_of_a_model_and_of_dense():
    model = build_model(CFG, "dense")
    stats = estimate_graph_stats(model, 64)
    assert stats["coverage"] == 1.0 and stats["receptive_field_by_layer"] == [1.0] * 3
    assert estimate_graph_stats(build_model(CFG, "halo"))["seq_len"] == CFG.max_seq_len


def test_memory_estimate_parts():
    model = build_model(CFG, "halo")
    n_params = sum(p.numel() for p in model.parameters())
    mem = estimate_memory(model, batch_size=2, seq_len=32)
    assert mem["parameters_mb"] == pytest.approx(n_params * 4 / 2**20)
    kv = 2 * (32 + CFG.num_globals) * CFG.num_kv_heads * CFG.head_dim * 2 * CFG.num_layers * 4
    assert mem["kv_cache_mb"] == pytest.approx(kv / 2**20)
    assert mem["total_mb"] == pytest.approx(mem["parameters_mb"] + mem["kv_cache_mb"] + mem["activations_mb"])
    assert estimate_memory(CFG, 4, 32)["activations_mb"] == pytest.approx(2 * mem["activations_mb"])
    assert estimate_memory(CFG, 2, 32)["parameters_mb"] == pytest.approx(
        mem["parameters_mb"]
    )  # from the config
    train = estimate_memory(CFG, 2, 32, training=True)
    assert train["optimizer_mb"] == pytest.approx(2 * train["parameters_mb"])  # AdamW: two fp32 moments
    assert train["activations_mb"] > mem["activations_mb"] and train["total_mb"] > mem["total_mb"]
    half = estimate_memory(CFG, 2, 32, precision="bf16-true")
    assert half["kv_cache_mb"] == pytest.approx(mem["kv_cache_mb"] / 2)


def test_free_generate_matches_the_method_and_runs_past_max_seq_len():
    torch.manual_seed(0)
    model = build_model(CFG, "halo").eval()
    x = torch.randint(0, 50, (2, 10))
    assert torch.equal(
        generate(model, x, 8, temperature=0), model.generate(x, max_new_tokens=8, temperature=0)
    )
    assert torch.equal(
        generate(model, x[0], 8, temperature=0, top_k=None, top_p=None),
        model.generate(x[0], max_new_tokens=8, temperature=0),
    )
    long = generate(model, x, 45, temperature=0)  # 10 + 45 > max_seq_len 40
    assert long.shape == (2, 55) and torch.equal(
        long[:, :40], model.generate(x, max_new_tokens=30, temperature=0)
    )
    with torch.no_grad():  # a token past the limit: greedy on the last max_seq_len tokens
        assert torch.equal(long[:, 50], model(long[:, 10:50])[0][:, -1].argmax(-1))
    gen = torch.Generator().manual_seed(1)
    sampled = generate(model, x, 5, temperature=1.0, top_k=5, generator=gen)
    assert sampled.shape == (2, 15) and torch.equal(sampled[:, :10], x)
