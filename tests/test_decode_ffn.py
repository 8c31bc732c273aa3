"""The split-K decode FFN (``halo_lab.kernels.decode_ffn``) against its torch reference, and the gemv prologue
that reads its sums.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on CUDA
compiled. The hidden size is not a multiple of BLOCK_H and C not a power of two, on purpose.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import decode_attn_o as ka  # noqa: E402
from halo_lab.kernels import decode_ffn as kf  # noqa: E402
from halo_lab.kernels import gemv as kg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(batch, c, h, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(batch, c, device=DEVICE, dtype=dtype, generator=g)
    w_up = (torch.randn(2 * h, c, device=DEVICE, generator=g) / c**0.5).to(dtype)
    w_down = (torch.randn(c, h, device=DEVICE, generator=g) / h**0.5).to(dtype)
    nw = (1 + 0.1 * torch.randn(c, device=DEVICE, generator=g)).to(dtype)
    nb = (0.1 * torch.randn(c, device=DEVICE, generator=g)).to(dtype)
    return x, w_up, w_down, nw, nb


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_decode_ffn_matches_reference(norm, dtype):
    x, w_up, w_down, nw, nb = inputs(2, 48, 40, dtype)
    kw = {"norm": norm, "norm_weight": nw, "norm_bias": nb if norm == "layernorm" else None}
    acc = torch.zeros(2, 48, device=DEVICE)
    kf.decode_ffn(x, w_up, w_down, acc, **kw)
    d = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    ref = kf.reference_decode_ffn(x.double(), w_up.double(), w_down.double(), **d)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert acc.dtype == torch.float32 and rel(acc, ref) < tol
    # it adds: a second launch doubles the sums
    kf.decode_ffn(x, w_up, w_down, acc, **kw)
    assert rel(acc, 2 * ref) < tol
    # the check can fail: another hidden unit's down column, or the up rows swapped with the gate's
    assert rel(kf.reference_decode_ffn(x, w_up, w_down.roll(1, 1), **kw), ref) > 0.1
    assert rel(kf.reference_decode_ffn(x, w_up.roll(40, 0), w_down, **kw), ref) > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,kv_heads,hidden", [(4, 2, 48), (6, 2, 40), (8, 1, 64), (2, 2, 40)])
def test_attention_split_over_kv_heads_matches_reference(dtype, heads, kv_heads, hidden):
    """``decode_attn_o_split``: each KV head's programs add their heads' share of the o-projection into the
    fp32 buffer (here the first half of a [B, 2C] buffer: strided rows), which holds the whole product."""
    from tests.test_decode_fused import attn_o_inputs

    q, k, v, slots, w, _ = attn_o_inputs(dtype, heads, kv_heads, hidden)
    buf = torch.zeros(2, 2 * hidden, device=DEVICE)
    ka.decode_attn_o_split(q, k, v, slots, w, buf[:, :hidden])
    ref = ka.reference_decode_attn_o_split(q.double(), k.double(), v.double(), slots, w.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel(buf[:, :hidden], ref) < tol and not buf[:, hidden:].any()
    # the check can fail: a missing key, another head's slice of W_o
    assert rel(ka.reference_decode_attn_o_split(q, k, v, slots[:-1], w), ref) > 0.05
    assert rel(ka.reference_decode_attn_o_split(q, k, v, slots, w.roll(16, 1)), ref) > 0.1
    # rounded and added to the residual it is the unfused attention + o-projection
    res = torch.randn(2, hidden, device=DEVICE).to(dtype)
    fused = (res.float() + buf[:, :hidden].to(dtype).float()).to(dtype)
    unfused = ka.reference_decode_attn_o(q.double(), k.double(), v.double(), slots, w.double(), res.double())
    assert rel(fused, unfused) < tol
    with pytest.raises(ValueError, match="acc"):
        ka.decode_attn_o_split(q, k, v, slots, w, buf[:, :hidden].half())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_ffn_after_the_split_attention(dtype):
    """``acc_in``: the FFN's input is x + the split attention's sums rounded, which it also stores as the
    residual (the unfused step's x + round(o_proj(...)) then its FFN)."""
    x, w_up, w_down, nw, nb = inputs(2, 48, 40, dtype)
    a_in = torch.randn(2, 48, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(1))
    x_mid = (x.float() + a_in.to(dtype).float()).to(dtype)
    acc = torch.zeros(2, 48, device=DEVICE)
    x_out = torch.full_like(x, float("nan"))
    kf.decode_ffn(x, w_up, w_down, acc, norm="layernorm", norm_weight=nw, norm_bias=nb, acc_in=(a_in, x_out))
    # bf16: the interpreter's cast truncates where a GPU rounds to nearest (test_decode_fused's doc)
    assert torch.equal(x_out, x_mid) if dtype == torch.float32 else rel(x_out, x_mid) < 1e-2
    ref = kf.reference_decode_ffn(x_mid, w_up, w_down, norm="layernorm", norm_weight=nw, norm_bias=nb)
    # bf16 under the interpreter: 0.016-0.021 over seeds (its truncating casts); the wrong FFN is > 0.1 off
    assert rel(acc, ref) < (1e-5 if dtype == torch.float32 else 2e-2 if DEVICE == "cuda" else 3e-2)
    # the check can fail: the FFN of x alone is far off
    assert (
        rel(kf.reference_decode_ffn(x, w_up, w_down, norm="layernorm", norm_weight=nw, norm_bias=nb), ref)
        > 0.05
    )
    with pytest.raises(ValueError, match="acc_in"):
        kf.decode_ffn(x, w_up, w_down, acc, acc_in=(a_in.to(dtype).half(), x_out))


def test_the_ffn_then_gemv_equals_the_unfused_step():
    """x + down(swiglu(up(ln(x)))), then the head's norm and product: the split-K FFN + gemv's acc prologue
    against two GEMVs and the residual add."""
    x, w_up, w_down, nw, nb = inputs(1, 64, 80, torch.float32, seed=3)
    w_head = torch.randn(24, 64, device=DEVICE) / 8
    acc = torch.zeros(1, 64, device=DEVICE)
    kf.decode_ffn(x, w_up, w_down, acc, norm="layernorm", norm_weight=nw, norm_bias=nb)
    out = kg.gemv(x, w_head, norm="rmsnorm", norm_weight=nw, acc=acc)
    h = kg.reference_gemv(x, w_up, norm="layernorm", norm_weight=nw, norm_bias=nb)
    x2 = kg.reference_gemv(h, w_down, swiglu=True, residual=x)
    ref = kg.reference_gemv(x2, w_head, norm="rmsnorm", norm_weight=nw)
    assert rel(out, ref) < 1e-5
    assert rel(kg.gemv(x, w_head, norm="rmsnorm", norm_weight=nw), ref) > 0.05


def test_decode_ffn_op_in_a_compiled_graph():
    """The op mutates a buffer made in the graph (torch.zeros), and a consumer reads it after the op."""
    x, w_up, w_down, nw, nb = inputs(1, 32, 16, torch.float32, seed=1)
    w_head = torch.randn(8, 32, device=DEVICE)

    def step(x):
        acc = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        kf.decode_ffn_op(x, w_up, w_down, nw, nb, acc, "layernorm", 1e-5)
        return kg.gemv_op(x, w_head, None, None, None, "none", 0.0, False, acc)

    eager = step(x)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    ref = kf.reference_decode_ffn(x, w_up, w_down, norm="layernorm", norm_weight=nw, norm_bias=nb)
    torch.testing.assert_close(eager, kg.reference_gemv(x + ref, w_head), rtol=1e-4, atol=1e-4)


def test_decode_ffn_rejects_bad_shapes():
    x, w_up, w_down, nw, _ = inputs(1, 32, 16, torch.float32)
    acc = torch.zeros(1, 32, device=DEVICE)
    with pytest.raises(ValueError, match="W_up"):
        kf.decode_ffn(x, w_up[:-1], w_down, acc)
    with pytest.raises(ValueError, match="acc"):
        kf.decode_ffn(x, w_up, w_down, acc.double())
    with pytest.raises(ValueError, match="needs its weight"):
        kf.decode_ffn(x, w_up, w_down, acc, norm="rmsnorm")


@pytest.mark.parametrize("with_acc,split", [(True, False), (False, False), (True, True)])
def test_decode_qkv_reads_the_sums_and_hands_on_the_residual(with_acc, split):
    """With the split-K FFN, the q/k/v kernel's input is x + acc (the FFN before's sums); it stores that
    residual for the layer and zeroes the buffer of the layer's own FFN (split: and of its split
    attention's sums)."""
    from halo_lab.kernels import decode_qkv as kq
    from tests.test_decode_fused import inputs as qkv_inputs

    x, w, nw, nb, cos, sin, k0, v0 = qkv_inputs(torch.float32)
    p = torch.tensor([5], device=DEVICE)
    # its own stream: 2 * x (the inputs' stream) would leave layernorm(x + acc) = layernorm(x)
    acc = (
        2 * torch.randn(x.shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(7))
        if with_acc
        else None
    )
    x_res, zero, zero2 = (
        torch.empty_like(x),
        *(torch.full(x.shape, float("nan"), device=DEVICE) for _ in "ab"),
    )
    kw = {"num_heads": 4, "norm": "layernorm", "norm_weight": nw, "norm_bias": nb}
    k, v = k0.clone(), v0.clone()
    q = kq.decode_qkv(x, w, cos, sin, p, k, v, **kw, acc=acc, ffn_out=(x_res, zero, zero2)[: 2 + split])
    kr, vr = k0.clone(), v0.clone()
    ref = kq.reference_decode_qkv(x, w, cos, sin, p, kr, vr, **kw, acc=acc)
    assert rel(q, ref) < 1e-5 and rel(k, kr) < 1e-5 and rel(v, vr) < 1e-5
    torch.testing.assert_close(x_res, x + acc if with_acc else x)
    assert torch.equal(zero, torch.zeros_like(zero))
    assert torch.equal(zero2, torch.zeros_like(zero2)) if split else zero2.isnan().all()
    if with_acc:  # the sums are read: without them q is far off
        q0 = kq.reference_decode_qkv(x, w, cos, sin, p, k0.clone(), v0.clone(), **kw)
        assert rel(q0, ref) > 0.05


# ------------------------------------------------------------------------------------ the decoder


@pytest.mark.parametrize(
    "arch,attn_o,split",
    [
        pytest.param("halo", True, False, marks=pytest.mark.slow),  # 15 s interpreted; run on the card
        ("halo", False, False),  # the default step
        pytest.param("halo", False, True, marks=pytest.mark.slow),  # opt-in; 20 s interpreted
        pytest.param("halo_select", False, True, marks=pytest.mark.slow),
        pytest.param("dense", False, False, marks=pytest.mark.slow),
    ],
    ids=["halo-attn_o", "halo", "halo-split", "halo_select-split", "dense"],
)
def test_split_k_ffn_decode_equals_uncached_forward(arch, attn_o, split, monkeypatch):
    """Greedy tokens with every layer's FFN as one split-K launch (``Decoder.fused_ffn``) == the uncached
    forward's, past the window and every dilated distance; HALO-S with and without the attention +
    o-projection kernel (whose residual is then the q/k/v kernel's x + acc), and with the attention split
    over KV heads (``Decoder.split_attn_o``: the FFN adds its sums; the selection's layers keep the
    attention + GEMV)."""
    from halo_lab.generation import Decoder
    from tests.test_decode_fused import _interpreted_or_cuda, fused_tokens, model_for

    _interpreted_or_cuda()
    monkeypatch.setattr(ka, "PROGRAMS", 4)  # the interpreter's time (see test_decode_fused's fixture)
    monkeypatch.setattr(Decoder, "fused_attn_o", attn_o)
    monkeypatch.setattr(Decoder, "fused_ffn", True)
    monkeypatch.setattr(Decoder, "split_attn_o", split)
    if arch == "halo_select":
        from halo_lab.bench.decode_speed import DECODE_VARIANTS

        model = model_for("halo", **DECODE_VARIANTS["halo_select"][2])
    else:
        model = model_for(arch)
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    out, dec = fused_tokens(model, prompt, 25)
    assert dec.ffn is not None and (dec.attn_o is not None) == attn_o
    assert (dec.split is not None) == (split and arch != "dense")
    assert torch.equal(out, ref)


def test_split_k_ffn_needs_swiglu_is_on_by_default_and_can_be_switched_off(monkeypatch):
    """On in the fused q/k/v step of a SwiGLU model; ``Decoder.fused_ffn = False`` gives the up and down
    GEMVs back with the same greedy tokens (their fixed summation order, for bitwise-repeatable runs)."""
    from halo_lab.generation import Decoder
    from tests.test_decode_fused import _interpreted_or_cuda, fused_tokens, model_for

    _interpreted_or_cuda()
    model = model_for("halo")
    prompt = torch.randint(0, 64, (1, 6), device=DEVICE)
    fused, dec = fused_tokens(model, prompt, 4)
    assert dec.ffn is not None
    assert Decoder(model_for("halo", use_swiglu=False), 1, 4, 4, fuse_weights=True, gemv=True).ffn is None
    assert Decoder(model, 1, 4, 4, fuse_weights=True, gemv=False).ffn is None
    monkeypatch.setattr(Decoder, "fused_ffn", False)
    out, dec = fused_tokens(model, prompt, 4)
    assert dec.ffn is None and dec.qkv is not None and torch.equal(out, fused)


@pytest.mark.slow  # Inductor's CPU compile: ~15 s on a 2-core CPU
@pytest.mark.parametrize("split", [False, True], ids=["ffn", "split_attn_o"])
def test_split_k_ffn_in_the_compiled_step(split, monkeypatch):
    """Inductor mutates the q/k/v op's zeroed buffers in place (no copy; checked by hand in the output code)
    and the compiled step gives the forward's tokens, with and without the split attention."""
    from halo_lab.generation import Decoder
    from tests.test_decode_fused import _interpreted_or_cuda, fused_tokens, model_for

    _interpreted_or_cuda()
    monkeypatch.setattr(Decoder, "fused_ffn", True)
    monkeypatch.setattr(Decoder, "split_attn_o", split)
    model = model_for("halo")
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    out, dec = fused_tokens(model, prompt, 12, compile=True)
    assert dec.ffn is not None and dec.path.startswith("compiled") and (dec.split is not None) == split
    assert torch.equal(out, ref)
