"""Where the selected blocks' time goes: one attention layer's forward + backward under torch.profiler, its
GPU kernels grouped into the fused attention's three kernels and the rest (the choice's torch ops, the
tables, the summaries, the casts), at the bench's shapes (B*N = 65,536, 8 query / 2 KV heads, d = 64,
bf16), the variant's settings (halo_lab.bench.attention.SELECT) and plain HALO-S beside it.

    python experiments/bench/select_profile.py OUT.json [N ...]      # default 1024 4096 16384 65536

Issue 29's next step: the selected path is 4-8x dense at 1K-4K (experiments/bench/README.md, "The selected
blocks") and the CPU counts cannot say whether the choice's ops or the kernels' chosen-block loops cost
it. On the CPU (no CUDA) it runs one small N under the interpreter with CPU activities only, as a check
that it works, not a measurement.
"""

from __future__ import annotations

import collections
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from halo_lab.bench.attention import SELECT, selection_parameters
from halo_lab.config import HaloConfig
from halo_lab.kernels.halo_attention import interface
from halo_lab.model import attention as attn

FUSED = ("halo_fwd_kernel", "halo_bwd_dq_kernel", "halo_bwd_dkv_kernel", "choose_blocks_kernel")


def layer_call(c: HaloConfig, n: int, batch: int, device, dtype):
    L = n + c.num_globals
    q, k, v = (
        torch.randn(batch, h, L, 64, device=device, dtype=dtype, requires_grad=True) for h in (8, 2, 2)
    )
    extras = selection_parameters(c, device)
    g = torch.randn_like(q)

    def call():
        out = attn.halo_attention(q, k, v, c, 1, 3, "triton", **extras)
        out.backward(g)

    return call


def profile_one(call, cuda: bool, repeats: int) -> dict:
    for _ in range(2):
        call()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            call()
        if cuda:
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda and e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name][0] += 1
            kernels[e.name][1] += e.device_time / repeats  # µs per call
    fused = sum(t for name, (_, t) in kernels.items() if name.startswith(FUSED))
    total = sum(t for _, t in kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:20]
    return {
        "gpu_us_per_call": total,
        "fused_us": fused,
        "other_us": total - fused,
        "kernels_per_call": sum(c for c, _ in kernels.values()) / repeats,
        "top": [{"name": name[:120], "count": c / repeats, "us": t} for name, (c, t) in top],
    }


def main(out_path: str, sizes: list[int]) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    sizes = sizes or ([1024, 4096, 16384, 65536] if cuda else [256])
    rows = []
    for n in sizes:
        batch = max(1, 65536 // n) if cuda else 1
        base = HaloConfig(num_heads=8, num_kv_heads=2, hidden_size=512, max_seq_len=max(n, 1024))
        sel = base.replace(**SELECT)
        for name, c, fused in (
            ("triton", base, True),
            ("triton_select", sel, True),  # the choice through choose.py (the default)
            ("triton_select_torch_choice", sel, False),  # graph.selection's choice, as until 2026-12-05
        ):
            interface.FUSED_CHOICE = fused
            r = profile_one(layer_call(c, n, batch, device, dtype), cuda, 5 if cuda else 1)
            rows.append({"n": n, "batch": batch, "variant": name, **r})
            print(
                f"N {n:6d} B {batch:3d} {name:14s} GPU {r['gpu_us_per_call']:9.1f} µs "
                f"(fused kernels {r['fused_us']:8.1f}, other {r['other_us']:8.1f}; "
                f"{r['kernels_per_call']:.0f} kernels)",
                flush=True,
            )
            interface.FUSED_CHOICE = True
            for k in r["top"][:12]:
                print(f"    {k['count']:5.0f} x {k['us']:9.1f} µs  {k['name']}")
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype), "rows": rows}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]])
