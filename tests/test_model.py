"""HaloSModel / BaselineModel: causality in every backend and mode, backend equivalence, generation."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.generation import sample_next_token
from halo_lab.model import BaselineModel, HaloSModel, build_model
from halo_lab.model import attention as attn

SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    local_window=8,
    num_random=2,
    dropout=0.0,
    max_seq_len=400,
    graph_block_size=16,
)


def small(**kw) -> HaloConfig:
    return HaloConfig(**{**SMALL, **kw})


def halo(backend="reference", seed=0, **kw) -> HaloSModel:
    torch.manual_seed(seed)
    return HaloSModel(small(attention_backend=backend, **kw))


def grad_ctx(backend):
    # FlexAttention has no CPU backward: compare it forward-only here; the GPU bench checks gradients
    return torch.no_grad() if backend in ("flex", "hybrid") else torch.enable_grad()


# ------------------------------------------------------------------------------------ causality


@pytest.mark.parametrize("backend", ["reference", "masked", "triton", "flex", "hybrid", "dense"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("n", [5, 77, 150])
@pytest.mark.parametrize("mode", ["block", "token"])
def test_causality(backend, training, n, mode):
    model = BaselineModel(small()) if backend == "dense" else halo(backend, random_edges=mode)
    model.train(training)
    model.set_graph_step(3)
    x = torch.randint(0, 64, (2, n))
    j = n * 2 // 3
    y = x.clone()
    y[:, j] = (y[:, j] + 1) % 64
    with grad_ctx(backend):
        a, _ = model(x)
        b, _ = model(y)
    assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6), "a later token changed an earlier logit"
    assert not torch.allclose(a[:, j], b[:, j]), "the changed token did not affect its own logits"


@pytest.mark.parametrize("arch", ["halo", "dense"])
@pytest.mark.parametrize("mode", ["block", "token"])
def test_cached_logits_equal_uncached(arch, mode):
    torch.manual_seed(1)
    model = build_model(small(random_edges=mode), arch).eval()
    tokens = torch.randint(0, 64, (2, 140))
    with torch.no_grad():
        full, _ = model(tokens)
        caches = model.new_caches(2, 140, "cpu", torch.float32)
        for c in caches:  # poison unwritten slots: a decode that reads ahead of the cache would see them
            c.k.normal_(std=100.0)
            c.v.normal_(std=100.0)
        pre = model.forward_cached(tokens[:, :100], caches)
        assert torch.allclose(pre, full[:, :100], atol=1e-5)
        for t in range(100, 140):
            step = model.forward_cached(tokens[:, t : t + 1], caches)[:, 0]
            assert torch.allclose(step, full[:, t], atol=1e-5), f"cached logits differ at position {t}"


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("mode", ["block", "token"])
@pytest.mark.parametrize("trial", range(3))
def test_flex_matches_reference(mode, trial):
    gen = torch.Generator().manual_seed(trial)
    n = int(torch.randint(20, 300, (1,), generator=gen))
    c = small(
        random_edges=mode,
        num_random=int(torch.randint(0, 4, (1,), generator=gen)),
        local_window=int(torch.randint(1, 40, (1,), generator=gen)),
        num_globals=int(torch.randint(0, 4, (1,), generator=gen)),
        graph_seed=trial,
    )
    L = n + c.num_globals
    q = torch.randn(2, 4, L, 8, generator=gen)
    k = torch.randn(2, 2, L, 8, generator=gen)
    v = torch.randn(2, 2, L, 8, generator=gen)
    step = int(torch.randint(0, 1000, (1,), generator=gen))
    ref = attn.reference_attention(q, k, v, c, 1, step)
    with torch.no_grad():
        for backend in ("masked", "flex", "hybrid"):
            fast = attn.halo_attention(q, k, v, c, 1, step, backend)
            assert (fast - ref).norm() / ref.norm() < 1e-5, backend


@pytest.mark.parametrize("mode", ["block", "token"])
def test_masked_backend_gradients_match_reference(mode):
    c = small(random_edges=mode, graph_seed=4)
    L = 230 + c.num_globals
    ins = [torch.randn(2, h, L, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2)]
    ref = attn.reference_attention(*ins, c, 3, 17)
    out = attn.masked_attention(*ins, c, 3, 17)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("mode", ["block", "token"])
def test_two_path_split_partitions_the_graph_values_and_gradients(mode):
    """The hybrid backend's decomposition (window part + long-range part, merged by log-sum-exp) is exact,
    gradients included; here both parts run through the gather path so autograd works on CPU."""
    c = small(random_edges=mode, num_globals=3)
    n = 170
    L = n + c.num_globals
    window = graph.window_index(c, n, "cpu")
    extra = graph.extra_index(c, 2, 9, n, "cpu")
    both = torch.cat([window, extra], 1)
    full = graph.full_neighbor_index(c, 2, 9, n, "cpu")
    for a, b in zip(both.tolist(), full.tolist()):
        ka, kb = [x for x in a if x >= 0], [x for x in b if x >= 0]
        assert sorted(ka) == sorted(kb) and len(ka) == len(set(ka)), "the two paths must partition the edges"
    ins = [torch.randn(2, h, L, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2)]
    out = attn.merge_by_lse(*attn.gather_attention_lse(*ins, window), *attn.gather_attention_lse(*ins, extra))
    ref = attn.reference_attention(*ins, c, 2, 9)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
        assert not a.isnan().any() and torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("backend", ["flex", "hybrid"])
def test_compile_failure_falls_back_to_an_exact_backend_once(backend, monkeypatch):
    # Inductor can find no kernel for a shape (seen on an H200: float32 prefill, 8 heads on 2 KV heads).
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise torch._inductor.exc.InductorError(RuntimeError("NoValidChoicesError"), None)

    from halo_lab.model.attention import dispatch

    monkeypatch.setattr(
        dispatch, f"{backend}_attention" if backend == "hybrid" else "flex_graph_attention", broken
    )
    monkeypatch.setattr(dispatch, "_compile_failed", set())
    c = small()
    q, k, v = (torch.randn(1, 4, 50 + c.num_globals, 8) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = attn.halo_attention(q, k, v, c, 0, -1, backend)
            again = attn.halo_attention(q, k, v, c, 0, -1, backend)
    ref = attn.reference_attention(q, k, v, c, 0, -1)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(again, ref, atol=1e-5)
    assert len(calls) == 1, "a failed compile must not be retried for the same shape"
    assert any("failed to compile" in str(w.message) for w in caught)


def test_flex_mask_updates_with_step():
    c = small(random_edges="token")
    q = torch.randn(1, 4, 202, 8)
    k, v = torch.randn(1, 2, 202, 8), torch.randn(1, 2, 202, 8)
    with torch.no_grad():
        for step in (1, 2, 1):
            ref = attn.reference_attention(q, k, v, c, 0, step)
            assert torch.allclose(attn.flex_graph_attention(q, k, v, c, 0, step), ref, atol=1e-5)


def dense_graph_config(n: int) -> HaloConfig:
    return small(num_globals=0, local_window=n, dilated_offsets=[], num_random=0)


@pytest.mark.parametrize("backend", ["reference", "masked", "flex", "hybrid"])
def test_graph_covering_everything_equals_dense_sdpa(backend):
    n = 50
    c = dense_graph_config(n)
    q = torch.randn(2, 4, n, 8, requires_grad=True)
    k = torch.randn(2, 2, n, 8, requires_grad=True)
    v = torch.randn(2, 2, n, 8, requires_grad=True)
    dense = attn.dense_attention(q, k, v)
    with grad_ctx(backend):
        out = attn.halo_attention(q, k, v, c, 0, 0, backend)
    assert torch.allclose(out, dense, atol=1e-5)
    # the whole model too: HALO-S with a complete graph and no globals is the dense baseline
    torch.manual_seed(0)
    h = HaloSModel(c.replace(attention_backend=backend)).eval()
    b = BaselineModel(c).eval()
    b.load_state_dict(h.state_dict())
    x = torch.randint(0, 64, (2, n))
    with torch.no_grad():
        assert torch.allclose(h(x)[0], b(x)[0], atol=1e-5)


def test_reference_gradients_match_dense_and_masked_softmax():
    """The oracle's gradients (inputs) equal an explicit masked softmax over the same graph."""
    c = small(random_edges="token")
    n = 90
    L = n + c.num_globals
    q = torch.randn(1, 4, L, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, L, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, L, 8, dtype=torch.float64, requires_grad=True)
    mask = graph.dense_mask(c, 0, 5, n)
    out = attn.reference_attention(q, k, v, c, 0, 5)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
    assert torch.allclose(out, expected, atol=1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_expected = torch.autograd.grad(expected, (q, k, v), g)
    for a, b in zip(grads, grads_expected):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
@pytest.mark.parametrize("mode", ["block", "token"])
def test_flex_gradients_match_reference_cuda(mode):
    c = HaloConfig(random_edges=mode, graph_seed=3)
    n = 700
    L = n + c.num_globals
    ins = [torch.randn(2, h, L, 64, device="cuda", requires_grad=True) for h in (8, 2, 2)]
    ref = attn.reference_attention(*ins, c, 2, 9)
    g = torch.randn_like(ref)
    for backend in ("flex", "hybrid"):
        fast = attn.halo_attention(*ins, c, 2, 9, backend)
        assert (fast - ref).norm() / ref.norm() < 1e-3
        for a, b in zip(
            torch.autograd.grad(ref, ins, g, retain_graph=True), torch.autograd.grad(fast, ins, g)
        ):
            assert (a - b).norm() / a.norm() < 1e-3


def test_auto_backend_falls_back_on_cpu():
    c = small(attention_backend="auto")
    assert attn.resolve_backend(c, torch.device("cpu"), 300) == "masked"
    assert attn.resolve_backend(c, torch.device("cpu"), attn.MASKED_MAX_LEN + 1) == "reference"
    model = halo("flex")
    x = torch.randint(0, 64, (1, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, loss = model(x, x)  # flex training on CPU falls back to the reference instead of failing
    loss.backward()
    assert model.global_memory.grad is not None


# ------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("arch", ["halo", "dense"])
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    model = build_model(small(), arch)
    x = torch.randint(0, 64, (2, 120))
    _, loss = model(x, x)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    if arch == "halo":
        assert "global_memory" in dict(model.named_parameters())


def test_gradient_checkpointing_same_gradients():
    model = halo(dropout=0.1)
    model.train()
    model.set_graph_step(7)
    x = torch.randint(0, 64, (2, 100))

    def grads():
        model.zero_grad()
        torch.manual_seed(123)
        model(x, x)[1].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    ckpt = grads()
    model.disable_gradient_checkpointing()
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n


def test_loss_ignores_minus_100_targets_and_matches_cross_entropy():
    model = halo()
    x = torch.randint(0, 64, (2, 30))
    t = x.clone()
    t[:, :10] = -100
    logits, loss = model(x, t)
    expected = F.cross_entropy(logits[:, 10:].reshape(-1, 64), t[:, 10:].reshape(-1))
    assert torch.allclose(loss, expected)


def test_train_mode_graph_follows_step():
    model = halo(random_edges="token").train()
    x = torch.randint(0, 64, (1, 200))
    with torch.no_grad():
        model.set_graph_step(1)
        a = model(x)[0]
        model.set_graph_step(2)
        b = model(x)[0]
        model.set_graph_step(1)
        c = model(x)[0]
    assert torch.equal(a, c) and not torch.allclose(a, b)


def test_sequence_longer_than_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        halo()(torch.zeros(1, 401, dtype=torch.long))


# ------------------------------------------------------------------------------------ generation


class ByteTok:
    def encode(self, s):
        return list(s.encode())[:]

    def decode(self, ids):
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("arch", ["halo", "dense"])
def test_cached_greedy_equals_uncached(arch):
    torch.manual_seed(0)
    model = build_model(small(), arch)
    prompt = torch.randint(0, 64, (3, 15))
    cached = model.generate(prompt, max_new_tokens=60, temperature=0)
    uncached = model.generate(prompt, max_new_tokens=60, temperature=0, use_cache=False)
    assert cached.shape == (3, 75) and torch.equal(cached, uncached)
    assert torch.equal(cached[:, :15], prompt)
    assert model.training, "generate() must restore the training mode"


def test_top_k_1_is_greedy_and_1d_prompt():
    model = halo()
    prompt = torch.randint(0, 64, (12,))
    greedy = model.generate(prompt, max_new_tokens=20, temperature=0)
    assert greedy.dim() == 1 and greedy.shape[0] == 32
    assert torch.equal(model.generate(prompt, max_new_tokens=20, temperature=1.3, top_k=1), greedy)


def test_stop_token_stops():
    model = halo()
    prompt = torch.randint(0, 64, (1, 5))
    greedy = model.generate(prompt, max_new_tokens=30, temperature=0)
    stop = int(greedy[0, 8])
    out = model.generate(prompt, max_new_tokens=30, temperature=0, stop_token=stop)
    first = (greedy[0, 5:] == stop).nonzero()[0].item() + 5
    assert out.shape[1] == first + 1 and out[0, -1] == stop


def test_string_generation_needs_tokenizer_and_returns_string():
    model = HaloSModel(small(vocab_size=256))
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate("hello")
    text = model.generate("hello", tokenizer=ByteTok(), max_new_tokens=5, temperature=0)
    assert isinstance(text, str) and text.startswith("hello")
    many = model.generate(["a", "longer prompt"], tokenizer=ByteTok(), max_new_tokens=3)
    assert len(many) == 2 and many[1].startswith("longer prompt")


def test_generation_beyond_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        halo().generate(torch.zeros(1, 390, dtype=torch.long), max_new_tokens=20)


def test_temperature_and_top_p_shape_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)

    def freq(**kw):
        return torch.bincount(sample_next_token(logits, generator=g, **kw), minlength=4).float() / 4000

    base = freq(temperature=1.0)
    expected = logits[0].softmax(-1)
    assert torch.allclose(base, expected, atol=0.03)
    cold, hot = freq(temperature=0.3), freq(temperature=3.0)
    assert cold[0] > base[0] > hot[0]
    nucleus = freq(temperature=1.0, top_p=0.5)  # p = .58,.21,.13,.08: only the top token survives
    assert nucleus[0] == 1.0
    nucleus = freq(temperature=1.0, top_p=0.7)
    assert nucleus[2:].sum() == 0 and nucleus[1] > 0.2
    topk = freq(temperature=1.0, top_k=2)
    assert topk[2:].sum() == 0 and math.isclose(topk[0].item(), 0.731, abs_tol=0.04)


# ------------------------------------------------------------------------------------ config & misc


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(hidden_size=30, num_heads=4), "hidden_size"),
        (dict(num_heads=6, num_kv_heads=4, hidden_size=48), "num_heads"),
        (dict(dropout=1.0), "dropout"),
        (dict(local_window=0), "local_window"),
        (dict(dilated_offsets=[1, -2]), "dilated_offsets"),
        (dict(num_layers=0), "num_layers"),
        (dict(random_edges="sometimes"), "random_edges"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"HaloConfig\.{field}="):
        HaloConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    c = small(random_edges="token", dilated_offsets=[2, 3])
    assert HaloConfig.from_dict(c.to_dict()) == c
    with pytest.warns(UserWarning, match="not_a_field"):
        d = HaloConfig.from_dict({"hidden_size": 64, "num_heads": 4, "not_a_field": 1})
    assert d.hidden_size == 64 and d.num_layers == HaloConfig().num_layers
    assert HaloConfig().num_neighbors == 2 + 64 + 4 + 2 and HaloConfig().head_dim == 64


def test_summary_flops_and_params():
    model = halo()
    assert "HaloSModel" in model.summary() and "K=" in model.summary()
    f = model.estimate_flops(256)
    assert f["total"] == f["attention"] + f["projections"] + f["ffn"] + f["lm_head"]
    assert 0 < f["global"] < f["attention"]
    dense = BaselineModel(small()).estimate_flops(256)
    assert dense["attention"] > f["attention"]
    assert model.count_parameters() == sum(p.numel() for p in model.parameters())


def test_tied_embeddings_share_one_tensor():
    model = HaloSModel(small(tie_embeddings=True))
    assert model.lm_head.weight is model.token_emb.weight
    untied = HaloSModel(small())
    assert model.count_parameters() == untied.count_parameters() - 64 * 32


def test_public_names():
    import halo_lab

    for name in ("HaloConfig", "HaloSModel", "BaselineModel", "set_seed", "count_parameters"):
        assert getattr(halo_lab, name) is not None
