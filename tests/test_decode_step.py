"""The persistent decode step (``halo_lab.kernels.decode_step``: a whole batch-1 step in one launch) against
its reference (the unfused kernels' references in a row), and the decoder's greedy tokens through it.

Triton's interpreter runs programs one after another, so the grid barrier runs at P = 1 there
(``sync=True``); ``sync=False`` runs the same code one phase per launch, which checks each phase's split of
the rows at P > 1. On a GPU the barrier runs at the SM count (``test_persistent_step_cuda``).
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import decode_step as ks  # noqa: E402
from halo_lab.model.network import RotaryEmbedding  # noqa: E402
from tests.test_decode_fused import fused_tokens, model_for  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _interpreted_or_cuda():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or Triton's interpreter")


def inputs(dtype, norm, L=2, C=32, heads=4, kv_heads=2, d=8, F=48, V=40, S=13, pos=9, seed=0):
    """Random weights, caches full of noise, the key slots of each layer (the new token's own slot among
    them, so a read before the write shows), and the write slots (layer 1: a second, store slot)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=DEVICE, generator=g)).to(dtype)

    A = heads * d
    w = {
        "wqkv": rnd(L, A + 2 * kv_heads * d, C, scale=C**-0.5),
        "wo": rnd(L, C, A, scale=A**-0.5),
        "wup": rnd(L, 2 * F, C, scale=C**-0.5),
        "wdown": rnd(L, C, F, scale=F**-0.5),
        "lm": rnd(V, C, scale=C**-0.5),
        **{n: 1 + rnd(*s, scale=0.1) for n, s in (("n1w", (L, C)), ("n2w", (L, C)), ("nfw", (C,)))},
    }
    if norm == "layernorm":
        w.update({n: rnd(*s, scale=0.1) for n, s in (("n1b", (L, C)), ("n2b", (L, C)), ("nfb", (C,)))})
    rope = RotaryEmbedding(d, S, 10000.0).to(DEVICE)
    cos, sin = rope.cos.to(dtype), rope.sin.to(dtype)
    k = rnd(L, 1, kv_heads, S, d)
    v = rnd(L, 1, kv_heads, S, d)
    slots = torch.tensor([[0, 1, pos, pos - 1, -1, 3, 5], [0, pos, 2, -1, -1, 7, 4]], device=DEVICE)
    wslots = torch.tensor([[pos, -1], [pos, S - 1]], device=DEVICE)
    slots, wslots = slots[torch.arange(L) % 2], wslots[torch.arange(L) % 2]  # layer 2 reads as layer 0
    x = rnd(1, C)
    return x, w, k, v, cos, sin, torch.tensor([pos], device=DEVICE), slots, wslots


def dense_slots(L, S, pos):
    """Every slot up to pos: dense attention as a key list (what the reference reads for dense)."""
    every = torch.arange(S, device=DEVICE)
    return torch.where(every <= pos, every, -1).expand(L, S).contiguous()


def run_both(dtype, norm, programs, sync, dense=False, warps=8, keep_l2=None, **kw):
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(dtype, norm, **kw)
    if dense:
        slots, wslots[1, 1] = dense_slots(k.shape[0], k.shape[3], pos), -1
    heads = kw.get("heads", 4)
    flag = torch.zeros(1, device=DEVICE, dtype=torch.int32)
    kk, vk, xk = k.clone(), v.clone(), x.clone()
    logits = ks.decode_step(
        xk, w, kk, vk, cos, sin, pos, slots, wslots, flag, num_heads=heads, norm=norm, eps=1e-5,
        programs=programs, sync=sync, dense=dense, warps=warps, keep_l2=keep_l2,
    )  # fmt: skip
    dbl = {n: t.double() for n, t in w.items()}
    kr, vr = k.double(), v.double()
    ref = ks.reference_decode_step(
        x.double(), dbl, kr, vr, cos.double(), sin.double(), pos, slots, wslots, num_heads=heads,
        norm=norm, eps=1e-5,
    )  # fmt: skip
    assert flag.item() == 0
    return (logits, kk, vk), (ref, kr, vr), (k, v)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize(
    "dtype,norm,programs,sync,dense",
    [
        (torch.float32, "layernorm", 1, True, False),  # the barrier's code at P = 1
        (torch.float32, "rmsnorm", 3, False, False),  # every phase's rows split over 3 programs
        (torch.float32, "layernorm", 5, False, False),
        (torch.bfloat16, "rmsnorm", 1, True, False),
        (torch.float32, "layernorm", 1, True, True),  # dense: one part per KV head, in turn
        (torch.float32, "rmsnorm", 7, False, True),  # dense: 3 parts a KV head, one with no keys
        (torch.bfloat16, "layernorm", 4, False, True),
        (torch.float32, "rmsnorm", 8, False, False),  # o's rows in 2 slices a head
        (torch.float32, "layernorm", 17, False, True),  # 4 slices, a program idle in phases BC and DE
    ],
)
def test_decode_step_matches_reference(dtype, norm, programs, sync, dense):
    """Logits and the written caches (and nothing else in them) == the float64 reference."""
    _interpreted_or_cuda()
    (logits, k, v), (ref, kr, vr), (k0, v0) = run_both(dtype, norm, programs, sync, dense)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert rel(logits, ref) < tol
    assert rel(k, kr) < tol and rel(v, vr) < tol
    written = torch.zeros(k.shape[3], dtype=torch.bool, device=k.device)
    written[[9, 12]] = True  # pos and layer 1's store slot
    assert torch.equal(k[0][:, :, ~written], k0[0][:, :, ~written])
    assert torch.equal(k[0][:, :, 12], k0[0][:, :, 12])
    assert torch.equal(k[1][:, :, 12], k0[1][:, :, 12]) == dense  # dense has no store slot


@pytest.mark.parametrize("ring", [False, True], ids=["full", "ring"])
def test_the_key_slot_table_is_decode_key_slots_row_by_row(ring):
    """``decode_key_slot_table`` (what the persistent step reads) == ``decode_key_slots`` at each decode
    position, full and ring caches (the ring's slots wrap; positions before the window give -1)."""
    from halo_lab.bench.decode import CHECK_CONFIG
    from halo_lab.config import HaloConfig
    from halo_lab.model import attention as attn

    config = HaloConfig(**CHECK_CONFIG)
    for layer in range(2):
        lay, _ = attn.decode_layout(config, layer, 70, "cpu", ring=ring, first_query=5)
        table = attn.decode_key_slot_table(lay)
        assert table.shape == (lay.rand.shape[0], lay.num_keys) and table.shape[0] == 70 - 5
        for r in range(table.shape[0]):
            assert torch.equal(table[r], attn.decode_key_slots(lay, lay.row0 + r)), r
        assert (table[0] == -1).any() and (lay.ring is not None) == ring


@pytest.mark.parametrize("programs,sync", [(1, True), (3, False)])
def test_slot_tables_read_the_row_of_pos(programs, sync):
    """``slots`` [L, rows, K] and ``wslots`` [L, rows, 2] as tables with ``first``: the kernel reads row pos -
    first of both and equals the step given those rows alone, logits and caches (the other rows hold other
    layers' key lists and other write slots, so a wrong row changes either)."""
    _interpreted_or_cuda()
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm")
    other, elsewhere = slots.flip(0), torch.tensor([[3, -1], [5, 1]], device=DEVICE)
    table = torch.stack([other, other, slots, other], dim=1)  # pos's row is row 2
    wtable = torch.stack([elsewhere, elsewhere, wslots, elsewhere], dim=1)
    flag = torch.zeros(1, device=DEVICE, dtype=torch.int32)
    kw = dict(num_heads=4, norm="rmsnorm", eps=1e-5, programs=programs, sync=sync)
    xr, kr, vr = x.clone(), k.clone(), v.clone()
    ref = ks.decode_step(xr, w, kr, vr, cos, sin, pos, slots, wslots, flag, **kw)
    for ws in (wslots, wtable):  # a [L, 2] argument serves every row
        xk, kk, vk = x.clone(), k.clone(), v.clone()
        logits = ks.decode_step(xk, w, kk, vk, cos, sin, pos, table, ws, flag, first=pos - 2, **kw)
        assert torch.equal(logits, ref) and torch.equal(kk, kr) and torch.equal(vk, vr)
    assert not torch.equal(other, slots)
    with pytest.raises(ValueError, match="needs ``first``"):
        ks.decode_step(x.clone(), w, k.clone(), v.clone(), cos, sin, pos, table, wslots, flag, **kw)
    with pytest.raises(ValueError, match="key slots for 4 positions, write slots for 2"):
        ks.decode_step(x, w, k, v, cos, sin, pos, table, wtable[:, :2], flag, first=pos - 2, **kw)


@pytest.mark.parametrize("programs,sync", [(1, True), (3, False)])
def test_the_step_reads_the_token_embedding(programs, sync):
    """``tok`` with ``weights["emb"]``: layer 0 reads the stream from the token's embedding row, so the
    step equals the step given that row as x (x's own contents, NaN here, are never read), and x ends as
    the same residual stream."""
    _interpreted_or_cuda()
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm")
    emb = torch.randn(6, x.shape[1], device=DEVICE)
    emb[4] = x[0]
    flag = torch.zeros(1, device=DEVICE, dtype=torch.int32)
    kw = dict(num_heads=4, norm="rmsnorm", eps=1e-5, programs=programs, sync=sync)
    xr, kr, vr = x.clone(), k.clone(), v.clone()
    ref = ks.decode_step(xr, w, kr, vr, cos, sin, pos, slots, wslots, flag, **kw)
    xk, kk, vk = torch.full_like(x, float("nan")), k.clone(), v.clone()
    tok = torch.tensor([4], device=DEVICE)
    logits = ks.decode_step(xk, {**w, "emb": emb}, kk, vk, cos, sin, pos, slots, wslots, flag, tok=tok, **kw)
    for a, b in ((logits, ref), (xk, xr), (kk, kr), (vk, vr)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # a card's atomics add in any order
    other = ks.decode_step(
        x.clone(), {**w, "emb": emb}, k.clone(), v.clone(), cos, sin, pos, slots, wslots, flag, tok=tok - 1,
        **kw,
    )  # fmt: skip
    assert rel(other, ref) > 1e-3 and flag.item() == 0
    with pytest.raises(ValueError, match="weight emb"):
        ks.decode_step(x, w, k, v, cos, sin, pos, slots, wslots, flag, tok=tok, **kw)


@pytest.mark.parametrize("programs,sync", [(1, True), (8, False)])
def test_three_layers_reuse_the_sum_buffers(programs, sync):
    """Layer 2 adds its o-projection into the buffer that layer 0 filled and layer 1 folded into x and
    zeroed (the buffers alternate with the layer): a stale or unzeroed buffer changes the logits."""
    _interpreted_or_cuda()
    (logits, k, v), (ref, kr, vr), _ = run_both(torch.float32, "rmsnorm", programs, sync, L=3)
    assert rel(logits, ref) < 1e-5 and rel(k, kr) < 1e-5 and rel(v, vr) < 1e-5


@pytest.mark.parametrize("programs,sync", [(1, True), (3, False)])
def test_l2_hints_split_the_layers_without_changing_the_step(programs, sync):
    """``keep_l2=n`` runs layers 0..n-1 in one loop and the rest in another (their loads marked to stay in or
    leave L2): every layer runs once, in order, so the logits and caches equal the unhinted step's at any
    n (0, inside, all, past L)."""
    _interpreted_or_cuda()
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm", L=3)
    flag = torch.zeros(1, device=DEVICE, dtype=torch.int32)
    kw = dict(num_heads=4, norm="rmsnorm", eps=1e-5, programs=programs, sync=sync)
    kr, vr = k.clone(), v.clone()
    ref = ks.decode_step(x.clone(), w, kr, vr, cos, sin, pos, slots, wslots, flag, **kw)
    for keep in (0, 1, 3, 5):
        kk, vk = k.clone(), v.clone()
        out = ks.decode_step(x.clone(), w, kk, vk, cos, sin, pos, slots, wslots, flag, keep_l2=keep, **kw)
        for a, b in ((out, ref), (kk, kr), (vk, vr)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # a card's atomics add in any order
    assert flag.item() == 0


@pytest.mark.parametrize("programs,sync", [(1, True), (3, False)])
def test_a_prefix_of_the_phases_runs_only_those(programs, sync):
    """``phases=3`` (experiments/bench/phase_cost.py's prefixes) runs layer 0's q/k/v, attention and FFN
    only: layer 0's cache gets the new key, layer 1's does not; all the phases give the full step."""
    _interpreted_or_cuda()
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm")
    kw = {"num_heads": 4, "norm": "rmsnorm", "eps": 1e-5, "programs": programs, "sync": sync}
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    k3, v3 = k.clone(), v.clone()
    ks.decode_step(x.clone(), w, k3, v3, cos, sin, pos, slots, wslots, flag, phases=ks.PHASES, **kw)
    assert not torch.equal(k3[0], k[0]) and torch.equal(k3[1], k[1]) and torch.equal(v3[1], v[1])
    full = ks.decode_step(x.clone(), w, k.clone(), v.clone(), cos, sin, pos, slots, wslots, flag, **kw)
    every = ks.decode_step(
        x.clone(), w, k.clone(), v.clone(), cos, sin, pos, slots, wslots, flag, phases=99, **kw
    )
    torch.testing.assert_close(every, full, rtol=1e-5, atol=1e-5)  # a card's atomics add in any order
    assert flag.item() == 0


def test_decode_step_reference_reads_the_new_key():
    """The oracle is sensitive to the phase order: attention before the cache write changes the logits."""
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float64, "rmsnorm")
    ref = ks.reference_decode_step(
        x, w, k.clone(), v.clone(), cos, sin, pos, slots, wslots, num_heads=4, norm="rmsnorm", eps=1e-5
    )
    none = torch.full_like(wslots, -1)
    stale = ks.reference_decode_step(
        x, w, k.clone(), v.clone(), cos, sin, pos, slots, none, num_heads=4, norm="rmsnorm", eps=1e-5
    )
    assert rel(stale, ref) > 1e-3


def test_a_barrier_that_cannot_complete_sets_the_flag_and_returns():
    """The watchdog: at P = 2 the interpreter runs program 0 to its first barrier while program 1 has not
    started, as a GPU would with programs that are not all resident. The barrier gives up after its polls,
    sets the flag (which the decoder raises on), and the launch ends instead of hanging."""
    _interpreted_or_cuda()
    if torch.cuda.is_available():
        pytest.skip("on a GPU both programs are resident: the barrier completes")
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm")
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    kw = {"num_heads": 4, "norm": "rmsnorm", "eps": 1e-5, "programs": 2, "spin_limit": 20}
    ks.decode_step(x, w, k, v, cos, sin, pos, slots, wslots, flag, **kw)
    assert flag.item() == 1


def test_tile_rows():
    """Tiles of a power of two rows that cover the rows with at most P programs."""
    assert ks.tile_rows(4096, 132) == 32 and ks.tile_rows(512, 132) == 4 and ks.tile_rows(256, 132) == 2
    assert ks.tile_rows(384, 132) == 4 and ks.tile_rows(10, 1) == 16 and ks.tile_rows(3, 8) == 2
    for rows in (1, 7, 100, 4096):
        for p in (1, 3, 132):
            assert -(-rows // ks.tile_rows(rows, p)) <= p


def test_decode_step_rejects_bad_input():
    x, w, k, v, cos, sin, pos, slots, wslots = inputs(torch.float32, "rmsnorm")
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    kw = {"num_heads": 4, "norm": "rmsnorm", "eps": 1e-5, "programs": 1}
    with pytest.raises(ValueError, match="batch 1"):
        ks.decode_step(x.expand(2, -1), w, k, v, cos, sin, pos, slots, wslots, flag, **kw)
    with pytest.raises(ValueError, match="weight wo"):
        ks.decode_step(x, {**w, "wo": w["wo"][:, :-1]}, k, v, cos, sin, pos, slots, wslots, flag, **kw)
    with pytest.raises(ValueError, match="norm='batchnorm'"):
        ks.decode_step(x, w, k, v, cos, sin, pos, slots, wslots, flag, **{**kw, "norm": "batchnorm"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the grid barrier at P > 1 needs a GPU")
def test_persistent_step_cuda():
    """The barrier on a card: P = the SM count, sync=True, against the reference (bf16 and fp32; 3 layers,
    so the o-projection's buffers are reused; HALO-S and dense)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = ((torch.float32, "layernorm"), (torch.bfloat16, "rmsnorm"))
    for (dtype, norm), dense in itertools.product(cases, (False, True)):
        (logits, k, v), (ref, kr, vr), _ = run_both(
            dtype, norm, sms, True, dense, L=3, C=512, heads=8, d=64, F=2048, V=256
        )
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert rel(logits, ref) < tol and rel(k, kr) < tol and rel(v, vr) < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the grid barrier at P > 1 needs a GPU")
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("half,warps,keep_l2", [(False, 16, None), (True, 8, None), (False, 8, 2)])
def test_persistent_step_cuda_other_launches(dense, half, warps, keep_l2):
    """The launches experiments/bench/phase_cost.py times beside the default: 16 warps a program, half the
    SMs (larger tiles a program), layers 0-1's weights marked to stay in L2, each against the reference in
    bf16."""
    programs = torch.cuda.get_device_properties(0).multi_processor_count // (2 if half else 1)
    (logits, k, v), (ref, kr, vr), _ = run_both(
        torch.bfloat16, "rmsnorm", programs, True, dense, warps=warps, keep_l2=keep_l2, L=3, C=512, heads=8,
        d=64, F=2048, V=256,
    )  # fmt: skip
    assert rel(logits, ref) < 3e-2 and rel(k, kr) < 3e-2 and rel(v, vr) < 3e-2


# ------------------------------------------------------------------------------------ the decoder


def persistent_tokens(model, prompt, new, monkeypatch, **kw):
    """The decoder's greedy tokens with the persistent step (test_decode_fused's decoder, caches poisoned)."""
    from halo_lab.generation import Decoder

    monkeypatch.setattr(Decoder, "persistent_step", True)
    return fused_tokens(model, prompt, new, **kw)


@pytest.mark.parametrize(
    "arch,cache,kw",
    [
        ("halo", "full", {}),
        pytest.param("halo", "ring", {"norm": "rmsnorm"}, marks=pytest.mark.slow),
        ("dense", "full", {}),
    ],
    ids=["halo-full-layernorm", "halo-ring-rmsnorm", "dense"],
)
def test_persistent_decode_equals_uncached_forward(arch, cache, kw, monkeypatch):
    """Greedy tokens through the one-launch step == the uncached forward's, past the window and every
    dilated distance (11 + 25 positions > 32; the ring cache 11 + 40, past its 33 slots, its store in use);
    dense over every earlier position."""
    _interpreted_or_cuda()
    model = model_for(arch, **kw)
    new = 40 if cache == "ring" else 25
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=new, temperature=0, use_cache=False)
    out, dec = persistent_tokens(model, prompt, new, monkeypatch, cache=cache)
    assert dec.persistent is not None, dec.persistent_why_not
    assert all(c.k.data_ptr() == dec.persistent.k[i].data_ptr() for i, c in enumerate(dec.caches))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("dense", [False, True], ids=["halo", "dense"])
def test_persistent_decode_at_other_launch_settings(dense, monkeypatch):
    """PersistentStep.most_programs caps P on a card (the interpreter keeps P = 1) and keep_l2 reaches the
    kernel, and the greedy tokens still equal the uncached forward's."""
    _interpreted_or_cuda()
    from halo_lab.generation.persistent import PersistentStep

    monkeypatch.setattr(PersistentStep, "most_programs", 3)
    monkeypatch.setattr(PersistentStep, "keep_l2", 1)
    seen = []
    real = ks.decode_step
    monkeypatch.setattr(ks, "decode_step", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    model = model_for("dense" if dense else "halo")
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    out, dec = persistent_tokens(model, prompt, 12, monkeypatch)
    assert dec.persistent is not None, dec.persistent_why_not
    assert seen and all(kw["programs"] == (3 if DEVICE == "cuda" else 1) for kw in seen)
    assert all(kw["keep_l2"] == 1 for kw in seen)
    assert torch.equal(out, ref)


def test_persistent_step_says_where_it_does_not_apply(monkeypatch):
    """Content-selected blocks, a GELU FFN and batch 2 keep the per-kernel step, and the decoder says why."""
    _interpreted_or_cuda()
    from halo_lab.bench.decode_speed import DECODE_VARIANTS
    from halo_lab.generation import Decoder

    monkeypatch.setattr(Decoder, "persistent_step", True)
    cases = [
        (model_for("halo", **DECODE_VARIANTS["halo_select"][2]), 1, "content-selected"),
        (model_for("halo", use_swiglu=False), 1, "GELU"),
        (model_for("halo"), 2, "batch 2"),
    ]
    for model, batch, why in cases:
        dec = Decoder(model, batch, 4, 4, fuse_weights=True, gemv=True)
        assert dec.persistent is None and why in dec.persistent_why_not
    monkeypatch.setattr(Decoder, "persistent_step", False)
    assert Decoder(model_for("halo"), 1, 4, 4, fuse_weights=True, gemv=True).persistent is None


@pytest.mark.slow  # Inductor's CPU compile: ~10-20 s on a 2-core CPU
def test_persistent_step_in_the_compiled_step(monkeypatch):
    """The op inside the compiled step (fullgraph) gives the forward's tokens."""
    _interpreted_or_cuda()
    model = model_for("halo")
    prompt = torch.randint(0, 64, (1, 11), device=DEVICE)
    ref = model.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    out, dec = persistent_tokens(model, prompt, 12, monkeypatch, compile=True)
    assert dec.persistent is not None and dec.path.startswith("compiled+persistent"), dec.path
    assert torch.equal(out, ref)


def test_decoder_raises_when_a_barrier_timed_out(monkeypatch):
    """A set flag (a barrier gave up: wrong logits) ends the decode with an error that says what to do."""
    _interpreted_or_cuda()
    prompt = torch.randint(0, 64, (1, 6), device=DEVICE)
    _, dec = persistent_tokens(model_for("halo"), prompt, 3, monkeypatch)
    dec.persistent.flag.fill_(1)
    dec.reset()
    with pytest.raises(RuntimeError, match="persistent_step = False"):
        dec.generate(prompt)


def test_decode_bench_rows_for_each_step():
    """``steps: [default, persistent]`` in the decode bench: each variant twice, the persistent rows on the
    one-launch step (their path says so) and their ratio taken to dense's persistent row."""
    _interpreted_or_cuda()
    from halo_lab import bench
    from halo_lab.bench.decode import CHECK_CONFIG

    spec = {
        "model": {**CHECK_CONFIG, "max_seq_len": 256},
        "new_tokens": 3,
        "repeats": 1,
        "variants": ["dense", "halo"],
        "contexts": [40],
        "prefill_contexts": [],
        "steps": ["default", "persistent"],
        "triton_gemv": True,
        "compile": False,
        "cuda_graph": False,
    }
    rows = bench.bench_decode(spec, torch.device(DEVICE), torch.float32)
    bench.add_ratios(rows)
    assert [r["variant"] for r in rows] == ["dense", "halo", "dense_persistent", "halo_persistent"]
    assert all(("+persistent" in r["decode_path"]) == r["variant"].endswith("_persistent") for r in rows), (
        rows
    )
    assert rows[2]["ratio_to_dense"] == 1.0 and rows[3]["ratio_to_dense"] == rows[3]["ms"] / rows[2]["ms"]
    with pytest.raises(ValueError, match="steps='fused'"):
        bench.bench_decode({**spec, "steps": ["fused"]}, torch.device(DEVICE), torch.float32)
