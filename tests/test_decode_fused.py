"""The fused decode-step kernels against their torch references, and the decoder's tokens through them.

``halo_lab.kernels.decode_qkv`` (q/k/v projection + RoPE + KV-cache write in one launch): q's values and
the cache's contents (the written slots and that nothing else changed) against ``reference_decode_qkv``,
at the first and last positions and one between, grouped-query heads, both norms, fp32 and bf16, the full
and the ring cache. ``halo_lab.kernels.decode_attn_o`` (attention over the K graph keys + o-projection +
residual in one launch) against ``reference_decode_attn_o``. Then the decoder's greedy tokens with them ==
the uncached forward's.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), whose
fp32 -> bf16 cast truncates where a GPU rounds to nearest: bf16 is compared against a float64 reference
with a tolerance, fp32 closely.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import decode_attn_o as ka  # noqa: E402
from halo_lab.kernels import decode_qkv as kq  # noqa: E402
from halo_lab.model.network import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CAPACITY = 13  # cache slots


def inputs(dtype, heads=4, kv_heads=2, d=8, hidden=40, seed=0):
    """x [2, hidden], W_qkv, norm weight and bias, the model's RoPE tables, caches full of noise."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(2, hidden, device=DEVICE, generator=g).to(dtype)
    w = (torch.randn((heads + 2 * kv_heads) * d, hidden, device=DEVICE, generator=g) / hidden**0.5).to(dtype)
    nw = (1 + 0.1 * torch.randn(hidden, device=DEVICE, generator=g)).to(dtype)
    nb = (0.1 * torch.randn(hidden, device=DEVICE, generator=g)).to(dtype)
    rope = RotaryEmbedding(d, CAPACITY, 10000.0).to(DEVICE)
    # the decoder's tables: the model's, in the model's dtype
    cos, sin = rope.cos.to(dtype), rope.sin.to(dtype)
    k = torch.randn(2, kv_heads, CAPACITY, d, device=DEVICE, generator=g).to(dtype)
    return x, w, nw, nb, cos, sin, k, 2 * k + 1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run_both(dtype, pos: int, norm: str, heads: int = 4, kv_heads: int = 2, **slots):
    """(kernel's q, k cache, v cache), (float64 reference's q, k cache, v cache), the caches before."""
    x, w, nw, nb, cos, sin, k0, v0 = inputs(dtype, heads, kv_heads)
    p = torch.tensor([pos], device=DEVICE)
    kw = {"num_heads": heads, "norm": norm, "norm_weight": nw, **slots}
    if norm == "layernorm":
        kw["norm_bias"] = nb
    k, v = k0.clone(), v0.clone()
    q = kq.decode_qkv(x, w, cos, sin, p, k, v, **kw)
    kd, vd = k0.double(), v0.double()
    dbl = {
        n: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for n, t in kw.items()
    }
    qd = kq.reference_decode_qkv(x.double(), w.double(), cos.double(), sin.double(), p, kd, vd, **dbl)
    return (q, k, v), (qd, kd, vd), (k0, v0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("pos", [0, 6, CAPACITY - 1])
def test_decode_qkv_matches_reference(dtype, norm, pos):
    """q roped, k roped and v in slot ``pos`` of the full cache, every other slot untouched."""
    (q, k, v), (qd, kd, vd), (k0, v0) = run_both(dtype, pos, norm)
    assert q.shape == (2, 4, 1, 8) and q.dtype == dtype and q.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel(q, qd) < tol
    for got, want, before in ((k, kd, k0), (v, vd, v0)):
        assert rel(got[:, :, pos], want[:, :, pos]) < tol
        assert not torch.equal(got[:, :, pos], before[:, :, pos])
        others = [s for s in range(CAPACITY) if s != pos]
        assert torch.equal(got[:, :, others], before[:, :, others])


def test_decode_qkv_reference_is_sensitive_to_rope_and_layout():
    """The checks above can fail: q without its rotation, or its heads in another order, are far off."""
    x, w, nw, _, cos, sin, k, v = inputs(torch.float32)
    p = torch.tensor([6], device=DEVICE)
    q = kq.decode_qkv(x, w, cos, sin, p, k.clone(), v.clone(), num_heads=4, norm="rmsnorm", norm_weight=nw)
    kc = k.clone()
    flat = kq.reference_decode_qkv(
        x, w, torch.ones_like(cos), torch.zeros_like(sin), p, kc, v.clone(), num_heads=4, norm="rmsnorm",
        norm_weight=nw,
    )  # fmt: skip
    assert rel(q, flat) > 0.1
    assert rel(q, q.roll(1, 1)) > 0.1
    ref_k = k.clone()
    kq.reference_decode_qkv(x, w, cos, sin, p, ref_k, v.clone(), num_heads=4, norm="rmsnorm", norm_weight=nw)
    assert rel(kc[:, :, 6], ref_k[:, :, 6]) > 0.1  # k unroped: off too


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (8, 2), (4, 1)])
def test_decode_qkv_grouped_query_heads(heads, kv_heads):
    (q, k, v), (qd, kd, vd), _ = run_both(torch.float32, 9, "rmsnorm", heads, kv_heads)
    assert q.shape == (2, heads, 1, 8)
    assert rel(q, qd) < 1e-5 and rel(k, kd) < 1e-5 and rel(v, vd) < 1e-5


@pytest.mark.parametrize("pos", [2, 8, CAPACITY - 2])
def test_decode_qkv_ring_cache_slots(pos):
    """A ring cache (2 globals, 4 text slots, a store behind them): the slot G + (pos - G) % 4 and the
    store's slot for the position, nothing else."""
    store = torch.tensor([6, 10, 7, 10, 10, 8, 10, 10, 9, 10, 10], device=DEVICE)  # rows: positions 2..12
    slots = {"num_globals": 2, "ring": 4, "store": store, "row0": 2}
    (q, k, v), (qd, kd, vd), (k0, v0) = run_both(torch.float32, pos, "layernorm", **slots)
    written = {2 + (pos - 2) % 4, int(store[pos - 2])}
    for got, want, before in ((k, kd, k0), (v, vd, v0)):
        assert rel(got, want) < 1e-5
        changed = {s for s in range(CAPACITY) if not torch.equal(got[:, :, s], before[:, :, s])}
        assert changed == written
    assert rel(q, qd) < 1e-5


def test_decode_qkv_op_compiles_into_a_graph():
    """The custom op mutates the caches inside a compiled function as it does eagerly."""
    x, w, nw, nb, cos, sin, k, v = inputs(torch.float32)
    p = torch.tensor([5], device=DEVICE)

    def step(x, k, v):
        q = kq.decode_qkv_op(x, w, nw, nb, cos, sin, p, k, v, None, "layernorm", 1e-5, 4, 0, 0, 0)
        return q * 2 + k[:, :, 5:6].sum()

    ke, ve, kc, vc = k.clone(), v.clone(), k.clone(), v.clone()
    eager = step(x, ke, ve)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, kc, vc)
    torch.testing.assert_close(compiled, eager)
    assert torch.equal(kc, ke) and torch.equal(vc, ve) and not torch.equal(kc, k)


def test_decode_qkv_rejects_bad_shapes():
    x, w, nw, _, cos, sin, k, v = inputs(torch.float32)
    p = torch.tensor([1], device=DEVICE)
    with pytest.raises(ValueError, match="W_qkv"):
        kq.decode_qkv(x, w[:-1], cos, sin, p, k, v, num_heads=4)
    with pytest.raises(ValueError, match="needs its weight"):
        kq.decode_qkv(x, w, cos, sin, p, k, v, num_heads=4, norm="rmsnorm")
    with pytest.raises(ValueError, match="even head_dim"):
        kq.decode_qkv(x, w, cos[:, :6], sin[:, :6], p, k, v, num_heads=4)


# ------------------------------------------------------------------------------------ attention + o-proj


def attn_o_inputs(dtype, heads, kv_heads, hidden, d=16, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(2, heads, 1, d, device=DEVICE, generator=g).to(dtype)
    k, v = (torch.randn(2, kv_heads, 40, d, device=DEVICE, generator=g).to(dtype) for _ in range(2))
    w = (torch.randn(hidden, heads * d, device=DEVICE, generator=g) / (heads * d) ** 0.5).to(dtype)
    res = torch.randn(2, hidden, device=DEVICE, generator=g).to(dtype)
    slots = torch.tensor([0, 1, 5, -1, 20, 39, 7, -1, 33], device=DEVICE)  # globals, window, none, far
    return q, k, v, slots, w, res


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,kv_heads,hidden", [(4, 2, 48), (2, 2, 200), (8, 1, 64), (6, 2, 40)])
def test_decode_attn_o_matches_reference(dtype, heads, kv_heads, hidden):
    """Grouped-query heads; 48 outputs in 24 programs of 2 rows, 200 in 50 of 4 (the last one partial)."""
    q, k, v, slots, w, res = attn_o_inputs(dtype, heads, kv_heads, hidden)
    out = ka.decode_attn_o(q, k, v, slots, w, res)
    ref = ka.reference_decode_attn_o(q.double(), k.double(), v.double(), slots, w.double(), res.double())
    assert out.shape == (2, hidden) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel(out, ref) < tol
    # the check can fail: a missing key, another head's slice of W_o, no residual are far off
    ref_x = ka.reference_decode_attn_o(q, k, v, slots[:-1], w, res)
    assert rel(out - res, ref_x - res) > 0.05
    assert rel(out, ka.reference_decode_attn_o(q, k, v, slots, w.roll(16, 1), res)) > 0.1
    assert rel(out, res) > 0.1


def test_decode_attn_o_rejects_bad_shapes():
    q, k, v, slots, w, res = attn_o_inputs(torch.float32, 4, 2, 48)
    with pytest.raises(ValueError, match="W_o"):
        ka.decode_attn_o(q, k, v, slots, w[:, :-1], res)
    with pytest.raises(ValueError, match="one query per row"):
        ka.decode_attn_o(torch.cat([q, q], 2), k, v, slots, w, res)


# ------------------------------------------------------------------------------------ the decoder


def _interpreted_or_cuda():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or Triton's interpreter")


def model_for(arch: str, seed: int = 0, **kw):
    from halo_lab.bench.decode import CHECK_CONFIG  # window 8, dilated distances 8, 16, 32
    from halo_lab.config import HaloConfig
    from halo_lab.model import build_model

    torch.manual_seed(seed)
    # init_std 0.3 (not 0.02): attention scores far from uniform, so that a key unroped or read from the
    # wrong slot changes the greedy tokens
    return build_model(HaloConfig(**{**CHECK_CONFIG, "init_std": 0.3, **kw}), arch).to(DEVICE).eval()


@pytest.fixture(autouse=True)
def _few_attn_o_programs(monkeypatch):
    """4 programs of 16 rows for the decoders' 64 outputs (not 32 of 2): every program recomputes the
    attention, which the interpreter runs slowly (the halo decoder tests: 31 s -> 7 s)."""
    monkeypatch.setattr(ka, "PROGRAMS", 4)


def fused_tokens(model, prompt, new: int, **kw) -> tuple[torch.Tensor, object]:
    """The decoder's greedy tokens with the gemv step and the fused q/k/v (and attention + o-projection)
    kernels, caches poisoned first (a step that reads a slot it did not write changes the tokens)."""
    from halo_lab.generation import Decoder

    dec = Decoder(model, prompt.shape[0], prompt.shape[1], new, fuse_weights=True, gemv=True, **kw)
    for c in dec.caches:
        c.k.normal_(std=100.0)
        c.v.normal_(std=100.0)
    with torch.inference_mode():
        return torch.cat([prompt, dec.generate(prompt)], dim=1), dec


@pytest.mark.parametrize(
    "arch,cache,kw,attn_o",
    [
        pytest.param("halo", "full", {}, True, marks=pytest.mark.slow),  # the opt-in attention + o kernel
        # the fused q/k/v alone, the FFN's GEMVs after it (opt-out; the default step's FFN: test_decode_ffn.py,
        # which also checks that switching it off keeps the tokens)
        pytest.param("halo", "full", {}, False, marks=pytest.mark.slow),
        pytest.param("halo", "ring", {"norm": "rmsnorm"}, True, marks=pytest.mark.slow),
        pytest.param("dense", "full", {"use_swiglu": False}, True, marks=pytest.mark.slow),
        pytest.param("halo", "full", "halo_select", True, marks=pytest.mark.slow),
    ],
    ids=["halo-full", "halo-full-qkv-only", "halo-ring-rmsnorm", "dense-gelu", "halo_select"],
)
def test_fused_qkv_decode_equals_uncached_forward(arch, cache, kw, attn_o, monkeypatch):
    """Greedy tokens through the fused q/k/v kernel == the uncached forward's, past the window and every
    dilated distance (11 + 25 positions > 32; the ring cache 11 + 40: past its 33 slots, with decoded keys
    in its store); batch 1, the case the kernel is for. 5-7 s each interpreted on a 2-core CPU, the ring 10 s;
    halo_select: the content-selected blocks' attention after the kernel's cache write."""
    _interpreted_or_cuda()
    if kw == "halo_select":
        from halo_lab.bench.decode_speed import DECODE_VARIANTS

        kw = DECODE_VARIANTS["halo_select"][2]
    from halo_lab.generation import Decoder

    monkeypatch.setattr(Decoder, "fused_attn_o", attn_o)  # off by default (slower on an H100), opt-in
    monkeypatch.setattr(Decoder, "fused_ffn", False)  # the FFN's GEMVs: the q/k/v kernel's own residual
    model = model_for(arch, **kw)
    new = 40 if cache == "ring" else 25  # a ring cache (33 text slots) only below a 51-token capacity
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=new, temperature=0, use_cache=False)
    out, dec = fused_tokens(model, prompt, new, cache=cache)
    assert dec.qkv is not None
    # the graph's fixed keys: attention + o-projection in one kernel; dense and selection: the two
    fixed = dec.model.layers[0].attn.decode_key_slots(dec.caches[0], dec.start_t) is not None
    assert (dec.attn_o is not None) == attn_o and fixed == (arch == "halo" and not kw.get("select_blocks"))
    if cache == "ring":  # the ring and its store in use: decoded positions that later queries read randomly
        lay = dec.caches[0].layout
        assert lay.ring is not None and (lay.store < dec.caches[0].k.shape[2] - 1).sum() > 0
    assert torch.equal(out, ref)


def test_fused_qkv_is_the_gemv_steps_and_can_be_switched_off(monkeypatch):
    """Only the gemv step takes the kernel (not the cuBLAS one); ``Decoder.fused_qkv = False`` keeps the
    GEMV + the model's ``decode_qkv``, with the same tokens."""
    from halo_lab.generation import Decoder

    _interpreted_or_cuda()
    model = model_for("halo")
    assert Decoder(model, 1, 4, 4, fuse_weights=True, gemv=False).qkv is None
    monkeypatch.setattr(Decoder, "fused_qkv", False)
    prompt = torch.randint(0, 64, (1, 6), device=DEVICE)
    out, dec = fused_tokens(model, prompt, 4)
    assert dec.gemv is not None and dec.qkv is None
    monkeypatch.setattr(Decoder, "fused_qkv", True)
    fused, dec = fused_tokens(model, prompt, 4)
    assert dec.qkv is not None and torch.equal(fused, out)


@pytest.mark.slow  # Inductor's CPU compile: ~10 s warm on a 2-core CPU, more cold
def test_fused_qkv_in_the_compiled_step():
    """Inductor calls the op on the caches themselves (its cache mutation reinplaced, checked by hand in
    the output code) and the compiled step gives the forward's tokens."""

    _interpreted_or_cuda()
    model = model_for("halo")
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    out, dec = fused_tokens(model, prompt, 12, compile=True)
    assert dec.qkv is not None and dec.path.startswith("compiled")
    assert torch.equal(out, ref)
