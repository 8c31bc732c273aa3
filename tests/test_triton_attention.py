"""The fused Triton HALO kernels against the reference gather: values, gradients, causality.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1) at small
sizes; on CUDA the same cases run compiled. Tolerances (relative L2 error against a float64 reference):
fp32 1e-5 (the interpreter and the GPU's ieee dots are exact up to rounding), bf16 2e-2 (bf16 operands,
fp32 accumulation: about 5e-3 is typical).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.config import HaloConfig  # noqa: E402
from halo_lab.kernels.halo_attention import halo_triton_attention  # noqa: E402
from halo_lab.kernels.halo_attention.naive import naive_attention  # noqa: E402
from halo_lab.kernels.halo_attention.tables import graph_tables  # noqa: E402
from halo_lab.model import attention as attn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def check(config: HaloConfig, n: int, heads: int, kv_heads: int, head_dim: int, dtype, batch: int = 1):
    torch.manual_seed(n + heads + head_dim)
    L = n + config.num_globals
    ins = [
        torch.randn(batch, h, L, head_dim, device=DEVICE, dtype=dtype, requires_grad=True)
        for h in (heads, kv_heads, kv_heads)
    ]
    ref = attn.reference_attention(*[t.double() for t in ins], config, 1, 5)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ins, grad)
    out = halo_triton_attention(*ins, config, 1, 5)
    grads = torch.autograd.grad(out, ins, grad.to(dtype))
    assert torch.isfinite(out).all()
    errors = {"out": rel(out, ref), **{f"d{n}": rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    assert max(errors.values()) < TOL[dtype], errors


def cfg(**kw) -> HaloConfig:
    base = dict(local_window=16, dilated_offsets=[1, 2, 4], num_random=2, num_globals=2, graph_block_size=32)
    return HaloConfig(**{**base, **kw})


# (graph, text length, query heads, KV heads, head_dim): lengths below the window, at and off the tiles
CASES = {
    "block-g2-r2": (cfg(), 150, 4, 2, 32),
    "token-g2-r2": (cfg(random_edges="token"), 150, 4, 2, 32),
    "shorter-than-window": (cfg(), 9, 4, 2, 32),
    "tile-multiple": (cfg(), 128 - 2, 4, 1, 32),
    "gqa2-d64-token": (cfg(random_edges="token"), 64 - 2, 2, 1, 64),
    "no-globals": (cfg(num_globals=0), 100, 4, 4, 32),
    "no-random": (cfg(num_random=0), 100, 2, 2, 32),
    "no-dilated": (cfg(dilated_offsets=[]), 100, 4, 2, 32),
    "window-only": (cfg(dilated_offsets=[], num_random=0, num_globals=0), 70, 2, 1, 32),
    "gqa1-d64": (cfg(), 90, 2, 2, 64),
    "gqa4-d128": (cfg(random_edges="token"), 70, 4, 1, 128),
    "absolute-dilation": (cfg(dilation_rule="absolute", dilated_offsets=[3, 16, 40]), 120, 2, 1, 32),
    "token-per-row-atomics": (cfg(random_edges="token", num_globals=3, num_random=3), 200, 2, 1, 16),
    "gqa8": (cfg(dilated_offsets=[1, 2, 4, 8]), 100, 8, 1, 32),  # 2 positions per dilated group
    "window-64": (cfg(local_window=64), 200, 4, 1, 32),  # the default window and dK/dV tiles
}


@pytest.mark.parametrize("name", CASES)
def test_matches_reference_fp32(name):
    check(*CASES[name], torch.float32)


@pytest.mark.parametrize("name", ["block-g2-r2", "token-g2-r2", "gqa4-d128"])
def test_matches_reference_bf16(name):
    check(*CASES[name], torch.bfloat16)


@pytest.mark.parametrize("name", ["block-g2-r2", "token-g2-r2", "absolute-dilation", "gqa4-d128", "gqa8"])
def test_per_distance_dilated_tiles_match_reference(name, monkeypatch):
    """The dilated keys as one tile per distance (DIL_GROUPED off, the kernels' earlier form, kept for
    kernel_tune.py's comparison) are the same function as the grouped products."""
    from halo_lab.kernels.halo_attention import interface

    plain = interface._options

    def per_distance(head_dim, group, dtype, selecting):
        opts = plain(head_dim, group, dtype, selecting)
        return {**opts, **{k: {**opts[k], "DIL_GROUPED": False} for k in ("fwd", "dq")}}

    monkeypatch.setattr(interface, "_options", per_distance)
    monkeypatch.setattr(interface, "_PLANS", {})  # plans are built from _options once per kind of shape
    check(*CASES[name], torch.float32)
    if name in ("block-g2-r2", "token-g2-r2"):
        check(*CASES[name], torch.bfloat16)


@pytest.mark.parametrize("variant", ["dkv_bn128", "win64", "dkv_t32"])
@pytest.mark.parametrize("name", ["block-g2-r2", "token-g2-r2"])
def test_tile_variants_match_reference(name, variant, monkeypatch):
    """The launch variants experiments/bench/kernel_tune.py times (128-key dK/dV tiles, 64-key window steps,
    transposed 32-key dK/dV accumulators) compute the same function, so a faster one can become the default."""
    from halo_lab.kernels.halo_attention import interface

    plain = interface._options
    override = {
        "dkv_bn128": {"dkv": {"BLOCK_N": 128}},
        "win64": {k: {"BLOCK_N": 64} for k in ("fwd", "dq")},
        "dkv_t32": {"dkv": {"BLOCK_N": 32, "KEYS_AS_N": True}},
    }

    def wider(head_dim, group, dtype, selecting):
        opts = plain(head_dim, group, dtype, selecting)
        return {k: {**v, **override[variant].get(k, {})} for k, v in opts.items()}

    monkeypatch.setattr(interface, "_options", wider)
    monkeypatch.setattr(interface, "_PLANS", {})
    check(*CASES[name], torch.float32)


@pytest.mark.parametrize("name", CASES)
def test_bf16_dkv_tiles_match_reference_fp32(name, monkeypatch):
    """The dK/dV tiles bf16 runs with (64 keys with transposed accumulators; 32 at head_dim 128) checked in
    fp32, whose tight tolerance sees what bf16's would not; fp32's own default is the 32-key tile."""
    from halo_lab.kernels.halo_attention import interface

    plain = interface._options

    def bf16_dkv(head_dim, group, dtype, selecting):
        return {
            **plain(head_dim, group, dtype, selecting),
            "dkv": plain(head_dim, group, torch.bfloat16, selecting)["dkv"],
        }

    monkeypatch.setattr(interface, "_options", bf16_dkv)
    monkeypatch.setattr(interface, "_PLANS", {})
    check(*CASES[name], torch.float32)


@pytest.mark.skipif(DEVICE != "cuda", reason="full-size shapes: compiled kernels only")
@pytest.mark.parametrize("mode", ["block", "token"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_default_graph_cuda(mode, dtype):
    check(HaloConfig(random_edges=mode, graph_seed=3), 1500, 8, 2, 64, dtype, batch=2)


def test_naive_tables_match_reference():
    """The kernel's tables describe the graph: the naive attention over them equals the reference."""
    for mode in ("block", "token"):
        c = cfg(random_edges=mode, graph_block_size=16)
        q, k, v = (torch.randn(1, h, 130, 32, dtype=torch.float64) for h in (4, 2, 2))
        tables = graph_tables(c, 2, 7, 130, "cpu")
        ref = attn.reference_attention(q, k, v, c, 2, 7)
        assert rel(naive_attention(q, k, v, tables, c), ref) < 1e-12


def test_all_layer_tables_equal_the_per_layer_graph():
    """The batched (all layers at once) random table equals each layer's own graph.random_keys."""
    from halo_lab import graph

    for mode in ("block", "token"):
        c = cfg(random_edges=mode, num_layers=3)
        pos = torch.arange(200)
        batched = graph.random_keys_layers(c, 3, 9, pos)
        for layer in range(3):
            assert torch.equal(batched[layer], graph.random_keys(c, layer, 9, pos))


def test_table_cache_is_bounded(monkeypatch):
    from halo_lab.kernels.halo_attention import tables

    monkeypatch.setattr(tables, "MAX_CACHED", 3)
    monkeypatch.setattr(tables, "_tables", {})
    for n in range(40, 50):
        graph_tables(cfg(), 0, 1, n, DEVICE)
    assert len(tables._tables) == 3


def test_tables_follow_the_step():
    c = cfg()
    first = graph_tables(c, 0, 1, 300, DEVICE).rand.clone()
    again = graph_tables(c, 0, 2, 300, DEVICE)
    assert not torch.equal(first, again.rand)
    # one table per (graph, length, device), refilled in place: no new allocation per step
    assert graph_tables(c, 0, 3, 300, DEVICE).rand.data_ptr() == again.rand.data_ptr()


@pytest.mark.parametrize("mode", ["block", "token"])
def test_causal(mode):
    """A change to token j changes no output (and no gradient of earlier queries) at positions < j."""
    c = cfg(random_edges=mode)
    n, G = 120, c.num_globals
    q, k, v = (torch.randn(1, h, n + G, 32, device=DEVICE) for h in (4, 2, 2))
    j = G + 80
    base = halo_triton_attention(q, k, v, c, 0, 3)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, j] += 5.0
    v2[:, :, j] -= 5.0
    changed = halo_triton_attention(q, k2, v2, c, 0, 3)
    assert torch.equal(base[:, :, :j], changed[:, :, :j])
    assert not torch.equal(base[:, :, j:], changed[:, :, j:])  # the test can see a change


def test_rejects_unsupported_head_dim():
    c = cfg()
    q, k, v = (torch.randn(1, h, 20, 192, device=DEVICE) for h in (2, 1, 1))
    with pytest.raises(ValueError, match="head_dim"):
        halo_triton_attention(q, k, v, c, 0, 0)


def test_rejects_a_group_that_is_not_a_power_of_two():
    c = cfg()
    q, k, v = (torch.randn(1, h, 20, 32, device=DEVICE) for h in (6, 2, 2))
    with pytest.raises(ValueError, match="6 / 2 = 3"):
        halo_triton_attention(q, k, v, c, 0, 0)


@pytest.mark.parametrize("heads, kv_heads, expected", [(8, 2, "triton"), (6, 2, "flex"), (12, 4, "flex")])
def test_auto_uses_triton_only_where_its_tiles_fit(heads, kv_heads, expected, monkeypatch):
    """On CUDA, auto must not pick the fused kernels for a heads ratio they cannot tile (it would fail
    inside the kernel, after the run started)."""
    from halo_lab.model.attention import dispatch

    monkeypatch.setattr(dispatch, "HAS_FLEX", True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    c = HaloConfig(hidden_size=64 * heads, num_heads=heads, num_kv_heads=kv_heads)
    assert attn.resolve_backend(c, torch.device("cuda")) == expected


@pytest.mark.parametrize("head_dim", [8, 24])
def test_small_and_odd_head_dims_are_padded(head_dim):
    """Head dims the tiles do not take directly (8, 24) run zero-padded, still exact."""
    check(cfg(), 60, 4, 2, head_dim, torch.float32)
