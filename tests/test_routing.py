"""The selection's routing loss (halo_lab/graph/selection.py, ``routing_loss``; ``module.select_routing_loss``):
against a loop over queries, blocks and groups; causal in what it trains; unchanged by gradient
checkpointing; off by default; bad settings named; a run that logs it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_selection import cfg
from test_selection import qkv as selection_qkv

from halo_lab.config import HaloConfig
from halo_lab.graph import selection
from halo_lab.model import build_model
from halo_lab.runner.config import ConfigError, compose_config


def qkv(c: HaloConfig, n: int, seed: int = 0):
    return selection_qkv(c, n, seed=seed, grad=True)


def kl(target: list[float], scores: list[float]) -> float:
    z = math.log(sum(math.exp(s) for s in scores))
    return sum(t * (math.log(t) - (s - z)) for t, s in zip(target, scores) if t > 0)


def loop_loss(q, k, c: HaloConfig, positions: list[int]) -> float:
    """The docstring of ``routing_loss`` as loops: per row, KV head and query, the target mass of each
    candidate block (and complete group) under softmax(q . k / sqrt(d)) over the candidates' tokens, and
    the KL to the softmax of the ranking scores."""
    G, b, m = c.num_globals, c.select_block_size, c.select_group_size
    q, k = q.detach(), k.detach()
    B, Hq, _, d = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    blocks, groups = [], []
    for bi in range(B):
        for h in range(Hkv):
            heads = range(h * g, (h + 1) * g)
            for p in positions:
                cp = int(selection.candidate_blocks(c, torch.tensor([p]))[0])
                keys = k[bi, h, G : G + cp * b].double()
                mass = [0.0] * cp
                for hh in heads:
                    w = torch.softmax(keys @ q[bi, hh, G + p].double() / math.sqrt(d), 0)
                    for j in range(cp):
                        mass[j] += float(w[j * b : (j + 1) * b].sum()) / g

                def score(members, bi=bi, h=h, heads=heads, p=p):
                    ks = torch.cat([k[bi, h, G + j * b : G + (j + 1) * b] for j in members]).double()
                    total = 0.0
                    for hh in heads:
                        x = q[bi, hh, G + p].double()
                        if c.select_score == "bound":
                            lo, hi = ks.amin(0), ks.amax(0)
                            total += float(torch.maximum(x * lo, x * hi).sum())
                        else:  # a group's summary: the mean of its blocks' means, = the mean of its keys
                            total += float(x @ ks.mean(0))
                    return total / math.sqrt(d)

                blocks.append(kl(mass, [score([j]) for j in range(cp)]))
                ng = cp // m if m else 0
                if ng >= 2:
                    gm = [sum(mass[gi * m : (gi + 1) * m]) for gi in range(ng)]
                    gm = [x / sum(gm) for x in gm]
                    groups.append(kl(gm, [score(range(gi * m, (gi + 1) * m)) for gi in range(ng)]))
    return sum(blocks) / len(blocks) + (sum(groups) / len(groups) if groups else 0.0)


@pytest.mark.parametrize("m,score", [(0, "mean"), (3, "mean"), (3, "bound")])
def test_the_routing_loss_equals_the_loops(m, score):
    c = cfg(select_group_size=m, select_score=score)
    q, k, v = qkv(c, 90, seed=m)
    positions = selection.routing_queries(c, 90, 6, step=5)
    assert len(positions) == 6 and int(positions.min()) >= 0
    got = selection.routing_loss(q, k, v, c, 6, step=5)
    assert got.item() == pytest.approx(loop_loss(q, k, c, positions.tolist()), rel=1e-4, abs=1e-6)
    assert got.item() > 0


@pytest.mark.parametrize("window,block", [(8, 4), (2, 8), (16, 16)])
def test_the_sampled_queries_take_turns_and_have_two_candidates(window, block):
    c = cfg(local_window=window, select_block_size=block)
    seen = set()
    for step in range(120):
        pos = selection.routing_queries(c, 120, 8, step)
        assert len(pos) == 8 and bool((selection.candidate_blocks(c, pos) >= 2).all())
        seen |= set(pos.tolist())
    eligible = set(torch.nonzero(selection.candidate_blocks(c, torch.arange(120)) >= 2).flatten().tolist())
    assert seen == eligible  # every eligible query is read at some step
    assert len(selection.routing_queries(c, 10, 8, 0)) == 0  # too short: nothing to rank
    assert selection.routing_loss(*qkv(c, 10), c, 8) is None


def test_the_routing_loss_trains_only_the_query_and_its_past():
    """It trains the ranking of one query's candidates: the gradient reaches that query's q and the keys
    of its candidate blocks (complete, before its window), nothing later, and never the values."""
    c = cfg(select_group_size=0)
    q, k, v = qkv(c, 90, seed=3)
    (p,) = selection.routing_queries(c, 90, 1, step=40).tolist()
    cp = int(selection.candidate_blocks(c, torch.tensor([p]))[0])
    gq, gk, gv = torch.autograd.grad(
        selection.routing_loss(q, k, v, c, 1, step=40), (q, k, v), allow_unused=True
    )
    G, b = c.num_globals, c.select_block_size
    assert gv is None or bool((gv == 0).all())
    rows = gq.abs().sum((0, 1, 3))
    assert rows[G + p] > 0 and float(rows.sum() - rows[G + p]) == 0
    keys = gk.abs().sum((0, 1, 3))
    assert keys[G : G + cp * b].sum() > 0 and float(keys[G + cp * b :].sum()) == 0 and p >= cp * b


def _model(c: HaloConfig):
    torch.manual_seed(0)
    model = build_model(c.replace(attention_backend="masked"), "halo").train()
    model.set_routing_queries(8)
    return model


def test_gradient_checkpointing_gives_the_same_routing_gradients():
    c = cfg()
    x = torch.randint(0, 64, (2, 80))
    grads = []
    for checkpointing in (False, True):
        model = _model(c)
        if checkpointing:
            model.enable_gradient_checkpointing()
        _, loss = model(x, x)
        routing = model.routing_loss()
        (loss + 0.5 * routing).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def test_off_by_default_and_in_eval():
    c = cfg()
    x = torch.randint(0, 64, (2, 80))
    model = build_model(c.replace(attention_backend="masked"), "halo").train()
    model(x, x)
    assert model.routing_loss() is None  # nothing asked for it
    model.set_routing_queries(8)
    model(x, x)
    assert model.routing_loss() is not None
    model.eval()
    with torch.no_grad():
        model(x, x)
    assert model.routing_loss() is None  # validation and generation never compute it


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["variant=halo_select", "module.select_routing_loss=-0.1"], "select_routing_loss"),
        (["variant=halo_select", "module.select_routing_loss=yes"], "select_routing_loss"),
        (["variant=dense", "module.select_routing_loss=0.1"], "select_routing_loss"),
        (["variant=halo", "module.select_routing_loss=0.1"], "select_routing_loss"),
        (["variant=halo_select", "module.select_routing_queries=0"], "select_routing_queries"),
        (["variant=halo_select", "module.select_routing_queries=1.5"], "select_routing_queries"),
    ],
)
def test_bad_routing_settings_are_named(tmp_path, overrides, key):
    from halo_lab.runner.config import validate_config

    with pytest.raises(ConfigError, match=rf"^module\.{key}="):
        validate_config(compose_config(overrides, output_dir=tmp_path))


def test_a_tiny_run_trains_with_the_routing_loss_and_logs_it(tmp_path):
    from halo_lab.train import run

    over = ["+experiment=needle_tiny", "variant=halo_select", "model.select_block_size=4", "logger=none",
            "module.select_routing_loss=0.5", "module.select_routing_queries=16"]  # fmt: skip
    result = run(compose_config(over, output_dir=tmp_path))
    assert result["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    values = [r["train/routing_loss"] for r in rows if "train/routing_loss" in r]
    assert values and all(v > 0 and math.isfinite(v) for v in values)


def test_the_routing_loss_is_fp32_under_autocast():
    """bf16-mixed training runs the layer under autocast: the loss's products stay fp32 (a bf16 einsum
    moves the KL by about 1e-3 here), so the value equals the one outside autocast."""
    c = cfg(select_score="mean")
    q, k, v = qkv(c, 90, seed=7)
    plain = selection.routing_loss(q, k, v, c, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = selection.routing_loss(q, k, v, c, 6)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(plain.item(), rel=1e-6)
