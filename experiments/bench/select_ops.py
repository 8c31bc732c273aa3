"""The content-selected choice's torch ops on the CPU: aten ops, host syncs and wall time per forward+backward.

TRITON_INTERPRET=1 PYTHONPATH=. python experiments/bench/select_ops.py [OUT.json] [--bench=1024,4096,16384,65536]

The bench's ``triton_select`` shapes scaled down (B·N = 8,192 at N = 1,024 and 4,096; 8 query / 2 KV
heads, d = 64, fp32, CPU tensors, one thread) at the variant's settings (conf/variant/halo_select.yaml:
4 blocks of 16, groups of 16, the 2 best, learned pooling, the bound score, summary bias -4) and at the
bench's (halo_lab/bench/attention.py: the mean score, no bias). Two paths per case (``scaled`` rows):

* ``selection``: the torch part alone, what runs before and after the kernels: ``selection_tables``
  (``select`` + the per-tile tables) forward, then autograd from the summary keys/values back to k, v and
  the pooling's u (as the kernels' dsum hands them back);
* ``layer``: one attention layer as a model calls it (``attn.halo_attention(..., "triton", pool, bias)``)
  forward + backward with the three kernel launches stubbed out (no kernel, no interpreter): the graph
  tables, the plan, the allocations and the autograd Function on top of the selection.

Then (``bench`` rows) the ``selection`` path at the bench's own shapes (B·N = 65,536, N = 1,024 .. 65,536):
the choice scores the queries in chunks of CHOICE_CHUNK_ELEMENTS scores (1,927 queries here), so the ops
per call grow with the chunks (1, 3, 9, 35); one counted call and one timed call each (seconds on a CPU).

Per call: ``ops``, the aten ops dispatched (a ``TorchDispatchMode`` under autograd: forward and backward,
views included); ``device_ops``, those that would run a kernel on a GPU (not views, not the CPU scalars of
``torch.where(c, x, 0.0)``, not bare allocations); ``syncs``, the ops that make a CUDA host wait for the device: a scalar read (``item``,
``_local_scalar_dense``, ``is_nonzero``, ``equal``) or an output whose shape depends on the data
(``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing, ``repeat_interleave`` without
``output_size``, ``bincount``); ``wall_ms``, the median of 15 calls (after 3 warm-up calls, gc off;
``bench`` rows: one call), and ``cpu_ms``, the process's CPU time per call (median): steadier than the
wall time on a shared machine, where other jobs take the cores.
On the CPU a sync costs nothing: the counts are what a GPU host would wait on.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels import on a CPU; none runs (stubbed)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from halo_lab.config import HaloConfig  # noqa: E402
from halo_lab.graph import selection  # noqa: E402
from halo_lab.kernels.halo_attention import interface  # noqa: E402
from halo_lab.model import attention as attn  # noqa: E402

TOKENS, BENCH_TOKENS, HQ, HKV, D = 8192, 65536, 8, 2, 64
SCALAR_READS = {"item", "_local_scalar_dense", "is_nonzero", "equal", "allclose"}
# ops that run no kernel on a GPU: views and metadata, CPU scalars, bare allocations
HOST_ONLY = {
    "view",
    "_unsafe_view",
    "reshape",
    "permute",
    "transpose",
    "t",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "expand",
    "alias",
    "detach",
    "as_strided",
    "unbind",
    "split",
    "chunk",
    "unflatten",
    "flatten",
    "lift_fresh",
    "scalar_tensor",
    "promote_types",
    "result_type",
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "set_",
}
DATA_SHAPED = {
    "nonzero", "argwhere", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "unique_dim_consecutive", "masked_select", "bincount",
}  # fmt: skip


def _is_sync(func, args, kwargs) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in SCALAR_READS or name in DATA_SHAPED:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None
    if name.startswith("index") and name != "index_select":  # boolean-mask indexing
        flat = [a for a in args if isinstance(a, (list, tuple))]
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for f in flat for t in f)
    return False


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        self.ops[name] += 1
        if _is_sync(func, args, kwargs):
            self.syncs[name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def stubbed_launches():
    saved = interface._fwd, interface._dq, interface._dkv, interface._chosen
    interface._fwd = interface._dq = interface._dkv = interface._chosen = lambda *a: None
    try:
        yield
    finally:
        interface._fwd, interface._dq, interface._dkv, interface._chosen = saved


def configs() -> dict[str, HaloConfig]:
    base = dict(num_heads=HQ, num_kv_heads=HKV, hidden_size=HQ * D, select_blocks=4, select_pooling="learned")
    return {
        "variant (bound, bias -4)": HaloConfig(**base, select_score="bound", select_summary_bias=-4.0),
        "bench (mean, no bias)": HaloConfig(**base, select_score="mean"),
    }


def inputs(c: HaloConfig, n: int, tokens: int = TOKENS):
    g = torch.Generator().manual_seed(0)
    B, L = tokens // n, c.num_globals + n
    q = torch.randn(B, HQ, L, D, generator=g).requires_grad_()
    k, v = (torch.randn(B, HKV, L, D, generator=g).requires_grad_() for _ in range(2))
    pool = (torch.randn(HKV, D, generator=g) * 0.3).requires_grad_()
    bias = torch.full((HKV,), c.select_summary_bias, requires_grad=True) if c.select_summary_bias else None
    return q, k, v, pool, bias, torch.randn_like(q)


def paths(c: HaloConfig, n: int, tokens: int = TOKENS) -> dict:
    q, k, v, pool, bias, do = inputs(c, n, tokens)
    block_t = interface.launch_options(D, HQ // HKV, torch.float32)["fwd"]["BLOCK_T"]
    nsum = sum(selection.num_summaries(c, n)) or 1
    dsk, dsv = (torch.randn(q.shape[0], HKV, nsum, D) for _ in range(2))

    def selection_path():
        sk, sv, _ = interface.selection_tables(q, k, v, c, block_t, pool)
        torch.autograd.backward([sk, sv], [dsk, dsv])

    def layer_path():
        attn.halo_attention(q, k, v, c, 0, 0, "triton", None, pool, bias).backward(do)

    return {"selection": selection_path, "layer": layer_path}


def measure(fn, repeats: int = 15, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    counter = OpCounter()
    with counter:
        fn()
    times, cpu = [], []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
    finally:
        gc.enable()
    return {
        "ops": sum(counter.ops.values()),
        "device_ops": sum(n for op, n in counter.ops.items() if op not in HOST_ONLY),
        "syncs": sum(counter.syncs.values()),
        "sync_ops": dict(counter.syncs),
        "wall_ms": round(statistics.median(times), 3),
        "wall_ms_min": round(min(times), 3),
        "cpu_ms": round(statistics.median(cpu), 3),
        "op_counts": dict(counter.ops.most_common()),
    }


def chunks(c: HaloConfig, n: int, tokens: int) -> int:
    S = sum(selection.num_summaries(c, n))
    rows = max(1, selection.CHOICE_CHUNK_ELEMENTS // max(1, tokens // n * HKV * S))
    return -(-n // rows)


def report(r: dict) -> None:
    print(
        f"{r['shapes']:6s} {r['config']:24s} {r['path']:9s} N={r['n']:5d} B={r['batch']:2d} "
        f"chunks {r['chunks']:2d}  ops {r['ops']:5d}  device ops {r['device_ops']:4d}  syncs {r['syncs']:2d} "
        f"{r['sync_ops'] or ''} wall {r['wall_ms']:9.2f} ms  cpu {r['cpu_ms']:9.2f} ms",
        flush=True,
    )


def main(out: str | None, bench_lengths: list[int]) -> None:
    torch.set_num_threads(1)
    rows = []
    with stubbed_launches():
        for cname, c in configs().items():
            for n in (1024, 4096):
                for pname, fn in paths(c, n).items():
                    r = {"shapes": "scaled", "config": cname, "path": pname, "n": n, "batch": TOKENS // n}
                    rows.append({**r, "chunks": chunks(c, n, TOKENS), **measure(fn)})
                    report(rows[-1])
        for cname, c in configs().items():
            for n in bench_lengths:
                fn = paths(c, n, BENCH_TOKENS)["selection"]
                r = {
                    "shapes": "bench",
                    "config": cname,
                    "path": "selection",
                    "n": n,
                    "batch": BENCH_TOKENS // n,
                }
                rows.append({**r, "chunks": chunks(c, n, BENCH_TOKENS), **measure(fn, repeats=1, warmup=0)})
                report(rows[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": 1,
        "commit": commit.strip(),
        "shape": f"B*N={TOKENS} (scaled) and {BENCH_TOKENS} (bench), Hq={HQ}, Hkv={HKV}, d={D}, fp32, CPU "
        "tensors, kernel launches stubbed",
        "command": "TRITON_INTERPRET=1 PYTHONPATH=. python experiments/bench/select_ops.py OUT.json",
    }
    if out:
        with open(out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--bench=")]
    lengths = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--bench=")]
    main(
        args[0] if args else None,
        [int(n) for n in lengths[-1].split(",") if n] if lengths else [1024, 4096, 16384, 65536],
    )
