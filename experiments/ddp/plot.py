"""Loss curves and steady-state throughput of the 1-GPU vs 2-GPU DDP runs in this folder (python plot.py)."""

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
pairs = {"global batch 32 x 512": ("gpu1", "gpu2"), "global batch 128 x 512": ("b1", "b2")}
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
rows = []
for ax, (title, runs) in zip(axes, pairs.items()):
    for run, label in zip(runs, ("1 GPU", "2 GPUs (DDP)")):
        hist = [json.loads(line) for line in (here / f"{run}_history.jsonl").read_text().splitlines()]
        train = [(h["step"], h["train/loss"]) for h in hist if "train/loss" in h]
        ax.plot(*zip(*train), label=label)
        speed = [h["perf/tokens_per_sec"] for h in hist if "perf/tokens_per_sec" in h][2:]  # skip compile
        m = json.loads((here / f"{run}_metrics.json").read_text())
        # CUDA max allocated on rank 0, as logged during training: these runs' metrics.json holds the CPU's
        # RSS (the summary was taken after Lightning had moved the module to the CPU; fixed since).
        mem = max(h["perf/peak_mem_mb"] for h in hist if "perf/peak_mem_mb" in h)
        rows.append((title, label, m["val_loss"], statistics.median(speed), mem))
    ax.set(title=title, xlabel="optimizer step", ylabel="train loss")
    ax.legend()
    ax.grid(alpha=0.3)
fig.suptitle("halo_small, Shakespeare bytes, seq 512, 2x NVIDIA H100 80GB HBM3", fontsize=9)
fig.tight_layout()
fig.savefig(here / "loss_curves.png", dpi=110)
print("| run | GPUs | final val loss | median tokens/s (after warm-up) | peak MB per GPU |")
print("|---|---|---|---|---|")
for title, label, loss, speed, mem in rows:
    print(f"| {title} | {label} | {loss:.4f} | {speed:,.0f} | {mem:.0f} |")
