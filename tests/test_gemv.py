"""The decode-step GEMV kernel (norm / SwiGLU prologue, residual epilogue) against its torch reference.

Without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on CUDA
compiled. Sizes are odd on purpose: N not a multiple of BLOCK_N, K not a multiple of CHUNK.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import gemv as kg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(batch: int, n: int, k: int, dtype, swiglu: bool = False):
    g = torch.Generator(device=DEVICE).manual_seed(batch * 1000 + n + k)
    x = torch.randn(batch, 2 * k if swiglu else k, device=DEVICE, dtype=dtype, generator=g)
    w = torch.randn(n, k, device=DEVICE, dtype=dtype, generator=g) / k**0.5
    nw = 1 + 0.1 * torch.randn(k, device=DEVICE, dtype=dtype, generator=g)
    nb = 0.1 * torch.randn(k, device=DEVICE, dtype=dtype, generator=g)
    res = torch.randn(batch, n, device=DEVICE, dtype=dtype, generator=g)
    return x, w, nw, nb, res


CASES = {
    "plain": {},
    "layernorm": {"norm": "layernorm", "bias": True},
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu+residual": {"swiglu": True, "residual": True},
    "layernorm+residual": {"norm": "layernorm", "bias": True, "residual": True},
    # x + the split-K FFN's fp32 sums (decode_ffn) as the input: the decoder's head after that FFN
    "layernorm+acc": {"norm": "layernorm", "bias": True, "acc": True},
    "rmsnorm+acc": {"norm": "rmsnorm", "acc": True},
}


@pytest.mark.parametrize("chunks", ["one", "looped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gemv_matches_reference(case, dtype, chunks, monkeypatch):
    """Rows read whole (K <= MAX_CHUNK, the decode models) and in chunks (wider rows: here K = 200 in 64s)."""
    if chunks == "looped":
        monkeypatch.setattr(kg, "MAX_CHUNK", 64)
    c = CASES[case]
    x, w, nw, nb, res = inputs(3, 37, 200, dtype, swiglu=c.get("swiglu", False))
    kw = {
        "norm": c.get("norm", "none"),
        "norm_weight": nw if "norm" in c else None,
        "norm_bias": nb if c.get("bias") else None,
        "swiglu": c.get("swiglu", False),
        "residual": res if c.get("residual") else None,
        "acc": 3 * torch.randn(x.shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(5))
        if c.get("acc")
        else None,
    }
    ref = kg.reference_gemv(x.double(), w.double(), **{k: _dbl(v) for k, v in kw.items()})
    out = kg.gemv(x, w, **kw)
    assert out.shape == (3, 37) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < tol, f"{case}: relative error {err:.2e}"
    # the oracle is sensitive: a weight row off by one gives a large error
    assert ((kg.gemv(x, w.roll(1, 0), **kw).double() - ref).norm() / ref.norm()).item() > 0.1
    if kw["acc"] is not None:  # and the sums are read: without them it is far off
        assert ((kg.gemv(x, w, **{**kw, "acc": None}).double() - ref).norm() / ref.norm()).item() > 0.1


def _dbl(v):
    return v.double() if isinstance(v, torch.Tensor) else v


def test_gemv_op_compiles_into_a_graph():
    """The custom op is one opaque call in a compiled function and gives the eager kernel's values."""
    x, w, nw, nb, res = inputs(1, 40, 64, torch.float32)

    def step(x, w, nw, nb, res):
        return kg.gemv_op(x, w, nw, nb, res, "layernorm", 1e-5, False) * 2

    eager = step(x, w, nw, nb, res)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x, w, nw, nb, res)
    torch.testing.assert_close(compiled, eager)
    ref = kg.reference_gemv(x, w, norm="layernorm", norm_weight=nw, norm_bias=nb, residual=res) * 2
    torch.testing.assert_close(eager, ref, rtol=1e-4, atol=1e-4)


def test_gemv_rejects_bad_shapes_and_options():
    x, w, nw, _, _ = inputs(2, 16, 32, torch.float32)
    with pytest.raises(ValueError, match="columns"):
        kg.gemv(x[:, :31], w)
    with pytest.raises(ValueError, match="norm="):
        kg.gemv(x, w, norm="batchnorm")
    with pytest.raises(ValueError, match="needs its weight"):
        kg.gemv(x, w, norm="rmsnorm")
    with pytest.raises(ValueError, match="not both"):
        kg.gemv(torch.cat([x, x], 1), w, norm="rmsnorm", norm_weight=nw, swiglu=True)
    with pytest.raises(ValueError, match="acc"):
        kg.gemv(x, w, acc=x.half())
