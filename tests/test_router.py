"""The choice's own router (``HaloConfig.select_router_rank``; graph.selection.route_queries): the choice
ranks with q + (q @ down) @ up, attention keeps q. A new router ranks as q does; every backend, cached
decoding and the exported model take the same routed choice; causality holds; the routing loss trains the
router alone; a router without the routing loss is a named error."""

from __future__ import annotations

import glob

import pytest
import torch
from test_selection import assert_decodes_exactly, cfg, leaf_qkv, rows, triton_ready

from halo_lab.graph import selection
from halo_lab.graph.reference import reference_attention
from halo_lab.model import HaloSModel
from halo_lab.model import attention as attn
from halo_lab.runner.config import ConfigError, compose_config, validate_config


def router(c, rank: int = 4, seed: int = 0, scale: float = 1.0):
    """A router far from the identity (every factor drawn, so that it changes the choice): the query side's
    (down, up) and the key side's."""
    g = torch.Generator().manual_seed(seed)
    d = c.head_dim
    out = []
    for heads in (c.num_heads, c.num_kv_heads):
        out.append(torch.randn(heads, d, rank, generator=g) * scale)
        out.append(torch.randn(heads, rank, d, generator=g) * scale / rank**0.5)
    return tuple(t.requires_grad_() for t in out)


def randomise_routers(model: HaloSModel, seed: int = 0) -> None:
    with torch.no_grad():
        for layer in model.layers:
            a = layer.attn
            drawn = router(model.config, a.select_route_down.shape[-1], seed + a.layer)
            for p, t in zip(a.router, drawn):
                p.copy_(t)


def zero_ups(layers) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.attn.select_route_up.zero_()
            layer.attn.select_route_key_up.zero_()


def test_the_routed_queries_and_keys_are_their_low_rank_maps_per_head_and_keep_padded_columns_zero():
    c = cfg()
    q, k, _ = leaf_qkv(c, 40, seed=1)
    r = router(c)
    rq, rk = selection.route_queries(q, r), selection.route_keys(k, r)
    for h in range(c.num_heads):
        torch.testing.assert_close(rq[:, h], q[:, h] + q[:, h] @ r[0][h] @ r[1][h], atol=1e-5, rtol=1e-5)
    for h in range(c.num_kv_heads):
        torch.testing.assert_close(rk[:, h], k[:, h] + k[:, h] @ r[2][h] @ r[3][h], atol=1e-5, rtol=1e-5)
    assert selection.route_queries(q, None).equal(q) and selection.route_keys(k, None).equal(k)
    for x, fn, ref in ((q, selection.route_queries, rq), (k, selection.route_keys, rk)):
        routed = fn(torch.nn.functional.pad(x, (0, 16)), r)  # the kernels' zero-padded head_dim
        torch.testing.assert_close(routed[..., : c.head_dim], ref)
        assert routed[..., c.head_dim :].abs().max() == 0


def test_a_new_router_ranks_as_q_and_leaves_the_other_weights_as_they_were():
    torch.manual_seed(0)
    plain = HaloSModel(cfg()).eval()
    torch.manual_seed(0)
    routed = HaloSModel(cfg(select_router_rank=4)).eval()
    extra = set(routed.state_dict()) - set(plain.state_dict())
    names = ("down", "up", "key_down", "key_up")
    assert extra == {f"layers.{i}.attn.select_route_{n}" for i in range(2) for n in names}
    for name, t in plain.state_dict().items():
        assert routed.state_dict()[name].equal(t), name
    for a in (layer.attn for layer in routed.layers):
        assert a.select_route_up.abs().max() == 0 and a.select_route_key_up.abs().max() == 0
        assert a.select_route_down.abs().max() > 0 and a.select_route_key_down.abs().max() > 0
    x = torch.randint(0, 64, (2, 96))
    with torch.no_grad():
        assert routed(x)[0].equal(plain(x)[0])


@pytest.mark.parametrize("backend", ["reference", "masked", "triton"])
def test_every_backend_takes_the_routed_choice_in_values_and_gradients(backend):
    """The router changes the chosen blocks (so the test can fail), and every backend's output and its
    gradients (q, k, v; the router gets none: top-n) equal the reference's with the same router."""
    if backend == "triton":
        triton_ready()
    c = cfg(select_group_size=3, attention_backend=backend)
    q, k, v = leaf_qkv(c, 70, seed=5, batch=rows(backend))
    r = router(c)
    G = c.num_globals
    positions = torch.arange(70)
    plain = selection.select(q[:, :, G:], k, v, c, positions)
    routed = selection.select(q[:, :, G:], k, v, c, positions, router=r)
    assert not routed.blocks.equal(plain.blocks)
    ref = reference_attention(q, k, v, c, 1, 7, router=r)
    assert not torch.allclose(ref, reference_attention(q, k, v, c, 1, 7))
    out = attn.halo_attention(q, k, v, c, 1, 7, backend, router=r)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.autograd.grad(out.sum(), r, allow_unused=True) == (None,) * 4


@pytest.mark.parametrize("backend", ["reference", "masked"])
def test_causality_with_a_router(backend):
    torch.manual_seed(1)
    model = HaloSModel(cfg(select_router_rank=4, attention_backend=backend)).eval()
    randomise_routers(model)
    x = torch.randint(0, 64, (2, 96))
    for j in (40, 80):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 64
        with torch.no_grad():
            a, b = model(x)[0], model(y)[0]
        assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6), f"token {j} changed an earlier logit"
        assert not torch.allclose(a[:, j], b[:, j])


@pytest.mark.parametrize("m,score", [(0, "mean"), (3, "bound")])
def test_cached_decoding_with_a_router_is_exact(m, score):
    torch.manual_seed(2)
    model = HaloSModel(cfg(select_group_size=m, select_score=score, select_router_rank=4)).eval()
    randomise_routers(model, seed=3)
    x = torch.randint(0, 64, (2, 96))
    with torch.no_grad():  # the router changes this model's logits: decoding that ignored it would differ
        routed = model(x)[0]
        zero_ups(model.layers)
        assert not torch.allclose(routed, model(x)[0])
    randomise_routers(model, seed=3)
    assert_decodes_exactly(model, x)


def test_the_routing_loss_with_a_router_trains_the_router_alone():
    torch.manual_seed(3)
    model = HaloSModel(cfg(select_score="mean", select_router_rank=4)).train()
    model.set_routing_queries(8)
    x = torch.randint(0, 64, (2, 96))
    model(x)
    loss = model.routing_loss()
    names = [n for n, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    by_name = dict(zip(names, grads))
    for name, grad in by_name.items():
        if name.endswith(("select_route_up", "select_route_key_up")):
            assert grad is not None and grad.abs().max() > 0, (
                name
            )  # ups = 0: the downs' gradient is 0 at init
        elif "select_route" not in name:
            assert grad is None or grad.abs().max() == 0, f"the routing loss reached {name}"
    # at init (up = 0) the routed loss is the plain one's value
    plain = HaloSModel(cfg(select_score="mean")).train()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "select_route" not in k})
    plain.set_routing_queries(8)
    plain(x)
    assert plain.routing_loss().item() == pytest.approx(loss.item(), rel=1e-5)


def test_a_router_needs_the_selection_and_the_routing_loss(tmp_path):
    with pytest.raises(ValueError, match="select_router_rank=4: a router ranks content-selected blocks"):
        cfg(select_blocks=0, select_router_rank=4)
    with pytest.raises(ValueError, match="select_router_rank=-1: must be a non-negative integer"):
        cfg(select_router_rank=-1)
    over = ["+experiment=needle_tiny", "variant=halo_select", "model.select_router_rank=4"]
    with pytest.raises(
        ConfigError, match=r"^model\.select_router_rank=4: the router learns from the routing"
    ):
        validate_config(compose_config(over, output_dir=tmp_path))
    validate_config(compose_config([*over, "module.select_routing_loss=1"], output_dir=tmp_path))


def test_a_tiny_run_trains_the_router(tmp_path):
    from halo_lab.train import run

    over = ["+experiment=needle_tiny", "variant=halo_select", "model.select_block_size=4", "logger=none",
            "model.select_router_rank=4", "module.select_routing_loss=1", "module.select_routing_queries=16"]  # fmt: skip
    result = run(compose_config(over, output_dir=tmp_path))
    assert result["steps"] == 4
    ckpt = sorted(glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True))
    assert ckpt, "no checkpoint written"
    state = torch.load(ckpt[-1], map_location="cpu", weights_only=False)["state_dict"]
    ups = [v for k, v in state.items() if k.endswith(("select_route_up", "select_route_key_up"))]
    assert ups and all(u.abs().max() > 0 for u in ups)  # moved off zero by the routing loss


def test_the_exported_model_takes_the_routed_choice(tmp_path):
    from test_hf_export import hf_load

    from halo_lab.hub import save_for_hub
    from halo_lab.tokenizers import CharacterTokenizer

    torch.manual_seed(4)
    model = HaloSModel(cfg(vocab_size=256, select_router_rank=4)).eval()
    randomise_routers(model, seed=5)
    save_for_hub(model, None, tmp_path, tokenizer=CharacterTokenizer())
    hf = hf_load(tmp_path)
    x = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)[0]
        torch.testing.assert_close(hf(x).logits, ours, rtol=1e-5, atol=1e-5)
        zero_ups(hf.layers)  # the router is read: zeroed, the logits differ
        assert not torch.allclose(hf(x).logits, ours, rtol=1e-5, atol=1e-5)


def test_the_dense_warmup_trains_through_dense_attention_and_evaluates_the_graph(monkeypatch):
    """While set, a training forward is dense causal attention over every key (the same as a model whose
    HALO attention is replaced by SDPA); in eval mode the graph runs whatever the flag."""
    torch.manual_seed(5)
    model = HaloSModel(cfg(select_router_rank=4))
    randomise_routers(model)
    x = torch.randint(0, 64, (2, 96))
    with torch.no_grad():
        evaluated = model.eval()(x)[0]
    model.train()
    graph = model(x)[0]
    model.set_dense_warmup(True)
    warm = model(x)[0]
    assert not torch.allclose(warm, graph)
    assert model.backend_record.get("training") == "dense"
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)[0], evaluated)
    model.set_dense_warmup(False)
    monkeypatch.setattr(attn, "halo_attention", lambda q, k, v, *a, **kw: attn.dense_attention(q, k, v))
    model.train()
    torch.testing.assert_close(model(x)[0], warm)
    # causal: a later token changes no earlier logit in the warm-up either
    model.set_dense_warmup(True)
    y = x.clone()
    y[:, 50] = (y[:, 50] + 1) % 64
    assert torch.allclose(model(y)[0][:, :50], warm[:, :50], atol=1e-6)


@pytest.mark.parametrize("warmup,ran", [(10, "dense"), (2, "masked")])
def test_a_run_switches_from_the_dense_warmup_to_the_graph_at_its_step(tmp_path, warmup, ran):
    import json

    from halo_lab.train import run

    over = ["+experiment=needle_tiny", "variant=halo_select", "model.select_block_size=4", "logger=none",
            "model.attention_backend=masked", f"module.select_dense_warmup={warmup}"]  # fmt: skip
    assert run(compose_config(over, output_dir=tmp_path))["steps"] == 4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["attention_backend"] == ran  # what the last training step ran


@pytest.mark.parametrize(
    "overrides,bad",
    [(["module.select_dense_warmup=-1"], "-1"), (["module.select_dense_warmup=1.5"], "1.5"),
     (["variant=dense", "module.select_dense_warmup=10"], "10")],
)  # fmt: skip
def test_bad_dense_warmups_are_named(tmp_path, overrides, bad):
    with pytest.raises(ConfigError, match=rf"^module\.select_dense_warmup={bad}: must be an integer >= 0"):
        validate_config(compose_config(["+experiment=needle_tiny", *overrides], output_dir=tmp_path))


def test_the_dense_warmup_under_ddp_needs_find_unused_parameters():
    """The selection's pooling and biases get no gradient while the attention is dense: DDP's reducer
    needs find_unused_parameters, named before training instead of a hang or a reducer error."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from halo_lab.runner.module import check_warmup_strategy

    hp = {"select_dense_warmup": 10, "model_config": {"select_blocks": 4}}
    match = r"^module\.select_dense_warmup=10: under DDP .*trainer\.strategy\.find_unused_parameters=true$"
    with pytest.raises(ConfigError, match=match):
        check_warmup_strategy(hp, DDPStrategy(find_unused_parameters=False))
    check_warmup_strategy(hp, DDPStrategy(find_unused_parameters=True))
    check_warmup_strategy(hp, SingleDeviceStrategy(device="cpu"))
    check_warmup_strategy(
        {**hp, "model_config": {"select_blocks": 0}}, DDPStrategy(find_unused_parameters=False)
    )
    check_warmup_strategy({**hp, "select_dense_warmup": 0}, DDPStrategy(find_unused_parameters=False))
