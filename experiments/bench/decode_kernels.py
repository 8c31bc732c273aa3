"""What one decode step launches, kernel by kernel, and what Inductor options change it (GPU only, no Hydra).

python experiments/bench/decode_kernels.py OUT_DIR [OPTION ...] [--contexts N ...] [--variants NAME ...]
(default: every round of OPTIONS, contexts 1K and 128K, every variant)

The medium model (hidden 512, 8 layers, 8/2 heads), batch 1, bf16, greedy, through ``Decoder`` (compiled
step, CUDA-graph replay): tokens/s over 256 new tokens after a synthetic cache at 1K and 128K context, and
the CUDA kernels of one step (name, count, GPU µs), for each of ``DECODE_VARIANTS`` (dense, HALO-S with the
full and the ring cache, HALO-S with selection), under each Inductor option set of ``OPTIONS``. Writes
``decode_kernels.json`` and prints the tables.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import torch
import torch._dynamo

from halo_lab.bench import DECODE_VARIANTS, benchmark_generation
from halo_lab.bench.decode import MEDIUM
from halo_lab.bench.train_step import _model_config
from halo_lab.generation import Decoder
from halo_lab.generation.persistent import PersistentStep
from halo_lab.model import build_model

CONTEXTS = (1024, 131072)
# (Decoder.inductor_options, Decoder's gemv, Decoder.fused_qkv, Decoder.fused_attn_o[, Decoder.pdl[,
# Decoder.persistent_step[, Decoder.fused_ffn[, Decoder.split_attn_o[, PersistentStep's options]]]]]) for
# each round:
# none; combo kernels (horizontal fusion of independent kernels, the default since 2026-12-02); combo +
# max-autotune (Triton GEMM templates, which Inductor can fuse with their neighbours, where the cuBLAS
# GEMVs are latency-bound); combo + the fused GEMV kernel (halo_lab/kernels/gemv.py: norm, SwiGLU and
# residual add inside each projection), alone (the step of 2026-12-02), with each layer's q/k/v, RoPE and
# cache write in one kernel (kernels/decode_qkv.py), and with HALO-S's attention + o-projection in one
# more (kernels/decode_attn_o.py; the default since 2026-12-05)
OPTIONS = {
    "default": ({}, False, True, True),
    "combo": ({"combo_kernels": True}, False, True, True),
    "combo_autotune": (
        {"combo_kernels": True, "max_autotune": True, "max_autotune_gemm_backends": "TRITON,ATEN"},
        False,
        True,
        True,
    ),
    "combo_gemv_unfused": ({"combo_kernels": True}, True, False, False),
    "combo_gemv_qkv": ({"combo_kernels": True}, True, True, False),
    "combo_gemv": ({"combo_kernels": True}, True, True, True),
    # the default step with its own kernels launched with PDL (halo_lab/kernels/pdl.py, Decoder.pdl)
    "combo_gemv_qkv_pdl": ({"combo_kernels": True}, True, True, False, True),
    # the same with HALO-S's attention + o-projection in one PDL launch (kernels/decode_attn_o.py, the W_o
    # tile loaded before the wait; dense's rows are combo_gemv_qkv_pdl's)
    "combo_gemv_pdl": ({"combo_kernels": True}, True, True, True, True),
    # the split-K FFN (kernels/decode_ffn.py, Decoder.fused_ffn): each layer's FFN one PDL launch, its
    # residual add in the next q/k/v kernel; alone, and with the attention + o-projection kernel
    "combo_gemv_qkv_ffn_pdl": ({"combo_kernels": True}, True, True, False, True, False, True),
    "combo_gemv_ffn_pdl": ({"combo_kernels": True}, True, True, True, True, False, True),
    # the split-K FFN with HALO-S's attention + o-projection split over KV heads (decode_attn_o_split: its
    # sums added by the FFN kernel): 3 kernels a layer without recomputing every head in every program
    "combo_gemv_split_pdl": ({"combo_kernels": True}, True, True, False, True, False, True, True),
    # the whole step in one persistent launch (halo_lab/kernels/decode_step.py, Decoder.persistent_step): HALO-S
    # over its key slots, dense split over the keys; the selection keeps the per-kernel step (decoder says why)
    "combo_gemv_qkv_persistent": ({"combo_kernels": True}, True, True, False, False, True),
    # 88 programs, not one an SM (PersistentStep.most_programs; phase_cost.py: 102.6 against 106.3 µs)
    "combo_gemv_qkv_persistent_p88": (
        {"combo_kernels": True}, True, True, False, False, True, False, False, {"most_programs": 88},
    ),
    # layers 0-4's weights loaded marked to stay in L2, the rest to leave first (PersistentStep.keep_l2)
    "combo_gemv_qkv_persistent_keep5": (
        {"combo_kernels": True}, True, True, False, False, True, False, False, {"keep_l2": 5},
    ),
}


@torch.no_grad()  # as Decoder.decode runs it: a call with grad enabled would recompile the step
def step_kernels(dec: Decoder) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    state = dec._snapshot()
    dec.pos.fill_(dec.start)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._fn()
        torch.cuda.synchronize()
    dec._restore(state)
    per = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name][0] += 1
            per[e.name][1] += e.device_time
    return [
        {"kernel": k, "count": c, "us": round(t, 1)}
        for k, (c, t) in sorted(per.items(), key=lambda x: -x[1][1])
    ]


def main(out: str, names: list[str], contexts=CONTEXTS, variants=None) -> None:
    # before the first row: the tenth session lost its JSON to a missing OUT_DIR
    os.makedirs(out, exist_ok=True)
    spec = {"model": MEDIUM, "new_tokens": 256}
    rows = []
    chosen = {v: DECODE_VARIANTS[v] for v in variants or DECODE_VARIANTS}
    for opt_name in names or list(OPTIONS):
        opts, gemv, Decoder.fused_qkv, Decoder.fused_attn_o, *extra = OPTIONS[opt_name]
        Decoder.pdl = bool(extra and extra[0])
        Decoder.persistent_step = bool(len(extra) > 1 and extra[1])
        Decoder.fused_ffn = bool(len(extra) > 2 and extra[2])
        Decoder.split_attn_o = bool(len(extra) > 3 and extra[3])
        step = extra[4] if len(extra) > 4 else {}
        PersistentStep.most_programs = step.get("most_programs")
        PersistentStep.keep_l2 = step.get("keep_l2")
        torch._dynamo.reset()
        Decoder.inductor_options = opts
        for ctx in contexts:
            for variant, (arch, cache, fields) in chosen.items():
                torch.manual_seed(0)
                config = _model_config(spec, ctx + 258).replace(**fields)
                model = build_model(config, arch).to("cuda", torch.bfloat16)
                try:
                    r = benchmark_generation(
                        model, ctx, 256, 1, cache=cache, prefill=False, count_kernels=False, gemv=gemv
                    )
                except Exception as e:  # noqa: BLE001 - an option that fails is a result too
                    print(f"{opt_name} {variant} {ctx}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                row = {"options": opt_name, "variant": variant, "context": ctx, **r}
                if ctx == contexts[0]:
                    dec = Decoder(model, 1, ctx, 257, cache=cache, sync_every=257, gemv=gemv)
                    dec.fill_random()
                    dec._run_step = dec._build()
                    row["kernels"] = step_kernels(dec)
                    row["kernels_per_token"] = sum(k["count"] for k in row["kernels"])
                    row["gpu_us_per_token"] = round(sum(k["us"] for k in row["kernels"]), 1)
                rows.append(row)
                print(
                    f"{opt_name:8s} {variant:9s} ctx {ctx:6d}: {r['tokens_per_sec']:8.0f} tok/s "
                    f"{r['ms_per_token'] * 1e3:6.1f} us/token  path {r['decode_path']}  "
                    f"kernels {row.get('kernels_per_token')}  gpu us {row.get('gpu_us_per_token')}",
                    flush=True,
                )
                for k in row.get("kernels", []):
                    print(f"    {k['count']:3d} x {k['us']:7.1f} us  {k['kernel'][:110]}")
                del model
                torch.cuda.empty_cache()
    with open(f"{out}/decode_kernels.json", "w") as f:
        json.dump(
            {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1
        )


def _cli(argv: list[str]) -> None:
    """OUT [OPTION ...] [--contexts N ...] [--variants NAME ...]: the two lists cut a call's time (the
    kernels are counted at the first context)."""
    lists: dict[str, list[str]] = {"options": [], "--contexts": [], "--variants": []}
    current = "options"
    for a in argv[1:]:
        if a in lists:
            current = a
        else:
            lists[current].append(a)
    contexts = tuple(int(c) for c in lists["--contexts"]) or CONTEXTS
    main(argv[0], lists["options"], contexts, lists["--variants"] or None)


if __name__ == "__main__":
    _cli(sys.argv[1:])
