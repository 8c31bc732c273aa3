"""Host time of one HALO attention layer (forward + backward) with its kernel launches stubbed out, on the CPU.

TRITON_INTERPRET=1 PYTHONPATH=. python experiments/bench/host_time_op.py [OUT.json]

What a small, launch-bound batch pays per layer on the host besides the launches themselves: the graph
and selection tables, the launch plan, the allocations, the autograd machinery (a Python
``autograd.Function``, or the ``torch.library`` ops of kernels/halo_attention/op.py and their
``register_autograd``), the strides and argument tuples. The three launchers of interface.py are replaced
by no-ops, so no kernel (and no interpreter) runs, and what is left is Python and dispatch; tensors are
CPU tensors (CPU allocations, not the CUDA caching allocator). Against it: SDPA forward + backward at the
same shape (its CPU kernels included: small at this shape) and at a tinier one.

Rows (each present where the checkout has it, so the script runs at an older commit too):
* ``eager (default)``: ``attn.halo_attention(..., "triton")`` as a model calls it;
* ``eager through the ops``: op.EAGER_OP = True (the torch.library ops called eagerly);
* ``compiled aot_eager``: torch.compile(fullgraph=True, backend="aot_eager") of the same call;
* ``sdpa``: F.scaled_dot_product_attention(is_causal=True, enable_gqa) forward + backward.
Medians over 7 repeats of 200 calls, gc off, µs per call.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels import on a CPU; none runs (stubbed)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from halo_lab.config import HaloConfig  # noqa: E402
from halo_lab.kernels.halo_attention import interface  # noqa: E402
from halo_lab.kernels.launch import Launcher  # noqa: E402  (older than this script)
from halo_lab.model import attention as attn  # noqa: E402

try:
    from halo_lab.kernels.halo_attention import op
except ImportError:  # a checkout before the ops
    op = None


@contextlib.contextmanager
def stubbed_launches():
    """Every kernel launcher interface.py holds, as an attribute or in a dict of them, a no-op (found by
    type, so a pass added later is stubbed too: a missed one runs in the interpreter, as the selection's
    chosen-key and summary passes did in 2026-12-07's first run, 70x its host time)."""
    slots = [(vars(interface), name) for name, v in vars(interface).items() if isinstance(v, Launcher)]
    slots += [
        (d, key)
        for d in list(vars(interface).values())
        if isinstance(d, dict)
        for key, v in d.items()
        if isinstance(v, Launcher)
    ]
    saved = [(d, key, d[key]) for d, key in slots]
    for d, key in slots:
        d[key] = lambda *a: None
    try:
        yield
    finally:
        for d, key, launcher in saved:
            d[key] = launcher


def per_call_us(fn, n: int = 200, repeats: int = 7) -> float:
    for _ in range(20):
        fn()
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t) / n * 1e6)
    finally:
        gc.enable()
    return statistics.median(times)


def shapes(config: HaloConfig, n: int, d: int = 64, dtype=torch.float32):
    L = n + config.num_globals
    q = torch.randn(1, 8, L, d, dtype=dtype, requires_grad=True)
    k = torch.randn(1, 2, L, d, dtype=dtype, requires_grad=True)
    v = torch.randn(1, 2, L, d, dtype=dtype, requires_grad=True)
    return q, k, v, torch.randn_like(q)


def halo_rows(cname: str, config: HaloConfig, n: int) -> dict[str, float]:
    rows = {}
    q, k, v, g = shapes(config, n)
    pool = torch.zeros(2, 64, requires_grad=True) if config.select_pooling == "learned" else None
    bias = torch.full((2,), -1.0, requires_grad=True) if config.selects else None

    def call():
        return attn.halo_attention(q, k, v, config, 0, 0, "triton", None, pool, bias)

    rows[f"{cname}: eager (default)"] = per_call_us(lambda: call().backward(g))
    rows[f"{cname}: eager fwd only, no grad"] = per_call_us(
        lambda: attn.halo_attention(q.detach(), k.detach(), v.detach(), config, 0, 0, "triton")
    )
    if op is not None:
        op.EAGER_OP = True
        try:
            rows[f"{cname}: eager through the ops"] = per_call_us(lambda: call().backward(g))
        finally:
            op.EAGER_OP = False
        torch._dynamo.reset()
        compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
        rows[f"{cname}: compiled aot_eager"] = per_call_us(lambda: compiled().backward(g), n=100)
    return rows


def main(out: str | None) -> None:
    torch.set_num_threads(1)
    rows: dict[str, float] = {}
    configs = {
        "plain": HaloConfig(),
        "selection": HaloConfig(select_blocks=4, select_pooling="learned", select_summary_bias=-1.0),
    }
    n = 64
    with stubbed_launches():
        for cname, config in configs.items():
            rows.update(halo_rows(cname, config, n))
    q, k, v, g = shapes(configs["plain"], n)
    sdpa = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    rows[f"sdpa fwd+bwd (N={n + 2}, d=64)"] = per_call_us(lambda: sdpa().backward(g))
    q, k, v, g = shapes(configs["plain"], 6, d=16)
    rows["sdpa fwd+bwd (N=8, d=16)"] = per_call_us(lambda: sdpa(q, k, v).backward(g))
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "shape": f"B=1, Hq=8, Hkv=2, N={n}+2 globals, d=64, fp32, CPU tensors, launches stubbed",
    }
    for name, us in rows.items():
        print(f"{name:45s} {us:8.1f} µs/call")
    if out:
        with open(out, "w") as f:
            json.dump({"meta": meta, "us_per_call": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
