"""kernels/rope.py: the fused q/k RoPE against the eager ops (values, gradients, dtypes, layouts).

Without a GPU the kernel runs in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
Lengths are not multiples of the kernel's 64-row block; q and k come in the model's layout (a transposed
[B, L, H, d] view) and contiguous.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import rope  # noqa: E402
from halo_lab.model import RotaryEmbedding  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(L: int, d: int, dtype, transposed: bool, heads=(4, 2), batch=2, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    cos, sin = RotaryEmbedding(d, L + 8, 10000.0).to(DEVICE)(
        3, L, torch.float32
    )  # a start offset, as in decode

    def make(h):
        shape = (batch, L, h, d) if transposed else (batch, h, L, d)
        t = torch.randn(*shape, device=DEVICE, generator=g).to(dtype)
        return (t.transpose(1, 2) if transposed else t).requires_grad_()

    return make(heads[0]), make(heads[1]), cos, sin


@pytest.mark.parametrize("transposed", [True, False], ids=["bshd", "bhsd"])
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_rope_matches_eager(dtype, d, transposed):
    L = 70  # one full 64-row block and a partial one
    q, k, cos, sin = inputs(L, d, dtype, transposed)
    cos, sin = cos.to(dtype), sin.to(dtype)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    fq, fk = rope.fused_rope_qk(q, k, cos, sin)
    grads = torch.autograd.grad((fq * gq).sum() + (fk * gk).sum(), (q, k))
    rq, rk = rope.reference_rope(q, cos, sin), rope.reference_rope(k, cos, sin)
    ref_grads = torch.autograd.grad((rq * gq).sum() + (rk * gk).sum(), (q, k))
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for got, want in [(fq, rq), (fk, rk), *zip(grads, ref_grads)]:
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **tol)


def test_fused_rope_under_autocast_gives_the_autocast_dtype_once_rounded():
    """bf16 activations with fp32 tables: eager RoPE is fp32 (attention casts it); the kernel stores bf16
    straight away, the same values rounded once, and its gradients come back in the input's dtype."""
    q, k, cos, sin = inputs(33, 64, torch.bfloat16, True)
    dev = q.device.type
    with torch.autocast(dev, dtype=torch.bfloat16):
        fq, fk = rope.fused_rope_qk(q, k, cos, sin)
    rq, rk = rope.reference_rope(q, cos, sin), rope.reference_rope(k, cos, sin)
    assert rq.dtype == torch.float32 and fq.dtype == fk.dtype == torch.bfloat16
    # compiled: exactly eager's fp32 result rounded; the interpreter rounds fp32 -> bf16 its own way
    # (up to one bf16 step, 2^-7 relative, off)
    once = {"atol": 0, "rtol": 0} if DEVICE == "cuda" else {"atol": 0, "rtol": 2**-7}
    torch.testing.assert_close(fq, rq.to(torch.bfloat16), **once)
    torch.testing.assert_close(fk, rk.to(torch.bfloat16), **once)
    gq, gk = torch.autograd.grad(fq.float().sum() + fk.float().square().sum(), (q, k))
    assert gq.dtype == gk.dtype == torch.bfloat16
    wq, wk = torch.autograd.grad(rq.sum() + rk.to(torch.bfloat16).float().square().sum(), (q, k))
    torch.testing.assert_close(gq, wq, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gk, wk, atol=5e-2, rtol=2e-2)


def test_each_position_is_rotated_by_its_own_angle():
    """Position p of the output depends on position p of the input only (causality of the kernel's rows)."""
    q, k, cos, sin = inputs(80, 32, torch.float32, True, batch=1)
    base_q, base_k = (t.detach() for t in rope.fused_rope_qk(q, k, cos, sin))
    q2, k2 = q.detach().clone(), k.detach().clone()
    q2[:, :, 65] += 1.0
    k2[:, :, 65] += 1.0
    out_q, out_k = rope.fused_rope_qk(q2, k2, cos, sin)
    for out, base in ((out_q, base_q), (out_k, base_k)):
        changed = (out != base).any(-1).any(1)[0]
        assert changed.nonzero().flatten().tolist() == [65]


def test_unsupported_shapes_get_a_clear_error_and_rope_qk_falls_back():
    q, k, cos, sin = inputs(16, 24, torch.float32, False)  # d / 2 = 12: not a power of two
    with pytest.raises(ValueError, match=r"d / 2 a power of two.*q \(2, 4, 16, 24\)"):
        rope.fused_rope_qk(q, k, cos, sin)
    fq, fk = rope.rope_qk(q, k, cos, sin)  # the eager ops
    torch.testing.assert_close(fq, rope.reference_rope(q, cos, sin))
    torch.testing.assert_close(fk, rope.reference_rope(k, cos, sin))
