"""experiments/bench/phase_sync.py (issue 30's probe): every wait mode computes the torch chain.

In the interpreter programs run one after another, so ``launch`` runs at P = 3 and the one-launch waits
(barrier, flags) at P = 1, where their code runs but never has to wait; on a card the probe itself checks
each mode at the SM count before it times it."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ps = runpy.run_path(str(ROOT / "experiments" / "bench" / "phase_sync.py"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.skipif(not ps["HAS_TRITON"], reason="needs triton")


@pytest.mark.parametrize(
    "mode,P,work,fanin,rows",
    [
        ("launch", 3, "gemv", 0, 4),
        ("launch", 3, "mean", 0, 4),
        ("launch", 5, "mean", 2, 4),
        ("barrier", 1, "gemv", 0, 4),
        ("flags", 1, "gemv", 0, 4),
        ("flags", 1, "mean", 1, 4),
        # the decode step's GEMV size (--rows 8): a program's tile of 8 rows, the fan-in chunks of 8
        ("launch", 3, "gemv", 0, 8),
        ("barrier", 1, "gemv", 0, 8),
        ("barrier", 1, "mean", 0, 8),
        ("launch", 3, "mean", 1, 8),
    ],
)
def test_every_mode_computes_the_reference_chain(mode, P, work, fanin, rows):
    chain = ps["Chain"](P, 5, work, fanin, device=DEVICE, rows=rows)
    assert chain.D == P * rows
    for _ in range(2):  # the second pass numbers its flags and counter after the first's
        chain.buf.zero_()
        chain.run(mode)
        assert chain.check() < 1e-4
    assert int(chain.err.item()) == 0


def test_the_reference_is_the_chain_it_claims():
    """Fan-in 1 at P programs: each program's chunk depends on its own rows only."""
    x0 = torch.arange(8.0)
    ref = ps["reference"](x0, 1, 2, fanin=1)
    own = x0.view(2, 4).mean(1).repeat_interleave(4)
    assert torch.allclose(ref[1], x0 * 0.5 + own * 0.25 + 1.0)
    assert not torch.allclose(ref[1], ps["reference"](x0, 1, 2, fanin=2)[1])


def test_a_wait_that_never_ends_is_reported_not_hung():
    """Flags at P = 2 in the interpreter: program 0 waits for program 1, which has not run yet."""
    if DEVICE == "cuda":
        pytest.skip("on a card both programs run at once")
    chain = ps["Chain"](2, 3, "mean", 0, device=DEVICE, spin=16)
    chain.run("flags")
    with pytest.raises(RuntimeError, match="spun past its limit"):
        chain.check()
    with pytest.raises(ValueError, match="fanin must be 0"):
        ps["Chain"](2, 3, "gemv", 1, device=DEVICE)
    for rows in (6, 16):
        with pytest.raises(ValueError, match="rows must be 1, 2, 4 or 8"):
            ps["Chain"](2, 3, "gemv", 0, device=DEVICE, rows=rows)


@pytest.mark.parametrize("sync", [1, 2])
def test_a_pass_reuses_the_first_pass_kernel_whatever_its_numbering(sync):
    """Each one-launch pass numbers its flags / counter after the last (``base`` grows by the phases): if
    Triton specialized ``base`` on divisibility, a later pass would compile a second kernel inside the
    timed loop. The sm_90 specialization key must not depend on ``base`` (nor on the phase bounds)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel = ps["_chain_kernel"]
    jit = JITFunction(getattr(kernel, "fn", kernel), **getattr(kernel, "kwargs", {}))
    binder = create_function_from_signature(
        jit.signature, jit.params, make_backend(GPUTarget("cuda", 90, 32))
    )
    t = torch.zeros(4)
    consts = dict(R=4, DB=1024, PB=256, FANIN=0, KB=1, SYNC=sync, GEMV=False, SPIN=1 << 16)
    keys = {
        str(binder(t, t, t, t, t, 132, 528, base, lo, 40, **consts)[1])
        for base, lo in ((0, 0), (39, 1), (40, 3))
    }
    assert len(keys) == 1
