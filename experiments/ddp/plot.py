"""Loss curves and steady-state throughput of the 1-GPU vs 2-GPU DDP runs in this folder
(python experiments/ddp/plot.py): the table on stdout, loss_curves.png in the project's plotting style
(halo_lab/report/style.py)."""

import json
import statistics
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parents[1]))  # this checkout's halo_lab

from halo_lab.report import style  # noqa: E402

pairs = {"global batch 32 x 512": ("gpu1", "gpu2"), "global batch 128 x 512": ("b1", "b2")}
# one colour and line style per GPU count in both panels; DDP dashed, so the curves that overlap stay visible
looks = {"1 GPU": {"color": "#393b79", "ls": "-"}, "2 GPUs (DDP)": {"color": "#e377c2", "ls": "--"}}
fig, axes = style.figure(2, width=4.6, height=3.4)
rows = []
for ax, (title, runs) in zip(axes[0], pairs.items()):
    for run, label in zip(runs, looks):
        hist = [json.loads(line) for line in (here / f"{run}_history.jsonl").read_text().splitlines()]
        train = [(h["step"], h["train/loss"]) for h in hist if "train/loss" in h]
        ax.plot(*zip(*train), label=label, lw=1.6, **looks[label])
        speed = [h["perf/tokens_per_sec"] for h in hist if "perf/tokens_per_sec" in h][2:]  # skip compile
        m = json.loads((here / f"{run}_metrics.json").read_text())
        # CUDA max allocated on rank 0, as logged during training: these runs' metrics.json holds the CPU's
        # RSS (the summary was taken after Lightning had moved the module to the CPU; fixed since).
        mem = max(h["perf/peak_mem_mb"] for h in hist if "perf/peak_mem_mb" in h)
        rows.append((title, label, m["val_loss"], statistics.median(speed), mem))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (nats/token)")
    style.format_axis(ax)
    style.finish(ax)
style.title(fig, "halo_small, Shakespeare bytes, seq 512, 2x NVIDIA H100 80GB HBM3")
style.legend(fig, axes.flat)
style.save(fig, here / "loss_curves.png")
print("| run | GPUs | final val loss | median tokens/s (after warm-up) | peak MB per GPU |")
print("|---|---|---|---|---|")
for title, label, loss, speed, mem in rows:
    print(f"| {title} | {label} | {loss:.4f} | {speed:,.0f} | {mem:.0f} |")
