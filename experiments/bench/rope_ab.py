"""Training step with the fused q/k RoPE (kernels/rope.py) against the eager ops, both models (GPU only).

python experiments/bench/rope_ab.py OUT_DIR

The bench's train setting (medium model, 65,536 tokens a step, AdamW, bf16 autocast, HALO-S on the triton
backend) at 1K, 8K and 32K, and the reference package's small-batch medium_1k config (8 x 1024): every
(model, RoPE) pair of a shape is built first and timed in turns (``ROUNDS`` x ``bench.time_ms``, median),
so the host's drift within a process falls on all four alike. Prints and writes OUT_DIR/rope_ab.json.
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from halo_lab import bench, model
from halo_lab.config import HaloConfig
from halo_lab.kernels import rope
from halo_lab.model import build_model

MEDIUM = {"vocab_size": 256, "hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2}
SHAPES = {"train_1k": (1024, 64), "train_8k": (8192, 8), "train_32k": (32768, 2), "medium_1k_b8": (1024, 8)}
ROUNDS = 5


def eager_rope(q, k, cos, sin):
    return rope.reference_rope(q, cos, sin), rope.reference_rope(k, cos, sin)


def with_rope(step, fused: bool):
    def run():
        model.rope_qk = rope.rope_qk if fused else eager_rope
        step()

    return run


def main(out: str) -> None:
    dev = torch.device("cuda")
    rows = []
    for name, (n, batch) in SHAPES.items():
        cfg = HaloConfig(**MEDIUM, max_seq_len=n, attention_backend="triton", dropout=0.0)
        steps, peaks = {}, {}
        for arch in ("dense", "halo"):
            torch.manual_seed(0)
            m = build_model(cfg, arch).to(dev).train()
            step = bench.step_functions(m, n, batch, torch.bfloat16)[1]
            for fused in (False, True):
                steps[(arch, fused)] = with_rope(step, fused)
                steps[(arch, fused)]()
                peaks[(arch, fused)] = bench.peak_memory_mb(steps[(arch, fused)], dev)
        times = {key: [] for key in steps}
        for _ in range(ROUNDS):
            for key, step in steps.items():
                times[key].append(bench.time_ms(step, dev, 2, 10))
        for (arch, fused), ts in times.items():
            row = {
                "shape": name,
                "seq_len": n,
                "batch": batch,
                "arch": arch,
                "rope": "fused" if fused else "eager",
                "ms": statistics.median(ts),
                "ms_rounds": [round(t, 3) for t in ts],
                "peak_mem_mb": peaks[(arch, fused)],
            }
            rows.append(row)
            print(
                f"{name:13s} {arch:5s} rope={row['rope']:5s} {row['ms']:8.2f} ms  peak {row['peak_mem_mb']:9.1f} MB"
                f"  rounds {row['ms_rounds']}",
                flush=True,
            )
        ms = {(r["arch"], r["rope"]): r["ms"] for r in rows if r["shape"] == name}
        print(
            f"{name:13s} HALO-S / dense: eager RoPE {ms['halo', 'eager'] / ms['dense', 'eager']:.3f}x, "
            f"fused RoPE {ms['halo', 'fused'] / ms['dense', 'fused']:.3f}x",
            flush=True,
        )
        del steps
        torch.cuda.empty_cache()
    model.rope_qk = rope.rope_qk
    with open(f"{out}/rope_ab.json", "w") as f:
        json.dump(
            {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
