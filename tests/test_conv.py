"""The short causal depthwise convolution (HaloConfig.short_conv): causal in every backend, exact under
the KV cache, off by default."""

import pytest
import torch

from halo_lab.config import HaloConfig
from halo_lab.model import BaselineModel, CausalConv, HaloSModel, build_model

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
    short_conv=3,
)


def small(**kw) -> HaloConfig:
    return HaloConfig(**{**SMALL, **kw})


def test_off_by_default_and_validated():
    assert HaloConfig().short_conv == 0
    assert all(layer.conv is None for layer in HaloSModel(small(short_conv=0)).layers)
    assert all(isinstance(layer.conv, CausalConv) for layer in BaselineModel(small()).layers)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="short_conv"):
            small(short_conv=bad)


@pytest.mark.parametrize("backend", ["reference", "masked", "flex", "hybrid", "dense"])
@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("training", [True, False])
def test_conv_model_is_causal_in_every_backend(backend, kernel, training):
    torch.manual_seed(0)
    if backend == "dense":
        model = BaselineModel(small(short_conv=kernel))
    else:
        model = HaloSModel(small(short_conv=kernel, attention_backend=backend))
    model.train(training)
    n = 90
    x = torch.randint(0, 64, (2, n))
    for j in (n // 3, n - 1):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % 64
        # FlexAttention has no CPU backward: flex / hybrid run forward-only (eager) here
        with torch.no_grad() if backend in ("flex", "hybrid") else torch.enable_grad():
            a, _ = model(x)
            b, _ = model(y)
        assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6), "a later token changed an earlier logit"
        assert not torch.allclose(a[:, j], b[:, j]), "the changed token did not affect its own logits"


def test_conv_layer_alone_is_causal_and_reaches_kernel_minus_one_back():
    torch.manual_seed(0)
    conv = CausalConv(8, 4)
    x = torch.randn(1, 20, 8)
    y = x.clone()
    y[:, 10] += 1.0
    diff = (conv(x) - conv(y)).abs().sum(-1)[0]
    assert (diff[:10] == 0).all() and (diff[10:14] > 0).all() and (diff[14:] == 0).all()


@pytest.mark.parametrize("arch", ["halo", "dense"])
def test_cached_logits_equal_uncached_with_conv(arch):
    torch.manual_seed(1)
    model = build_model(small(), arch).eval()
    tokens = torch.randint(0, 64, (2, 120))
    with torch.no_grad():
        full, _ = model(tokens)
        caches = model.new_caches(2, 120, "cpu", torch.float32)
        pre = model.forward_cached(tokens[:, :80], caches)
        assert torch.allclose(pre, full[:, :80], atol=1e-5)
        for t in range(80, 100):  # a few tokens at a time (cache.length path)
            step = model.forward_cached(tokens[:, t : t + 1], caches)[:, 0]
            assert torch.allclose(step, full[:, t], atol=1e-5), f"cached logits differ at position {t}"
        position = caches[0].length
        for t in range(100, 120):  # the device-position decode step (what the Decoder runs)
            pos = torch.tensor([position])
            logits = model.decode_step(tokens[:, t : t + 1], pos, caches)
            position += 1
            assert torch.allclose(logits, full[:, t], atol=1e-5), f"decode step differs at position {t}"
        greedy = model.generate(tokens[:, :40], max_new_tokens=30, temperature=0)
        plain = model.generate(tokens[:, :40], max_new_tokens=30, temperature=0, use_cache=False)
        assert torch.equal(greedy, plain)
