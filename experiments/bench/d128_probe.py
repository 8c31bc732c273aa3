"""Which kernel and which launch options give the CUDA error of bf16 head_dim 128 (GPU only).

python experiments/bench/d128_probe.py            runs every variant, each in its own process (a CUDA
                                                  error poisons the process that hit it)
python experiments/bench/d128_probe.py VARIANT    one variant: forward, then backward, synced after each
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


VARIANTS = {
    "default": {},
    "fwd_w4": {"fwd": {"num_warps": 4}},
    "dq_w4": {"dq": {"num_warps": 4}},
    "dkv_w4": {"dkv": {"num_warps": 4}},
    "stages1": {k: {"num_stages": 1} for k in ("fwd", "dq", "dkv")},
    "rows128": {"fwd": {"BLOCK_T": 32}, "dq": {"BLOCK_T": 32}, "dkv": {"BLOCK_Q": 32}},
    "dkv_bn16": {"dkv": {"BLOCK_N": 16}},
}


def one(name: str) -> None:
    from halo_lab.kernels.halo_attention import interface
    from halo_lab.kernels.halo_attention import halo_triton_attention
    from tests.test_triton_attention import CASES

    config, n, heads, kv_heads, d = CASES["gqa4-d128"]
    base = interface.launch_options(d, heads // kv_heads, torch.bfloat16)
    over = VARIANTS[name]
    interface.TUNED[(d, heads // kv_heads, torch.bfloat16)] = {
        k: {**o, **over.get(k, {})} for k, o in base.items()
    }
    interface._PLANS.clear()
    for mode in ("token", "block"):
        cfg = dataclasses.replace(config, random_edges=mode)
        L = n + cfg.num_globals
        ins = [
            torch.randn(1, h, L, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
            for h in (heads, kv_heads, kv_heads)
        ]
        out = halo_triton_attention(*ins, cfg, 1, 5)
        sync()
        print(f"{name} {mode}: forward ok", flush=True)
        out.backward(torch.randn_like(out))
        sync()
        print(f"{name} {mode}: backward ok", flush=True)


def main() -> None:
    results = {}
    for name in VARIANTS:
        p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=300)
        tail = (p.stdout + p.stderr).strip().splitlines()[-4:]
        results[name] = {"rc": p.returncode, "tail": tail}
        print(name, p.returncode, " | ".join(tail), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    one(sys.argv[1]) if len(sys.argv) > 1 else main()
