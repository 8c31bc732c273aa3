"""The GPU grid of issue 14: many small needle / MQAR training jobs at once on one GPU, inside a wall-clock
budget, packed into one tarball that `report` turns into experiments/{needle,mqar}/gpu/.

    python experiments/retrieval/grid.py run OUT --grid part1 --budget 480     # on the GPU machine
    python experiments/retrieval/grid.py report part1.tar.gz part2.tar.gz      # here, afterwards
    python experiments/retrieval/grid.py check part1 part2                     # compose every job (CPU)
    python experiments/retrieval/grid.py run OUT --grid smoke --budget 600     # CPU smoke test

Why a launcher: these models (0.5-1.2M parameters) are bound by kernel launches, so one job uses a small
part of an H200; `--jobs` processes share it. Each job is a one-job Hydra multirun (`-m`, its own
hydra.sweep.dir), so halo_lab.report reads it as it reads any sweep (.hydra/, metrics.json,
history.jsonl, multirun.yaml). Every job gets Lightning's `trainer.max_time` = what is left of the budget
after a per-job reserve (start-up, final validation), capped by its slot, so a slower GPU ends jobs
early with metrics.json rather than not at all; a job that would get less than its minimum is not
started (reported as dropped), so jobs are listed in priority order. A failed job does not stop the
others. After every job the launcher rewrites OUT/<grid>.tar.gz (small files only: no checkpoints) and
OUT/<grid>_summary.{json,txt}, so whatever ends the call, what finished comes back (the device tool
returns at most 8 files from OUT).

A job cut short by the budget can go on in the next call: `--ckpt-out` leaves each such job's last.ckpt as
OUT/<job>.ckpt (a 2-layer needle model: ~6 MB; mind the 8 files a call returns); copy those into
`.gridckpt/` here (git-ignored), name it in the device call's `carry`, and run the same grid with
`--resume-from .gridckpt`: each job with a checkpoint there resumes from it (ckpt_path), its max_time
raised by the training time the checkpoint already counts (Lightning's Timer restores it). The resumed
run's history.jsonl holds only its own steps; the first part's is in the first call's tarball.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("needle", "mqar")
# Not what a job computes, only how it runs: the same for every job of a grid.
COMMON = [
    # no logger: history.jsonl and metrics.json hold every metric (the report reads them); the CSV logger's
    # copy of the history made each job folder a third larger, and the committed folders are what a device
    # call must carry (64 MiB)
    "logger=none",
    "callbacks=minimal",
    "callbacks.last_checkpoint=null",
    "~hydra.callbacks.report",
    "export_hub=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
# One loader process per job: the needle at 1024 tokens takes ~10-20 ms of Python per batch of 64.
GPU = ["device=h200", "device.compile=false", "data.num_workers=1"]
CPU = ["device=cpu", "trainer.accelerator=cpu"]
# Files of a finished job that the report needs (plus the job's log), relative to its sweep directory.
KEEP = (
    "multirun.yaml",
    "run/.hydra/config.yaml",
    "run/.hydra/hydra.yaml",
    "run/.hydra/overrides.yaml",
    "run/metrics.json",
    "run/history.jsonl",
    "run/recall.txt",  # --recall: the selection's recall by distance (experiments/selection/recall.py)
)
RECALL = REPO / "experiments" / "selection" / "recall.py"


@dataclass
class Job:
    experiment: str  # conf/experiment/<name>.yaml; its task_name is the report section
    variant: str  # dense | halo | local_only
    layers: int
    conv: int
    seed: int = 0
    ablation: str | None = None  # with variant=halo: no_random | no_dilated | no_globals
    slot: int = 600  # the most training seconds (trainer.max_time) it gets
    min_slot: int = 60  # fewer left than this: not started
    extra: list[str] = field(default_factory=list)  # the same for every job of its section
    tag: str = ""  # told apart from a job of the same variant and section (an ablation by override)

    @property
    def family(self) -> str:
        return self.experiment.split("_")[0]

    @property
    def task(self) -> str:
        """The report section: ``task_name`` when the job sets it, else its experiment's."""
        return next((o.split("=", 1)[1] for o in self.extra if o.startswith("task_name=")), self.experiment)

    def name(self, grid: str) -> str:
        v = (self.ablation or self.variant) + (f"-{self.tag}" if self.tag else "")
        return f"{grid}-{self.task}-{v}-L{self.layers}-c{self.conv}-s{self.seed}"

    def overrides(self) -> list[str]:
        out = [f"+experiment={self.experiment}", f"variant={self.variant}"]
        out += [f"ablation={self.ablation}"] if self.ablation else []
        out += [f"model.num_layers={self.layers}", f"model.short_conv={self.conv}", f"seed={self.seed}"]
        return out + list(self.extra)


# The 512-token points are the CPU configs (halo_tiny, window 16); the needle there gets 64 sequences a
# step and 1500 steps (needle_cpu's 16 x 1000 was never measured; one answer per sequence).
N512 = ["data.batch_size=64", "trainer.max_steps=1500"]


def _depth(exp: str, variants: tuple[str, ...], layers: tuple[int, ...], **kw) -> list[Job]:
    return [Job(exp, v, n, 3, **kw) for n in layers for v in variants]


def _pair(make) -> list[Job]:
    """The same jobs for the needle and for MQAR, interleaved (needle first)."""
    out = []
    for a, b in zip(make("needle"), make("mqar")):
        out += [a, b]
    return out


def grids() -> dict[str, tuple[list[Job], int]]:
    """Grid name -> (jobs in priority order, default concurrency)."""
    part1 = _pair(lambda t: _depth(f"{t}_1024", ("dense", "halo", "local_only"), (2,)))
    part1 += _pair(lambda t: _depth(f"{t}_1024", ("halo", "dense", "local_only"), (4,)))
    part1 += _pair(lambda t: _depth(f"{t}_1024", ("halo",), (6,)))

    part2 = _pair(lambda t: _depth(f"{t}_4096", ("dense", "halo"), (2,), slot=300, min_slot=150))
    part2 += _pair(lambda t: _depth(f"{t}_4096", ("halo",), (4, 6), slot=300, min_slot=150))
    part2 += _pair(
        lambda t: [
            Job(f"{t}_1024", "dense", 2, 0, slot=200, min_slot=90),
            Job(f"{t}_1024", "halo", 4, 0, slot=200, min_slot=90),
        ]
    )
    part2 += _pair(
        lambda t: [
            Job(f"{t}_1024", "halo", 4, 3, ablation=a, slot=200, min_slot=90)
            for a in ("no_random", "no_dilated")
        ]
    )

    def cpu_points(t: str) -> list[Job]:
        extra = N512 if t == "needle" else []
        jobs = [
            Job(f"{t}_cpu", v, 2, 3, seed=s, slot=120, min_slot=40, extra=extra)
            for s in (0, 1)
            for v in ("dense", "halo", "local_only")
        ]
        return jobs + [
            Job(f"{t}_cpu", v, 2, 0, slot=120, min_slot=40, extra=extra) for v in ("dense", "halo")
        ]

    part2 += _pair(cpu_points)
    part2 += _pair(
        lambda t: [
            Job(f"{t}_1024", "halo", 4, 3, ablation="no_globals", slot=200, min_slot=90),
            Job(f"{t}_1024", "dense", 6, 3, slot=200, min_slot=90),
            Job(f"{t}_1024", "local_only", 6, 3, slot=200, min_slot=90),
        ]
    )

    # CPU smoke test: the real experiment configs, shrunk; 3 jobs, seconds each.
    tiny = [
        "model.hidden_size=32",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_steps=1",
    ]
    short = ["data.seq_len=128", "data.batch_size=4", "data.num_val=6"]
    needle = tiny + short + ["data.distances=[16,40,100]"]
    smoke = [Job("needle_1024", v, 1, 3, slot=60, min_slot=10, extra=needle) for v in ("dense", "halo")]
    mqar = tiny + short + ["data.distance_buckets=[2,16,64]"]
    smoke.append(Job("mqar_cpu", "local_only", 1, 0, slot=60, min_slot=10, extra=mqar))
    # --recall on the CPU (tests/test_retrieval_grid.py): the selection's recall of trained jobs, and dense's
    smoke_recall = [Job("needle_1024", v, 1, 3, slot=60, min_slot=10, extra=needle) for v in ("dense", "halo_select")]
    smoke_recall.append(Job("mqar_cpu", "halo_select", 1, 0, slot=60, min_slot=10, extra=mqar))
    # The last device call of 2026-12-02 (issue 14): which HALO-S edges matter at 1024 tokens, 2 layers
    # (the depth at which dense passed both tasks), and a second seed of the three variants.
    edges = [Job("needle_1024", "halo", 2, 3, ablation=a) for a in ("no_dilated", "no_random", "no_globals")]
    edges += [Job("needle_1024", v, 2, 3, seed=1) for v in ("dense", "halo", "local_only")]
    edges += [Job("mqar_1024", "dense", 2, 3, seed=1), Job("mqar_1024", "halo", 2, 3, ablation="no_dilated")]
    # What the 2026-12-02 calls left (experiments/retrieval/README.md), at 8 jobs a call: the needle's
    # deeper points with twice the steps (dense and HALO-S sat on the plateau at 4-6 layers after
    # 1570-2068 steps), MQAR's 6-layer dense twin, and the 512-token points with both seeds ...
    long = ["trainer.max_steps=6000"]
    part3 = [Job("needle_1024", v, 4, 3, extra=long) for v in ("dense", "halo", "local_only")]
    part3 += [Job("needle_1024", v, 6, 3, extra=long) for v in ("dense", "halo")]
    part3 += [Job("mqar_1024", "dense", 6, 3)]
    part3 += _pair(
        lambda t: [
            Job(f"{t}_cpu", v, 2, 3, seed=s, slot=150, min_slot=60, extra=N512 if t == "needle" else [])
            for s, vs in ((0, ("halo", "local_only")), (1, ("dense", "halo", "local_only")))
            for v in vs
        ]
    )
    # ... and 4096 tokens with twice the steps (dense left no plateau in 1390-1548 steps).
    part4 = _pair(lambda t: _depth(f"{t}_4096", ("dense", "halo"), (2,), extra=long))
    # On the CPU (--cpu, 2 jobs at a time): depth where dense passes the gate. 128 tokens, window 8
    # (dilated 8/16/32/64), 4 records (so every distance >= 16: none inside the window), distances off the
    # dilated ones: 20 and 28 within a 4-layer window chain (4 x (7 + 2 conv) = 36; 20 just beyond the
    # 2-layer one, 18), 48 and 100 beyond it. At 128 tokens a 4-layer dense left the plateau at ~600-750
    # steps where 2 layers took ~250 (the 2026-12-02 CPU probe, experiments/needle/README.md).
    small = ["data.seq_len=128", "data.distances=[20,28,48,100]", "data.num_val=240", "data.num_train=64000"]
    small += ["model.local_window=8", "trainer.max_steps=1000", "trainer.val_check_interval=250"]
    cpu_depth = [
        Job("needle_1024", v, n, 3, slot=2400, min_slot=300, extra=small)
        for n in (4, 2)
        for v in ("dense", "halo", "local_only")
    ]
    # Content-selected blocks on the CPU (--cpu, 2 jobs at a time, --keep experiments/selection/runs):
    # the needle at 256 tokens and MQAR's (128, 8) and (256, 16) slices, window 16, 2 layers, conv 3; the
    # five variants, seed 0 of every task first, then seed 1, the ablation without summary keys, and the
    # 512-token needle point of each variant (one seed).
    variants = ("dense", "halo_select", "halo", "local_only", "local_select")
    mqar128 = [
        "data.seq_len=128",
        "data.num_pairs=8",
        "data.distance_buckets=[2,16,48,96]",
        "task_name=mqar_128",
    ]
    mqar256 = ["task_name=mqar_256"]
    tasks = (("needle_256", []), ("mqar_select", mqar128), ("mqar_select", mqar256))
    slot = {"needle_256": 7200, "mqar_select": 5400}
    select_cpu = [
        Job(exp, v, 2, 3, seed=s, slot=slot[exp], min_slot=600, extra=extra)
        for s in (0, 1)
        for exp, extra in tasks
        for v in variants
    ]
    # ablations, one seed: without the summaries as keys (every task), mean pooling and the groups that
    # bound the scored set (the needle)
    no_summaries = ["model.select_summary_keys=false"]
    select_cpu += [
        Job(exp, "halo_select", 2, 3, slot=slot[exp], min_slot=600, extra=extra + no_summaries, tag="nosum")
        for exp, extra in tasks
    ]
    for tag, extra in (("mean", ["model.select_pooling=mean"]), ("groups", ["model.select_group_size=4"])):
        select_cpu.append(
            Job("needle_256", "halo_select", 2, 3, slot=7200, min_slot=600, extra=extra, tag=tag)
        )
    n512 = ["data.seq_len=512", "data.distances=[16,40,136,264,400,496]", "task_name=needle_512"]
    select_cpu += [Job("needle_256", v, 2, 3, slot=14400, min_slot=1200, extra=n512) for v in variants]
    # Language modelling with selection (--cpu): the Shakespeare baseline at CPU scale (baseline_cpu:
    # halo_tiny, 500 steps of 4096 tokens) at 256 and 1024 tokens, HALO-S against HALO-S + selection.
    select_lm = [
        Job(
            "baseline_cpu",
            v,
            2,
            0,
            seed=s,
            slot=3600,
            min_slot=300,
            extra=[f"data.seq_len={n}", f"task_name=lm_{n}"],
        )
        for s in (0, 1)
        for n in (256, 1024)
        for v in ("halo", "halo_select")
    ]
    # which part of the selection costs LM loss: without the summaries as keys, and local_select (no
    # random edges), one seed
    select_lm += [
        Job("baseline_cpu", v, 2, 0, slot=3600, min_slot=300, tag=tag,
            extra=[f"data.seq_len={n}", f"task_name=lm_{n}"] + more)
        for n in (256, 1024)
        for v, tag, more in (("halo_select", "nosum", ["model.select_summary_keys=false"]), ("local_select", "", []))
    ]  # fmt: skip
    # The selection rows again after the choice moved to fp32 summaries (select_cpu ran on the H200 with bf16
    # summaries): 2 seeds of the needle and both MQAR slices, the 512-token needle, which peaked at step 500
    # and then fell, with the default and half the learning rate, and the 1024-token LM point (--jobs 10)
    select_fix = [
        Job(exp, "halo_select", 2, 3, seed=s, slot=slot[exp], min_slot=600, extra=extra)
        for s in (0, 1)
        for exp, extra in tasks
    ]
    select_fix += [
        Job("needle_256", "halo_select", 2, 3, slot=14400, min_slot=1200, extra=n512 + more, tag=tag)
        for tag, more in (("", []), ("lr", ["optimizer.lr=1.5e-3"]))
    ]
    select_fix.append(
        Job("needle_256", "dense", 2, 3, slot=7200, min_slot=600)
    )  # the gate's seed 0 on the GPU
    select_fix += [
        Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300,
            extra=["data.seq_len=1024", "task_name=lm_1024"])
        for s in (0, 1)
    ]  # fmt: skip
    # The summary keys' learned logit bias, starting near off (model.select_summary_bias=-4): LM at 1024
    # (2 seeds) and 256 tokens, the needle (2 seeds) and MQAR (256, 16) (--jobs 7)
    bias = ["model.select_summary_bias=-4.0"]
    select_bias = [
        Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300,
            extra=[f"data.seq_len={n}", f"task_name=lm_{n}"] + bias)
        for n, seeds in ((1024, (0, 1)), (256, (0,)))
        for s in seeds
    ]  # fmt: skip
    select_bias += [
        Job(exp, "halo_select", 2, 3, seed=s, slot=slot[exp], min_slot=600, extra=extra + bias)
        for exp, extra, seeds in (("needle_256", [], (0, 1)), ("mqar_select", mqar256, (0, 1)))
        for s in seeds
    ]
    # On the CPU (--cpu --jobs 2), next to runs/'s fp32 LM rows at 1024 tokens (seed 0): the bias at -4 and
    # at -8 (the LM gap that -4 left on the H200)
    select_bias_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag=tag,
            extra=["data.seq_len=1024", "task_name=lm_1024", f"model.select_summary_bias={b}"])
        for tag, b in (("", -4.0), ("bias8", -8.0))
    ]  # fmt: skip
    # seed 1 of HALO-S and of the bias at -4, for two CPU seeds (one override set per section: the bias is
    # inert without selection, HaloConfig.select_summary_bias)
    select_bias_cpu += [
        Job("baseline_cpu", v, 2, 0, seed=1, slot=3600, min_slot=300,
            extra=["data.seq_len=1024", "task_name=lm_1024", "model.select_summary_bias=-4.0"])
        for v in ("halo", "halo_select")
    ]  # fmt: skip
    # The learning-rate probe of MQAR (128, 8) on the CPU (--cpu --jobs 2): the variant (bias -4) at the
    # default 3e-3 and at half, seed 0 (the H200 curves peaked at step 250 and fell)
    select_lr_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag=tag, extra=mqar128 + more)
        for tag, more in (("", []), ("lr", ["optimizer.lr=1.5e-3"]))
    ]
    # MQAR at 4096 on the H100 (thirteenth session): at lr 3e-4 dense passes and the selection learns slowly,
    # at 1e-3 the reverse. The same two rates for both rows on MQAR (128, 8) (--cpu --jobs 2), seed 0
    select_lr2_cpu = [
        Job("mqar_select", v, 2, 3, slot=5400, min_slot=600, tag=f"lr{tag}", extra=mqar128 + [f"optimizer.lr={tag}"])
        for tag in ("3e-4", "1e-3")
        for v in ("dense", "halo_select")
    ]  # fmt: skip
    # ... and the selection at lr 3e-4 without the two learned biases' starts (summary -4, chosen tokens -2),
    # and without the summaries as keys: which part slows it at the low rate (--cpu --jobs 2)
    lr3e4_128 = mqar128 + ["optimizer.lr=3e-4"]
    nobias = ["model.select_summary_bias=null", "model.select_token_bias=null"]
    select_lr3_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="lr3e-4-nobias", extra=lr3e4_128 + nobias),
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="lr3e-4-nosum", extra=lr3e4_128 + no_summaries),
    ]  # fmt: skip
    # ... the biases' starts are what slow it (select_lr3_cpu): the same two rates with the biases trained at
    # 10x the rate (module.select_bias_lr_scale=10; --cpu --jobs 2)
    select_lr4_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag=f"lr{tag}-bias10x", extra=mqar128 + [f"optimizer.lr={tag}", "module.select_bias_lr_scale=10"])
        for tag in ("3e-4", "1e-3")
    ]  # fmt: skip
    # The variants after the bound score and the window-overlapping candidate (2026-12-05): the recall grid's
    # selection rows (needle, both MQAR slices) and the LM point at 1024 tokens, 2 seeds (--jobs 8); on the
    # CPU (--cpu --jobs 2) the same jobs, seed 0 first
    select_bound = [
        Job(exp, "halo_select", 2, 3, seed=s, slot=slot[exp], min_slot=600, extra=extra)
        for s in (0, 1)
        for exp, extra in tasks
    ]
    select_bound += [
        Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300,
            extra=["data.seq_len=1024", "task_name=lm_1024"])
        for s in (0, 1)
    ]  # fmt: skip
    # The GPU grid of content-selected blocks (issue 31), 8 jobs a call (--jobs 8 gave every job its full
    # schedule on an H200): the selection rows at 1024 tokens with 2 seeds, then 4096 tokens with the
    # 6000-step schedule (dense left its plateau only after ~1500 steps there) for dense and HALO-S +
    # selection, then plain HALO-S and local-only at 4096, and the points the 2026-12-02 calls cut short
    # (the needle at 4 and 6 layers with 6000 steps, the conv-off controls, second seeds).
    sel = ("halo_select", "local_select")
    select_gpu1 = _pair(lambda t: [Job(f"{t}_1024", v, 2, 3, seed=s) for s in (0, 1) for v in sel])
    select_gpu2 = _pair(
        lambda t: [
            Job(f"{t}_4096", v, 2, 3, seed=s, extra=long) for s in (0, 1) for v in ("dense", "halo_select")
        ]
    )
    # select_gpu2 with 8 jobs cut every job (2026-12-05, H100: dense 4127-4689 and selection 2557-2985 of
    # 6000 steps in 484 s): the same jobs 4 to a call, each variant's pair of seeds and tasks in its own call
    select_gpu2_dense = [j for j in select_gpu2 if j.variant == "dense"]
    select_gpu2_select = [j for j in select_gpu2 if j.variant == "halo_select"]
    select_gpu3 = _pair(
        lambda t: [
            Job(f"{t}_4096", v, 2, 3, seed=s, extra=long) for s in (0, 1) for v in ("halo", "local_only")
        ]
    )
    select_gpu4 = [
        Job("needle_1024", v, n, 3, seed=s, extra=long) for n in (4, 6) for s in (0, 1) for v in ("dense",)
    ]
    select_gpu5 = [Job(f"{t}_1024", "dense", 2, 0, seed=s) for t in ("needle", "mqar") for s in (0, 1)]
    # The 4096-token needle's recipe (issue 31): with 16 sequences a step (needle_4096) a step scores 16
    # answers where needle_1024 scores 64, and in 6000 steps dense stayed at 0.22 and even the in-window
    # bucket of HALO-S at 0.25 (select_gpu2_dense, select_gpu3). needle_1024's 64 answers a step at 4096
    # tokens (4x the tokens of a needle_4096 step): dense and selection, 2 seeds each. 3500 steps since
    # needle_scale_cpu (2026-12-05; 3000 before): steps to the gate grow 1.4-1.9x a doubling of the length
    # at 64 a step (256: 350, 512: 500, 1024: 750-1000), > 1.9x at 16 (256: 1350, 512: > 2500), so 4096
    # at 64 is expected near 1500-3600 steps and at 16 far beyond 6000. Ran 2026-12-05 on an H100 (experiments/selection
    # README, first section): dense 2 jobs in 266 s, selection 2 jobs in 466 s (--jobs 2 each); the _s0 / _s1
    # grids give the selection one seed per call on a slower card
    b64 = ["data.batch_size=64", "trainer.max_steps=3500"]
    select_gpu6_dense = [
        Job("needle_4096", "dense", 2, 3, seed=s, slot=900, tag="b64", extra=b64) for s in (0, 1)
    ]
    select_gpu6_select = [
        Job("needle_4096", "halo_select", 2, 3, seed=s, slot=900, tag="b64", extra=b64) for s in (0, 1)
    ]
    # The dense gate at 4096 failed on seed 0 (0.249 at 3500 steps, 2026-12-05): a third seed on the same
    # recipe, and seed 0 to 6000 steps, to tell a late plateau from a seed that never leaves it (--jobs 2)
    select_gpu8_dense = [
        Job("needle_4096", "dense", 2, 3, seed=2, slot=900, tag="b64", extra=b64),
        Job("needle_4096", "dense", 2, 3, seed=0, slot=900, tag="b64long",
            extra=["data.batch_size=64", "trainer.max_steps=6000"]),
    ]  # fmt: skip
    # Ran 2026-12-05 (H100, 375 s): seed 2 0.240 at 3500 steps, seed 0 0.257 at 6000: dense passes on 1 of 3
    # Zoology's way with a failing gate (issue 31): sweep dense's learning rate, on the seed that failed
    # (seed 0; the recipe's lr is 1e-3), 3500 steps at 64 a step (--jobs 2, about 280 s on an H100)
    select_gpu9_dense_lr = [
        Job("needle_4096", "dense", 2, 3, seed=0, slot=900, tag=f"b64lr{tag}", extra=b64 + [f"optimizer.lr={lr}"])
        for tag, lr in (("3e-4", 3.0e-4), ("3e-3", 3.0e-3))
    ]
    # The same sweep for MQAR at 4096 (select_gpu2's recipe: 16 a step, 6000 steps; dense seed 0 ended at
    # 0.238 there, seed 1 at 1.000): --jobs 2, about 330 s on an H100
    select_gpu9_mqar_lr = [
        Job("mqar_4096", "dense", 2, 3, seed=0, slot=900, tag=f"lr{tag}", extra=long + [f"optimizer.lr={lr}"])
        for tag, lr in (("3e-4", 3.0e-4), ("3e-3", 3.0e-3))
    ]
    # Ran 2026-12-06 (H100, 271 s): lr 3e-4 passes on seed 0 (0.999), 3e-3 does not (0.117): the needle
    # recipe at 4096 takes lr 3e-4. Dense's other seeds at 3e-4, for the gate's rate of success over
    # three seeds (--jobs 2, about 280 s on an H100)
    lr3e4 = b64 + ["optimizer.lr=3e-4"]
    select_gpu10_dense = [
        Job("needle_4096", "dense", 2, 3, seed=s, slot=900, tag="b64lr3e-4", extra=lr3e4) for s in (1, 2)
    ]
    # The selection at the same learning rate, so that both rows of the comparison share it (--jobs 2,
    # about 470 s on an H100)
    select_gpu10_select = [
        Job("needle_4096", "halo_select", 2, 3, seed=s, slot=900, tag="b64lr3e-4", extra=lr3e4) for s in (0, 1)
    ]
    # select_gpu10_select ran out of the call's budget at 2,906 and 3,146 steps (two selection jobs share the
    # card at ~2.3M tokens/s each): one seed a call, alone on the card, to its full 3,500 steps (--jobs 1)
    select_gpu11_select = select_gpu10_select
    # Dense seed 1 at lr 3e-4 ended at 0.871 and rising at 3,500 steps: the same seed to 6,000 (--jobs 1)
    select_gpu11_dense_6k = [
        Job("needle_4096", "dense", 2, 3, seed=1, slot=900, tag="b64lr3e-4-6k", extra=lr3e4 + ["trainer.max_steps=6000"])
    ]  # fmt: skip
    # Ran 2026-12-06 (H100): dense seed 1 reaches 1.000 on the 6,000-step schedule; the selection alone ends
    # at 0.973 / 0.917 on the 3,500-step one, seed 1 still rising. Both rows on the 6,000-step schedule:
    # each selection seed alone (--jobs 1, about 420 s), dense seeds 0 and 2 together (--jobs 2, about 450 s)
    lr3e4_6k = lr3e4 + ["trainer.max_steps=6000"]
    select_gpu12_select_6k = [
        Job("needle_4096", "halo_select", 2, 3, seed=s, slot=900, tag="b64lr3e-4-6k", extra=lr3e4_6k) for s in (0, 1)
    ]
    select_gpu12_dense_6k = [
        Job("needle_4096", "dense", 2, 3, seed=s, slot=900, tag="b64lr3e-4-6k", extra=lr3e4_6k) for s in (0, 2)
    ]
    # Plain HALO-S and local-only at lr 3e-4 on the 3,500-step schedule, the rows beside dense and the
    # selection that the issue asks for (select_gpu7 ran them at 1e-3: 397 s on an H100, --jobs 4)
    select_gpu12_fixed = [
        Job("needle_4096", v, 2, 3, seed=s, slot=900, tag="b64lr3e-4", extra=lr3e4)
        for v in ("halo", "local_only")
        for s in (0, 1)
    ]
    # Ran 2026-12-06 (H100, twelfth session): plain HALO-S 0.270 / 0.233 and local-only 0.291 / 0.279 at
    # lr 3e-4 (chance beyond the window); MQAR at 4096 dense seed 0 1.000 at lr 3e-4 (select_gpu9_mqar_lr);
    # 4 layers 1.000 on 2 seeds, 6 layers 0.21 / 0.24 at ~5,200 steps of 6,000 and the conv-off controls
    # at chance to their full schedules, all at lr 1e-3 (select_gpu4, select_gpu5). Next, at lr 3e-4:
    # MQAR at 4096 with dense's second seed and the selection's two seeds (--jobs 3, about 450 s) ...
    mqar3e4 = long + ["optimizer.lr=3e-4"]
    select_gpu13_mqar = [Job("mqar_4096", "dense", 2, 3, seed=1, slot=900, tag="lr3e-4", extra=mqar3e4)] + [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr3e-4", extra=mqar3e4) for s in (0, 1)
    ]
    # ... the 6-layer needle at 1024, the depth that stayed at chance at lr 1e-3 (--jobs 2, about 400 s) ...
    select_gpu13_l6 = [
        Job("needle_1024", "dense", 6, 3, seed=s, tag="lr3e-4", extra=long + ["optimizer.lr=3e-4"])
        for s in (0, 1)
    ]
    # ... and the conv-off controls to 6000 steps at lr 3e-4 (--jobs 4, about 300 s)
    select_gpu13_conv0 = [
        Job(f"{t}_1024", "dense", 2, 0, seed=s, tag="lr3e-4", extra=long + ["optimizer.lr=3e-4"])
        for t in ("needle", "mqar")
        for s in (0, 1)
    ]
    # ... and at 4 layers, where dense passes at lr 1e-3 on 2 seeds (select_gpu4): the selection (--jobs 2),
    # then plain HALO-S and local-only (--jobs 4), 2 seeds each, the same recipe
    select_gpu13_l4_select = [Job("needle_1024", "halo_select", 4, 3, seed=s, extra=long) for s in (0, 1)]
    select_gpu13_l4_fixed = [
        Job("needle_1024", v, 4, 3, seed=s, extra=long) for v in ("halo", "local_only") for s in (0, 1)
    ]
    # Ran 2026-12-06 (H100, thirteenth session), all at lr 3e-4: MQAR 4096 dense seed 1 0.975, the selection
    # 0.428 / 0.864 (seed 1 still rising); the 6-layer needle at 1024 1.000 on 2 seeds; conv off to ~5,000
    # steps: needle at chance, MQAR 1.000 / 0.782. Next: MQAR 4096 at lr 5e-4, between the rates where dense
    # (3e-4) and the selection (1e-3) pass, both rows and 2 seeds each (--jobs 4, about 450 s) ...
    mqar5e4 = long + ["optimizer.lr=5e-4"]
    select_gpu14_mqar = [
        Job("mqar_4096", v, 2, 3, seed=s, slot=900, tag="lr5e-4", extra=mqar5e4)
        for v in ("dense", "halo_select")
        for s in (0, 1)
    ]
    # On the CPU the chosen tokens' bias start (-2) is what slows the selection at lr 3e-4 (select_lr3_cpu),
    # and training the two biases at 10x the rate closes most of it (select_lr4_cpu: MQAR (128, 8) 0.998 at
    # step 750 against 0.586). First: the selection at 3e-4 with that, where dense passes on 2 seeds
    # (--jobs 2, about 330 s) ...
    bias10 = ["module.select_bias_lr_scale=10"]
    select_gpu14_mqar10 = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr3e-4-bias10x", extra=mqar3e4 + bias10)
        for s in (0, 1)
    ]  # fmt: skip
    # At 5e-4 (select_gpu14_mqar, ran): dense 1.000 on 2 seeds, the selection 0.125 / 1.000. Its seed 0 with
    # the biases at 10x, seed 1 to check that 10x keeps it, and the default rate's seed 2 (--jobs 3). Ran
    # 2026-12-06 (H100, fourteenth session, cut at 5,771-5,808 steps): 0.682 / 1.000 with 10x, seed 2 0.248;
    # select_gpu14_mqar10 (3e-4, 10x): 0.583 / 0.724
    select_gpu15_mqar = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr5e-4-bias10x", extra=mqar5e4 + bias10)
        for s in (0, 1)
    ] + [Job("mqar_4096", "halo_select", 2, 3, seed=2, slot=900, tag="lr5e-4", extra=mqar5e4)]  # fmt: skip
    # The routing loss (module.select_routing_loss=1, select_route_cpu on the CPU) on the three seeds of the
    # selection at 5e-4, where seeds 0 and 2 failed (0.125 / 0.248) and dense passes on 2 (--jobs 3, ~330 s)
    select_gpu16_route = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr5e-4-route1", extra=mqar5e4 + ["module.select_routing_loss=1.0"])
        for s in (0, 1, 2)
    ]  # fmt: skip
    # ... and through the choice's own router (model.select_router_rank=16: the KL trains the router alone,
    # attention's q and keys learn from the LM loss only; select_router_cpu first) (--jobs 3, ~330 s)
    select_gpu17_router = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr5e-4-router16", extra=mqar5e4 + ["model.select_router_rank=16", "module.select_routing_loss=1.0"])
        for s in (0, 1, 2)
    ]  # fmt: skip
    # ... and with HALO-S's dense warm-up (module.select_dense_warmup=2000: dense attention for the first
    # 2,000 steps, DSA's recipe), alone and with the router learning from it, at 7e-4, where both selection
    # seeds stalled at chance and dense passed (--jobs 4, about 450 s)
    warm = ["optimizer.lr=7e-4", "module.select_dense_warmup=2000"]
    select_gpu17_warmup = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag=f"lr7e-4-warm2000{t}", extra=long + warm + e)
        for t, e in (("", []), ("-router16", ["model.select_router_rank=16", "module.select_routing_loss=1.0"]))
        for s in (0, 1)
    ]  # fmt: skip
    # The dense phase itself: in none of select_gpu17_warmup's 4 runs did HALO-S's network learn MQAR 4096 in
    # its 2,000 dense steps (train loss 2.2-2.8 at step 2,000), where the dense network's 2 runs did by
    # 1,000-1,500. HALO-S under dense attention for all 6,000 steps, with its 2 global tokens and without
    # (ablation=no_globals: model.num_globals=0), seeds 0 and 1: read train/loss against select_gpu16_mqar7e4's dense rows
    # (--jobs 4, about 350 s: dense attention throughout)
    select_gpu18_dense_phase = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag=f"lr7e-4-warm6000{t}", extra=long + ["optimizer.lr=7e-4", "module.select_dense_warmup=6000"] + e)
        for t, e in (("", []), ("-g0", ["ablation=no_globals"]))
        for s in (0, 1)
    ]  # fmt: skip
    # ... and the selection without the global tokens at 7e-4, where it stalled on 2 of 2 seeds with them
    # (--jobs 2, about 420 s)
    select_gpu18_g0 = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr7e-4-g0", extra=long + ["optimizer.lr=7e-4", "ablation=no_globals"])
        for s in (0, 1)
    ]  # fmt: skip
    # ... and, after select_gpu18_dense_phase (without the global tokens HALO-S's network under dense
    # attention learned the task on 2 of 2 seeds, faster than dense, and read through the graph at the end
    # scored 0.98), the selection without them after 2,000 dense steps: does it keep the lookup it inherits?
    # (--jobs 2, about 420 s; select_gpu19_g0_both runs it beside select_gpu18_g0, --jobs 4)
    select_gpu19_g0_warmup = [
        Job("mqar_4096", "halo_select", 2, 3, seed=s, slot=900, tag="lr7e-4-warm2000-g0", extra=long + warm + ["ablation=no_globals"])
        for s in (0, 1)
    ]  # fmt: skip
    # select_gpu19_g0_both (H100, twentieth session): after 2,000 dense steps the selection without the
    # global tokens passed on 2 of 2 seeds (0.9995 / 0.9998), alone on 1 of 2. A third seed of each and of
    # dense at 7e-4, the shared rate (--jobs 3, about 420 s)
    select_gpu20_seed2 = [
        Job("mqar_4096", "halo_select", 2, 3, seed=2, slot=900, tag="lr7e-4-warm2000-g0", extra=long + warm + ["ablation=no_globals"]),
        Job("mqar_4096", "halo_select", 2, 3, seed=2, slot=900, tag="lr7e-4-g0", extra=long + ["optimizer.lr=7e-4", "ablation=no_globals"]),
        Job("mqar_4096", "dense", 2, 3, seed=2, slot=900, tag="lr7e-4", extra=long + ["optimizer.lr=7e-4"]),
    ]  # fmt: skip
    # Both rows at 7e-4, between 5e-4 (dense 2 of 2, the selection 1 of 3) and 1e-3 (dense 1 of 2, the
    # selection 2 of 2): a shared rate where both may pass on 2 seeds (--jobs 4, about 400 s)
    select_gpu16_mqar7e4 = [
        Job("mqar_4096", v, 2, 3, seed=s, slot=900, tag="lr7e-4", extra=long + ["optimizer.lr=7e-4"])
        for v in ("dense", "halo_select")
        for s in (0, 1)
    ]
    # ... and the LM question it reopens (the -2 start was for the LM): select_tokbias_lm_gpu's recipe,
    # HALO-S and the selection with the biases at 10x, 3 seeds each, one call (--jobs 6, about 300 s) ...
    lm14 = ["data.seq_len=1024", "task_name=lm_gpu_1024"]  # select_lm_gpu's `lm`, defined further down
    select_gpu14_lm = []
    for s in (0, 1, 2):
        select_gpu14_lm += [
            Job("baseline", "halo", 4, 0, seed=s, slot=900, min_slot=300, extra=lm14),
            Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=300, tag="bias10x", extra=lm14 + bias10),
        ]  # fmt: skip
    # ... and the rows beside dense's passing 6-layer needle (lr 3e-4): the selection (--jobs 2), plain
    # HALO-S (--jobs 2) and local-only (--jobs 2); 6-layer checkpoints (17 MB) do not come back from a call
    l6 = long + ["optimizer.lr=3e-4"]
    select_gpu14_l6 = [
        Job("needle_1024", v, 6, 3, seed=s, tag="lr3e-4", extra=l6)
        for v in ("halo_select", "halo", "local_only")
        for s in (0, 1)
    ]
    # ... and the selection's needle at 4096 read on 400 haystacks a distance instead of 100 (the bar is
    # 0.99 at every distance; 98 of 100 is inside its noise): one seed a call, alone (--jobs 1, about 420 s)
    select_gpu14_val = [
        Job("needle_4096", "halo_select", 2, 3, seed=s, slot=900, tag="b64lr3e-4-6k-val4x", extra=lr3e4_6k + ["data.num_val=2800"])
        for s in (0, 1)
    ]  # fmt: skip
    # The 400-haystack read changed one way a grid, alone on the card (--jobs 1, with --recall): a wider
    # choice on seed 0 (8 blocks: 239 keys a query at 4096 against 177; the 4 best groups: 202), and the
    # reading's share of the misses on seed 1 (twenty-fifth session: 10 of its 14 had the needle's block
    # chosen): without the chosen tokens' bias, and a 9,000-step schedule (about 700 s: two calls,
    # --ckpt-out then --resume-from). name: (seed, tag, override)
    val_changes = {
        "blocks8": (0, "b64lr3e-4-6k-val4x-blocks8", "model.select_blocks=8"),
        "groups4": (0, "b64lr3e-4-6k-val4x-groups4", "model.select_groups=4"),
        "tokbias0": (1, "b64lr3e-4-6k-val4x-tokbias0", "model.select_token_bias=null"),
        "tokbias0_s0": (0, "b64lr3e-4-6k-val4x-tokbias0", "model.select_token_bias=null"),
        "9k": (1, "b64lr3e-4-9k-val4x", "trainer.max_steps=9000"),
    }
    select_val_changed = {
        name: [replace(select_gpu14_val[seed], tag=tag, extra=select_gpu14_val[seed].extra + [o])]
        for name, (seed, tag, o) in val_changes.items()
    }
    # The same recipe for plain HALO-S and local-only, the rows beside dense and selection (--jobs 4)
    select_gpu7 = [
        Job("needle_4096", v, 2, 3, seed=s, slot=900, tag="b64", extra=b64)
        for v in ("halo", "local_only")
        for s in (0, 1)
    ]
    # Issue 27's LM question at the GPU scale (experiments/baseline: halo_small, 4 layers, 1024 tokens, 16,384
    # tokens a step, 2000 steps; HALO-S's spread there was 0.004 over 2 seeds): HALO-S against HALO-S +
    # selection, 3 seeds each, and the 256-token needle's seed 0 that the CPU grid did not finish (--jobs 7)
    lm = ["data.seq_len=1024", "task_name=lm_gpu_1024"]
    select_lm_gpu = [
        Job("baseline", v, 4, 0, seed=s, slot=900, min_slot=300, extra=lm) for s in (0, 1, 2) for v in ("halo", "halo_select")
    ]  # fmt: skip
    select_lm_gpu.append(Job("needle_256", "halo_select", 2, 3, slot=900, min_slot=300))
    # select_lm_gpu left +0.019 on all 3 seeds (H200, 2026-12-05). With the bound score the summaries no
    # longer rank the blocks, so as keys they only add blurred averages to every softmax: the same LM rows
    # without them (HALO-S seed 0 again as the call's anchor), and the recall tasks without them (--jobs 8)
    nosum = ["model.select_summary_keys=false"]
    select_nosum_gpu = [
        Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=120, tag="nosum", extra=lm + nosum)
        for s in (0, 1, 2)
    ]
    select_nosum_gpu.append(Job("baseline", "halo", 4, 0, slot=900, min_slot=120, extra=lm))
    select_nosum_gpu += [
        Job(exp, "halo_select", 2, 3, slot=900, min_slot=120, tag="nosum", extra=extra + nosum)
        for exp, extra in tasks + (("mqar_1024", []),)
    ]
    # The chosen tokens' learned logit bias (model.select_token_bias), first probed on the masked backend
    # (commit 9da120d, branch token-bias-probe, with "+model.select_token_bias"; the same numbers as the
    # option now): 1000 steps to fit that session's last device minutes; HALO-S and the selection without
    # the bias on the same backend and schedule as anchors (--jobs 6)
    short = lm + ["trainer.max_steps=1000", "trainer.val_check_interval=500"]
    masked = ["model.attention_backend=masked"]
    select_tokbias_gpu = []
    for s in (0, 1):
        select_tokbias_gpu += [
            Job("baseline", "halo", 4, 0, seed=s, slot=900, min_slot=60, extra=short),
            Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=60, tag="masked", extra=short + masked),
            Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=60, tag="tokbias4",
                extra=short + masked + ["model.select_token_bias=-4.0"]),
        ]  # fmt: skip
    # The same bias's recall and CPU-scale LM on the CPU (--cpu --jobs 2), next to runs/bound's rows without it
    tb = ["model.select_token_bias=-4.0"]
    lm_cpu = ["data.seq_len=1024", "task_name=lm_1024"]
    select_tokbias_cpu = []
    for s in (0, 1):
        select_tokbias_cpu += [
            Job("mqar_select", "halo_select", 2, 3, seed=s, slot=5400, min_slot=600, tag="tokbias4", extra=mqar128 + tb),
            Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300, tag="tokbias4", extra=lm_cpu + tb),
        ]  # fmt: skip
    select_tokbias_cpu += [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="tokbias4", extra=mqar256 + tb),
        Job("needle_256", "halo_select", 2, 3, seed=1, slot=7200, min_slot=600, tag="tokbias4", extra=tb),
    ]
    # A milder start (-2) on the CPU (--cpu --jobs 2): at -4 MQAR (256, 16) was still at 0.10 after 750 steps
    # (0.999 by step 250 without the bias); does -2 keep the LM gain and learn MQAR sooner
    tb2 = ["model.select_token_bias=-2.0"]
    select_tokbias2_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="tokbias2", extra=mqar256 + tb2),
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag="tokbias2", extra=lm_cpu + tb2),
    ]
    # What dropping the global tokens costs the CPU-scale LM (1024 tokens, 500 steps): the variant (token bias
    # from -2, the variant's default) with ablation=no_globals, seeds 0 and 1, against the tokbias2 /
    # tokbias3 rows (1.747 / 1.813) (--cpu --jobs 2; about 1,700 s)
    select_g0_lm_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300, tag="g0", extra=lm_cpu + ["ablation=no_globals"])
        for s in (0, 1)
    ]  # fmt: skip
    # The CPU-scale LM at 1024 with the biases at 10x the rate (select_lr4_cpu), both seeds of the -2 rows
    # (runs/tokbias2, runs/tokbias3: 1.747 / 1.813) (--cpu --jobs 2)
    select_lr5_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, seed=s, slot=3600, min_slot=300, tag="tokbias2-bias10x", extra=lm_cpu + tb2 + ["module.select_bias_lr_scale=10"])
        for s in (0, 1)
    ]  # fmt: skip
    # The routing loss (module.select_routing_loss, DSA-style: the ranking scores learn toward attention's
    # mass over the candidates' tokens): MQAR (128, 8) at lr 3e-4 (select_lr2_cpu's slow row: 0.226 / 0.586 /
    # 0.978 at steps 500 / 750 / 1500) and the CPU-scale LM at 1024 (select_lr5_cpu's recipe) (--cpu --jobs 2)
    route = ["module.select_routing_loss=1.0"]
    select_route_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="lr3e-4-route1", extra=lr3e4_128 + route),
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag="tokbias2-route1", extra=lm_cpu + tb2 + route),
    ]  # fmt: skip
    # ... and at 10x the weight (the KL is 0.00-0.03 through the first 600 steps at weight 1) (--cpu --jobs 1)
    select_route2_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="lr3e-4-route10", extra=lr3e4_128 + ["module.select_routing_loss=10.0"]),
    ]  # fmt: skip
    # ... and MQAR (128, 8) at lr 3e-4 on seed 1, with and without the routing loss (weight 1) (--cpu --jobs 2)
    select_route3_cpu = [
        Job("mqar_select", "halo_select", 2, 3, seed=1, slot=5400, min_slot=600, tag=f"lr3e-4{t}", extra=lr3e4_128 + e)
        for t, e in (("", []), ("-route1", ["module.select_routing_loss=1.0"]))
    ]  # fmt: skip
    # The routing loss through the choice's own router (model.select_router_rank=16: q + (q down) up ranks,
    # the KL trains down and up alone, attention's q and keys learn from the LM loss only): select_route_cpu's
    # and select_route3_cpu's rows, MQAR (128, 8) seeds 0 and 1 and the CPU-scale LM (--cpu --jobs 2)
    router = ["model.select_router_rank=16", "module.select_routing_loss=1.0"]
    select_router_cpu = [
        *(Job("mqar_select", "halo_select", 2, 3, seed=s, slot=5400, min_slot=600, tag="lr3e-4-router16", extra=lr3e4_128 + router) for s in (0, 1)),
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag="tokbias2-router16", extra=lm_cpu + tb2 + router),
    ]  # fmt: skip
    # HALO-S's dense warm-up on the CPU (module.select_dense_warmup=500 of MQAR (128, 8)'s 1,500 steps at lr
    # 3e-4, seeds 0 and 1; select_route_cpu's recipe) (--cpu --jobs 2)
    select_warmup_cpu = [
        Job("mqar_select", "halo_select", 2, 3, seed=s, slot=5400, min_slot=600, tag="lr3e-4-warm500", extra=lr3e4_128 + ["module.select_dense_warmup=500"])
        for s in (0, 1)
    ]  # fmt: skip
    # ... its LM cost (the CPU-scale LM at 1024, seed 0, 150 dense steps of 500; select_route_cpu's LM row)
    # and a shorter warm-up on MQAR (128, 8) (200 steps, seed 0) (--cpu --jobs 2)
    select_warmup2_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag="tokbias2-warm150", extra=lm_cpu + tb2 + ["module.select_dense_warmup=150"]),
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag="lr3e-4-warm200", extra=lr3e4_128 + ["module.select_dense_warmup=200"]),
    ]  # fmt: skip
    # ... a warm-up of 10% of the CPU LM's steps (50 of 500, seed 0) and 100 steps on MQAR (128, 8) (seeds 0
    # and 1): how short a warm-up still starts the lookup, and what the LM pays for it (--cpu --jobs 2)
    select_warmup3_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, slot=3600, min_slot=300, tag="tokbias2-warm50", extra=lm_cpu + tb2 + ["module.select_dense_warmup=50"]),
        *(Job("mqar_select", "halo_select", 2, 3, seed=s, slot=5400, min_slot=600, tag="lr3e-4-warm100", extra=lr3e4_128 + ["module.select_dense_warmup=100"]) for s in (0, 1)),
    ]  # fmt: skip
    # ... their second seeds: the LM's 10% warm-up on seed 1 (select_tokbias3_cpu's LM row: 1.813 without)
    # and 200 steps on MQAR (128, 8) seed 1 (--cpu --jobs 2)
    select_warmup4_cpu = [
        Job("baseline_cpu", "halo_select", 2, 0, seed=1, slot=3600, min_slot=300, tag="tokbias2-warm50", extra=lm_cpu + tb2 + ["module.select_dense_warmup=50"]),
        Job("mqar_select", "halo_select", 2, 3, seed=1, slot=5400, min_slot=600, tag="lr3e-4-warm200", extra=lr3e4_128 + ["module.select_dense_warmup=200"]),
    ]  # fmt: skip
    # ... on a second recipe: MQAR (256, 16) at lr 3e-4, the variant alone and after 300 dense steps, seed 0
    # (--cpu --jobs 2, about 2,400 s)
    select_warmup5_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=5400, min_slot=600, tag=f"lr3e-4{t}", extra=mqar256 + ["optimizer.lr=3e-4"] + e)
        for t, e in (("", []), ("-warm300", ["module.select_dense_warmup=300"]))
    ]  # fmt: skip
    # ... its dense gate (dense at the same rate, seed 0) and the warm-up's second seed (--cpu --jobs 2)
    select_warmup6_cpu = [
        Job("mqar_select", "dense", 2, 3, slot=5400, min_slot=600, tag="lr3e-4", extra=mqar256 + ["optimizer.lr=3e-4"]),
        replace(select_warmup5_cpu[1], seed=1),
    ]  # fmt: skip
    # ... and the variant without it on seed 1 (--cpu --jobs 1)
    select_warmup7_cpu = [replace(select_warmup5_cpu[0], seed=1)]
    # ... and a warm-up that ends before dense leaves chance (150 steps; dense 0.068 at 250, 1.000 at 500),
    # seeds 0 and 1: a head start or a fix? (--cpu --jobs 2)
    select_warmup8_cpu = [
        Job("mqar_select", "halo_select", 2, 3, seed=s, slot=5400, min_slot=600, tag="lr3e-4-warm150", extra=mqar256 + ["optimizer.lr=3e-4", "module.select_dense_warmup=150"])
        for s in (0, 1)
    ]  # fmt: skip
    # ... and without HALO-S's 2 global tokens (ablation=no_globals: model.num_globals=0; the committed runs
    # spelled the override out), no warm-up, seeds 0 and 1: are the global tokens part of the stall? (--cpu --jobs 2; select_gpu18_dense_phase asks it at MQAR 4096)
    select_g0_cpu = [
        replace(j, tag="lr3e-4-g0", extra=j.extra + ["ablation=no_globals"])
        for j in (select_warmup5_cpu[0], select_warmup7_cpu[0])
    ]
    # ... a third seed for both (seed 2, with and without the global tokens; --cpu --jobs 2): at step 750
    # seeds 0 / 1 gave 0.549 / 0.998 without them, 0.179 / 0.689 with them
    select_g0_seed2_cpu = [replace(select_warmup5_cpu[0], seed=2), replace(select_g0_cpu[0], seed=2)]
    # The -2 start's second points on the CPU (--cpu --jobs 2), after the GPU-scale LM matched HALO-S with it
    # (select_tokbias_lm_gpu): MQAR (128, 8) seed 0, MQAR (256, 16) seed 1, the CPU-scale LM seed 1
    select_tokbias3_cpu = [
        Job("mqar_select", "halo_select", 2, 3, slot=3000, min_slot=600, tag="tokbias2", extra=mqar128 + tb2),
        Job("mqar_select", "halo_select", 2, 3, seed=1, slot=3000, min_slot=600, tag="tokbias2", extra=mqar256 + tb2),
        Job("baseline_cpu", "halo_select", 2, 0, seed=1, slot=3000, min_slot=300, tag="tokbias2", extra=lm_cpu + tb2),
    ]  # fmt: skip
    # How the dense needle's plateau (0.25: one of the 4 records' values, any) lasts with the length and the
    # batch, on the CPU (--cpu --jobs 2; issue 31: dense never left it at 4096 x 16 in 6000 steps, where it
    # left it by ~450 steps at 512 x 64 and ~800 at 1024 x 64): 256 tokens at 16 and 64 sequences a step,
    # 512 at 16, validation every 50 steps; halo_tiny, 2 layers, conv 3, seed 0
    scale = ["trainer.val_check_interval=50"]
    d256 = ["data.seq_len=256", "data.distances=[16,40,100,160,240]", "data.num_val=140"]
    needle_scale_cpu = [
        Job("needle_cpu", "dense", 2, 3, slot=3000, min_slot=300, tag="n256b16",
            extra=scale + d256 + ["data.batch_size=16", "data.num_train=40000", "trainer.max_steps=2000"]),
        Job("needle_cpu", "dense", 2, 3, slot=3000, min_slot=300, tag="n512b16",
            extra=scale + ["data.batch_size=16", "data.num_train=48000", "trainer.max_steps=2500"]),
        Job("needle_cpu", "dense", 2, 3, slot=3000, min_slot=300, tag="n256b64",
            extra=scale + d256 + ["data.batch_size=64", "data.num_train=48000", "trainer.max_steps=700"]),
    ]  # fmt: skip
    # Dense's seed spread where the needle is cheap (issue 31: at 4096 dense passed on 1 seed of 3): the
    # n256b64 point above with seeds 1 and 2 (--cpu --jobs 1)
    needle_seeds_cpu = [
        Job("needle_cpu", "dense", 2, 3, seed=s, slot=1500, min_slot=300, tag="n256b64",
            extra=scale + d256 + ["data.batch_size=64", "data.num_train=48000", "trainer.max_steps=700"])
        for s in (1, 2)
    ]  # fmt: skip
    # What dropping the global tokens costs the selection's needle (twentieth session: they slow MQAR's
    # lookup at 4096 and cost the LM nothing; on plain HALO-S the 1024 needle lost accuracy without them,
    # one seed): the n256b64 point, where dense passes on 3 of 3 seeds, seeds 0 and 1 (--cpu --jobs 2)
    select_g0_needle_cpu = [
        Job("needle_cpu", "halo_select", 2, 3, seed=s, slot=3000, min_slot=300, tag=f"n256b64{t}",
            extra=scale + d256 + ["data.batch_size=64", "data.num_train=48000", "trainer.max_steps=700"] + e)
        for s in (0, 1)
        for t, e in (("", []), ("-g0", ["ablation=no_globals"]))
    ]  # fmt: skip
    # The 4-layer stall of select_gpu13_l4_select (seed 0 at chance at 1024) on the CPU: the same n256b64
    # point with 4 layers, seeds 0 and 1 (the 2-layer selection: 0.736 / 1.000 with the global tokens)
    select_l4_needle_cpu = [
        Job("needle_cpu", "halo_select", 4, 3, seed=s, slot=4200, min_slot=300, tag="n256b64",
            extra=scale + d256 + ["data.batch_size=64", "data.num_train=48000", "trainer.max_steps=700"])
        for s in (0, 1)
    ]  # fmt: skip
    # Ran 2026-12-07 (CPU, twenty-first session): 0.271 / 0.300, near chance on both seeds. Its gate, dense at
    # 4 layers on the same point (--cpu --jobs 2, about 3,000 s)
    select_l4_dense_cpu = [replace(j, variant="dense", slot=4200) for j in select_l4_needle_cpu]
    # Ran 2026-12-07 (CPU, twenty-second session, 1,838 s): 0.986 / 1.000, so the 4-layer stall there is the
    # selection's. On the card at 4 layers plain HALO-S stays at chance even inside its window, where
    # local-only (no global tokens) learns it: the selection without its global tokens at the same point,
    # seeds 0 and 1 (--cpu --jobs 2, about 3,800 s)
    select_l4_g0_needle_cpu = [
        replace(j, tag="n256b64-g0", extra=j.extra + ["ablation=no_globals"]) for j in select_l4_needle_cpu
    ]
    # Ran 2026-12-07 (CPU, twenty-second session, 3,973 s): 0.214 / 0.479. On the card the 4-layer selection
    # passed on 2 of 2 at lr 3e-4 where it failed on 1 of 2 at 1e-3 (select_gpu22_l4_lr): the CPU point at
    # 3e-4, seeds 0 and 1 (--cpu --jobs 2, about 3,900 s)
    # Ran 2026-12-07 (CPU, twenty-third session, 4,020 s): 0.286 / 0.371, the stall stays at this point
    select_l4_lr_needle_cpu = [
        replace(j, tag="n256b64-lr3e-4", extra=j.extra + ["optimizer.lr=3e-4"]) for j in select_l4_needle_cpu
    ]
    # Dense's learning rate where its plateau is long on the CPU (512 tokens at 16 a step: not left in 2500
    # steps at lr 1e-3, needle_scale_cpu): 3e-4 and 3e-3, seed 0, the GPU sweep's rates (--cpu --jobs 2)
    # Ran 2026-12-05 (CPU, 1,979 s): 3e-4 0.955 (gate passed), 3e-3 0.228; 1e-3 was 0.371
    needle_lr_cpu = [
        Job("needle_cpu", "dense", 2, 3, slot=2400, min_slot=300, tag=f"n512b16lr{tag}",
            extra=scale + ["data.batch_size=16", "data.num_train=48000", "trainer.max_steps=2500",
                           f"optimizer.lr={lr}"])
        for tag, lr in (("3e-3", 3.0e-3), ("3e-4", 3.0e-4))
    ]  # fmt: skip
    # The next device call (issue 27's LM goal): the GPU-scale LM to its full 2000 steps with the bias from -2
    # (on the CPU -4 left MQAR (256, 16) at 0.705 after 1500 steps, -2 learned it by step 500), on the fused
    # kernels, HALO-S in the same call, 3 seeds each, and the needle and MQAR at 1024 with it (--jobs 8)
    select_tokbias_lm_gpu = []
    for s in (0, 1, 2):
        select_tokbias_lm_gpu += [
            Job("baseline", "halo", 4, 0, seed=s, slot=900, min_slot=300, extra=lm),
            Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=300, tag="tokbias2", extra=lm + tb2),
        ]
    select_tokbias_lm_gpu += [
        Job(f"{t}_1024", "halo_select", 2, 3, slot=900, min_slot=300, tag="tokbias2", extra=tb2)
        for t in ("needle", "mqar")
    ]
    # What HALO-S's dense warm-up costs the GPU-scale LM (select_tokbias_lm_gpu's selection rows, 3 seeds, with
    # 100 dense steps of 2,000 = 5%; seed 0 also with 200) (--jobs 4, about 250 s)
    select_gpu17_lm_warmup = [
        Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=300, tag=f"tokbias2-warm{w}", extra=lm + tb2 + [f"module.select_dense_warmup={w}"])
        for s, w in ((0, 100), (1, 100), (2, 100), (0, 200))
    ]  # fmt: skip
    # What dropping the global tokens costs the GPU-scale LM (select_tokbias_lm_gpu's recipe; the CPU LM saw
    # no cost on 2 seeds): the selection with and without them, 3 seeds each, one call (--jobs 6, ~300 s)
    select_gpu20_lm_g0 = [
        Job("baseline", "halo_select", 4, 0, seed=s, slot=900, min_slot=300, tag=f"tokbias2{t}", extra=lm + tb2 + e)
        for s in (0, 1, 2)
        for t, e in (("", []), ("-g0", ["ablation=no_globals"]))
    ]  # fmt: skip
    # select_gpu13_l4_select (H100, twenty-first session): at 4 layers, lr 1e-3, the selection passed on seed 1
    # and stayed at chance on seed 0 for 6,000 steps. MQAR 4096's recipe (no global tokens, 2,000 dense steps
    # first: 3 of 4 seeds there) on the same two seeds (--jobs 2, about 420 s)
    select_gpu21_l4_recipe = [
        Job("needle_1024", "halo_select", 4, 3, seed=s, tag="warm2000-g0", extra=long + ["module.select_dense_warmup=2000", "ablation=no_globals"])
        for s in (0, 1)
    ]  # fmt: skip
    # Ran 2026-12-07 (H100, twenty-second session): seed 1 1.000, seed 0 0.374 (its dense phase stayed at chance
    # for its 2,000 steps); plain HALO-S 0.237 / 0.244 and local-only 0.474 / 0.469 (select_gpu13_l4_fixed).
    # At 6 layers the selection passed at lr 3e-4 on 2 of 2: the same rate at 4 layers, the selection and
    # dense's gate, seeds 0 and 1 (--jobs 4, about 450 s)
    # Ran 2026-12-07 (H100, twenty-third session): the selection 1.000 / 1.000 (budget-stopped at 3,487 / 3,400
    # steps, >= 0.99 from step 1,750), dense 1.000 / 1.000; plain HALO-S at the same rate 0.759 / 0.744
    select_gpu22_l4_lr = [
        Job("needle_1024", v, 4, 3, seed=s, tag="lr3e-4", extra=l6)
        for v in ("halo_select", "dense")
        for s in (0, 1)
    ]
    l4_select = [j for j in select_gpu22_l4_lr if j.variant == "halo_select"]  # the fixed rows' seeds
    # Issue 31's "every point with 2 seeds": the second seed of the 1024-token points that have one (the
    # needle's edge ablations of `edges`, 3,000 steps; MQAR's 4- and 6-layer points of part1 / part3 and its
    # no_dilated ablation, 2,000 steps), each at its first seed's recipe (--jobs 4 and --jobs 5, about 300 s)
    seed1_needle = [Job("needle_1024", "halo", 2, 3, seed=1, ablation=a) for a in ("no_dilated", "no_random", "no_globals")]
    seed1_needle += [Job("mqar_1024", "halo", 2, 3, seed=1, ablation="no_dilated")]
    seed1_mqar = [Job("mqar_1024", v, 4, 3, seed=1) for v in ("dense", "halo", "local_only")]
    seed1_mqar += [Job("mqar_1024", v, 6, 3, seed=1) for v in ("dense", "halo")]
    # One device call for both, when the device time allows only one: part1's jobs first, 16 at once.
    return {
        "select_gpu1": (select_gpu1, 8),
        "select_gpu2": (select_gpu2, 8),
        "select_gpu2_dense": (select_gpu2_dense, 4),
        "select_gpu2_select": (select_gpu2_select, 4),
        "select_gpu3": (select_gpu3, 8),
        "select_gpu4": (select_gpu4, 8),
        "select_gpu5": (select_gpu5, 8),
        # select_gpu4 a depth per call: four 6000-step jobs need about 570 s of an H100, beyond a call's 540
        "select_gpu4_l4": ([j for j in select_gpu4 if j.layers == 4], 2),
        "select_gpu4_l6": ([j for j in select_gpu4 if j.layers == 6], 2),
        "needle_scale_cpu": (needle_scale_cpu, 2),
        "needle_seeds_cpu": (needle_seeds_cpu, 1),
        "needle_lr_cpu": (needle_lr_cpu, 2),
        "select_gpu6_dense": (select_gpu6_dense, 2),
        "select_gpu6_select": (select_gpu6_select, 2),
        "select_gpu7": (select_gpu7, 4),
        "select_gpu8_dense": (select_gpu8_dense, 2),
        "select_gpu9_dense_lr": (select_gpu9_dense_lr, 2),
        "select_gpu10_dense": (select_gpu10_dense, 2),
        "select_gpu10_select": (select_gpu10_select, 2),
        "select_gpu9_mqar_lr": (select_gpu9_mqar_lr, 2),
        "select_gpu11_select_s0": (select_gpu11_select[:1], 1),
        "select_gpu11_select_s1": (select_gpu11_select[1:], 1),
        "select_gpu11_dense_6k": (select_gpu11_dense_6k, 1),
        "select_gpu12_select_6k_s0": (select_gpu12_select_6k[:1], 1),
        "select_gpu12_select_6k_s1": (select_gpu12_select_6k[1:], 1),
        "select_gpu12_dense_6k": (select_gpu12_dense_6k, 2),
        "select_gpu12_fixed": (select_gpu12_fixed, 4),
        "select_gpu13_mqar": (select_gpu13_mqar, 3),
        "select_gpu13_l6": (select_gpu13_l6, 2),
        "select_gpu13_conv0": (select_gpu13_conv0, 4),
        "select_gpu13_l4_select": (select_gpu13_l4_select, 2),
        "select_gpu13_l4_fixed": (select_gpu13_l4_fixed, 4),
        "select_gpu14_mqar": (select_gpu14_mqar, 4),
        "select_gpu14_mqar10": (select_gpu14_mqar10, 2),
        "select_gpu15_mqar": (select_gpu15_mqar, 3),
        "select_gpu16_route": (select_gpu16_route, 3),
        "select_gpu16_mqar7e4": (select_gpu16_mqar7e4, 4),
        "select_gpu17_router": (select_gpu17_router, 3),
        "select_gpu17_warmup": (select_gpu17_warmup, 4),
        # its two warm-up rows without the router, alone (a call with less device time; --jobs 2)
        "select_gpu17_warmup_only": (select_gpu17_warmup[:2], 2),
        "select_gpu17_lm_warmup": (select_gpu17_lm_warmup, 4),
        "select_gpu18_dense_phase": (select_gpu18_dense_phase, 4),
        "select_gpu18_g0": (select_gpu18_g0, 2),
        "select_gpu19_g0_warmup": (select_gpu19_g0_warmup, 2),
        "select_gpu19_g0_both": (select_gpu18_g0 + select_gpu19_g0_warmup, 4),
        "select_gpu20_seed2": (select_gpu20_seed2, 3),
        # the same three rows on seed 3 (select_gpu20_seed2: all three at chance on seed 2, dense included)
        "select_gpu20_seed3": ([replace(j, seed=3) for j in select_gpu20_seed2], 3),
        "select_gpu20_lm_g0": (select_gpu20_lm_g0, 6),
        "select_g0_needle_cpu": (select_g0_needle_cpu, 2),
        "select_l4_needle_cpu": (select_l4_needle_cpu, 2),
        "select_l4_dense_cpu": (select_l4_dense_cpu, 2),
        "select_l4_g0_needle_cpu": (select_l4_g0_needle_cpu, 2),
        "select_l4_lr_needle_cpu": (select_l4_lr_needle_cpu, 2),
        # its seed-1 pair alone (a 2-core machine gives each pair about 2,000 s)
        "select_g0_needle_cpu_s1": ([j for j in select_g0_needle_cpu if j.seed == 1], 2),
        "select_gpu14_lm": (select_gpu14_lm, 6),
        "select_gpu14_l6_select": (select_gpu14_l6[:2], 2),
        "select_gpu14_l6_halo": (select_gpu14_l6[2:4], 2),
        "select_gpu14_l6_local": (select_gpu14_l6[4:], 2),
        # plain HALO-S and local-only together (4 jobs share the card; cheaper a step than the selection)
        "select_gpu14_l6_fixed": (select_gpu14_l6[2:], 4),
        "select_gpu21_l4_recipe": (select_gpu21_l4_recipe, 2),
        "select_gpu22_l4_lr": (select_gpu22_l4_lr, 4),
        # plain HALO-S at the same rate and depth, 2 seeds: with it the at-chance row has its rate control
        "select_gpu22_l4_lr_halo": ([replace(j, variant="halo") for j in l4_select], 2),
        # ran 2026-12-07 (H100): plain HALO-S 0.759 / 0.744; local-only at the same rate and depth (ran
        # 2026-12-07, H100: 0.459 / 0.456) completes the 4-layer rows (--jobs 2, about 240 s)
        "select_gpu23_l4_lr_local": ([replace(j, variant="local_only") for j in l4_select], 2),
        "gpu21_seed1_needle": (seed1_needle, 4),
        "gpu21_seed1_mqar": (seed1_mqar, 5),
        # both in one call where the device time allows only one (9 small jobs at once, as select_gpu1's 8)
        "gpu21_seed1": (seed1_needle + seed1_mqar, 9),
        # seed 0 ran 2026-12-07 (H100): 0.995, distance 1000 at 0.9875 (395 of 400), the other six >= 0.99
        "select_gpu14_val_s0": (select_gpu14_val[:1], 1),
        "select_gpu14_val_s1": (select_gpu14_val[1:], 1),
        # dense read on the same 400 haystacks a distance, seed 0 alone (about 300 s): is distance 1000
        # harder for dense too, or the selection's alone?
        "select_gpu24_dense_val": ([replace(j, variant="dense") for j in select_gpu14_val[:1]], 1),
        "select_gpu25_blocks8_val": (select_val_changed["blocks8"], 1),
        "select_gpu25_groups4_val": (select_val_changed["groups4"], 1),
        "select_gpu26_tokbias0_val": (select_val_changed["tokbias0"], 1),
        "select_gpu26_9k_val": (select_val_changed["9k"], 1),
        # tokbias0 read 0.999 on seed 1 (twenty-sixth session): the same change on seed 0
        "select_gpu26_tokbias0_s0_val": (select_val_changed["tokbias0_s0"], 1),
        "select_gpu6_select_s0": (select_gpu6_select[:1], 1),
        "select_gpu6_select_s1": (select_gpu6_select[1:], 1),
        "select_lm_gpu": (select_lm_gpu, 7),
        "select_tokbias_gpu": (select_tokbias_gpu, 6),
        "select_tokbias_cpu": (select_tokbias_cpu, 2),
        "select_tokbias2_cpu": (select_tokbias2_cpu, 2),
        "select_tokbias3_cpu": (select_tokbias3_cpu, 2),
        "select_tokbias_lm_gpu": (select_tokbias_lm_gpu, 8),
        "select_nosum_gpu": (select_nosum_gpu, 8),
        "select_lm": (select_lm, 1),
        "select_fix": (select_fix, 11),
        "select_bias": (select_bias, 7),
        "select_bound": (select_bound, 8),
        "select_bias_cpu": (select_bias_cpu, 2),
        "select_lr_cpu": (select_lr_cpu, 2),
        "select_lr2_cpu": (select_lr2_cpu, 2),
        "select_lr3_cpu": (select_lr3_cpu, 2),
        "select_lr4_cpu": (select_lr4_cpu, 2),
        "select_lr5_cpu": (select_lr5_cpu, 2),
        "select_route_cpu": (select_route_cpu, 2),
        "select_route2_cpu": (select_route2_cpu, 1),
        "select_route3_cpu": (select_route3_cpu, 2),
        "select_router_cpu": (select_router_cpu, 2),
        "select_warmup_cpu": (select_warmup_cpu, 2),
        "select_warmup2_cpu": (select_warmup2_cpu, 2),
        "select_warmup3_cpu": (select_warmup3_cpu, 2),
        "select_warmup4_cpu": (select_warmup4_cpu, 2),
        "select_warmup5_cpu": (select_warmup5_cpu, 2),
        "select_warmup6_cpu": (select_warmup6_cpu, 2),
        "select_warmup7_cpu": (select_warmup7_cpu, 1),
        "select_warmup8_cpu": (select_warmup8_cpu, 2),
        "select_g0_cpu": (select_g0_cpu, 2),
        "select_g0_seed2_cpu": (select_g0_seed2_cpu, 2),
        "select_g0_lm_cpu": (select_g0_lm_cpu, 2),
        "select_cpu": (select_cpu, 2),
        "part1": (part1, 14),
        "part2": (part2, 14),
        "all": (part1 + part2, 16),
        "edges": (edges, 8),
        "part3": (part3, 8),
        "part4": (part4, 4),
        "smoke": (smoke, 2),
        "smoke_recall": (smoke_recall, 2),
        "cpu_depth": (cpu_depth, 2),
    }


# ---------------------------------------------------------------------------------------------- running
def _hms(seconds: float) -> str:
    s = max(int(seconds), 1)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Record:
    name: str
    family: str
    task: str
    overrides: list[str]
    status: str = "pending"  # ok | failed (rc N) | killed (budget) | dropped (budget) | pending | running
    goal_steps: int | None = None  # the job's own trainer.max_steps (a run that stops short was cut)
    resumed_from: str | None = None  # the checkpoint this call's run started from (--resume-from)
    rc: int | None = None
    wall_s: float | None = None
    max_time_s: int | None = None
    metrics: dict = field(default_factory=dict)


def _metrics(job_dir: Path) -> dict:
    try:
        m = json.loads((job_dir / "run" / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = (
        "status",
        "steps",
        "val_loss",
        "val_acc",
        "val_acc_control",
        "val_acc_first_query",
        "val_acc_by_distance",
        "tokens_per_sec",
        "params",
        "attention_backend",
    )
    return {k: m[k] for k in keys if k in m}


def _pack(out: Path, work: Path, grid: str, records: list[Record], t0: float) -> None:
    """OUT/<grid>.tar.gz (the small files of every job directory and the logs' tails) and the summary,
    each written to a temporary name and renamed, so a kill mid-write leaves the previous one."""
    summary = {"grid": grid, "elapsed_s": round(time.time() - t0, 1), "jobs": [asdict(r) for r in records]}
    text = _table(records)
    tmp = out / f".{grid}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for r in records:
            job = work / r.family / r.name
            for rel in KEEP:
                if (job / rel).is_file():
                    tar.add(job / rel, arcname=f"{r.family}/{r.name}/{rel}")
            log = work / "logs" / f"{r.name}.log"
            if log.is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-300:]).encode()
                info = tarfile.TarInfo(f"logs/{r.name}.log")
                info.size = len(tail)
                tar.addfile(info, io.BytesIO(tail))
        blob = json.dumps(summary, indent=1).encode()
        info = tarfile.TarInfo(f"{grid}_summary.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    tmp.replace(out / f"{grid}.tar.gz")
    for suffix, body in (("json", json.dumps(summary, indent=1)), ("txt", text)):
        (out / f".{grid}_summary.{suffix}.tmp").write_text(body)
        (out / f".{grid}_summary.{suffix}.tmp").replace(out / f"{grid}_summary.{suffix}")


def _table(records: list[Record]) -> str:
    def f(v) -> str:
        return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [
        f"{'job':<44} {'status':<17} {'steps':>6} {'acc':>6} {'ctl/1st':>7} {'loss':>7} {'tok/s':>9} "
        f"{'max_t':>5} {'wall':>5}"
    ]
    for r in records:
        m = r.metrics
        second = m.get("val_acc_control", m.get("val_acc_first_query"))
        tps = m.get("tokens_per_sec")
        rows.append(
            f"{r.name:<44} {r.status:<17} {f(m.get('steps')):>6} {f(m.get('val_acc')):>6} "
            f"{f(second):>7} {f(m.get('val_loss')):>7} {f(int(tps) if tps else None):>9} "
            f"{f(r.max_time_s):>5} {f(round(r.wall_s) if r.wall_s else None):>5}"
        )
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    all_grids = grids()
    if args.grid not in all_grids:
        raise SystemExit(f"grid.py: unknown --grid {args.grid!r} (one of {', '.join(all_grids)})")
    jobs, default_jobs = all_grids[args.grid]
    concurrency = args.jobs or default_jobs
    device = CPU if args.grid.startswith("smoke") or args.cpu else GPU
    out = Path(args.out).resolve()
    work = Path(args.work or f"/tmp/halo_grid/{args.grid}").resolve()
    if work == out or out in work.parents:
        raise SystemExit(f"grid.py: --work {work} must lie outside OUT {out} (only the tarball goes to OUT)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    if args.skip_done:  # a grid spread over sessions: the jobs already kept are not run again
        done = Path(args.skip_done)
        jobs = [
            j for j in jobs if not (done / j.family / j.name(args.grid) / "run" / "metrics.json").is_file()
        ]
    records = [
        Record(j.name(args.grid), j.family, j.experiment, j.overrides() + args.extra, goal_steps=_steps(j))
        for j in jobs
    ]
    if args.dry_run:
        for j, r in zip(jobs, records):
            print(r.name, " ".join(r.overrides), f"slot={j.slot}s")
        return 0

    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
        HYDRA_FULL_ERROR="1",
    )
    t0 = time.time()
    end = t0 + args.budget - args.pack_reserve
    pending = list(zip(jobs, records))
    running: dict[str, tuple[subprocess.Popen, Record, float, float]] = {}
    stop = {"now": False}

    def _stop(signum, _frame) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(
        f"grid {args.grid}: {len(jobs)} jobs, {concurrency} at a time, budget {args.budget}s, work {work}",
        flush=True,
    )
    while (pending or running) and not stop["now"]:
        while pending and len(running) < concurrency:
            job, rec = pending.pop(0)
            left = end - time.time() - args.reserve
            limit = int(min(job.slot, left))
            min_slot = args.min_slot or job.min_slot
            if limit < min_slot:
                rec.status = "dropped (budget)"
                print(f"  drop {rec.name}: {max(limit, 0)}s left < its minimum {min_slot}s", flush=True)
                continue
            rec.max_time_s = limit
            resume, offset = _resume(rec, args.resume_from)
            cmd = [
                sys.executable,
                "-m",
                "halo_lab.train",
                "-m",
                *rec.overrides,
                *COMMON,
                *device,
                *resume,
                f"+trainer.max_time={_hms(limit + offset)}",  # Lightning's Timer counts the resumed part too
                f"hydra.sweep.dir={work / rec.family / rec.name}",
                "hydra.sweep.subdir=run",
            ]
            gpu_env = dict(env)
            if args.gpus > 1:
                gpu_env["CUDA_VISIBLE_DEVICES"] = str(len(running) % args.gpus)
            log = open(work / "logs" / f"{rec.name}.log", "w")  # noqa: SIM115 (closed with the process)
            log.write(" ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=gpu_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
            kill_at = min(t0 + args.budget - args.pack_reserve / 2, time.time() + limit + args.reserve + 30)
            running[rec.name] = (proc, rec, time.time(), kill_at)
            rec.status = "running"
            print(f"  start {rec.name} (max_time {limit}s)", flush=True)
        time.sleep(1.0)
        for name in list(running):
            proc, rec, started, kill_at = running[name]
            if proc.poll() is None and time.time() > kill_at:
                _kill(proc)
                rec.status = "killed (budget)"
            if proc.poll() is None:
                continue
            del running[name]
            left = t0 + args.budget - args.pack_reserve - time.time()  # what recall.py may take
            recall = min(args.recall, left)  # 0 without --recall: none
            _finish(work, rec, proc.returncode, time.time() - started, out if args.ckpt_out else None, recall)
            if args.keep:
                _keep(work, rec, Path(args.keep))
            print(
                f"  done  {rec.name}: {rec.status}, {round(rec.wall_s)}s, acc {rec.metrics.get('val_acc')}",
                flush=True,
            )
            _pack(out, work, args.grid, records, t0)
    for proc, rec, started, _ in running.values():  # stopped by a signal
        _kill(proc)
        rec.status = "killed (signal)"
        _finish(work, rec, proc.wait(), time.time() - started)
    for _, rec in pending:
        rec.status = "dropped (budget)" if not stop["now"] else "dropped (signal)"
    _pack(out, work, args.grid, records, t0)
    print(_table(records))
    ok = sum(r.status == "ok" for r in records)
    print(
        f"grid {args.grid}: {ok} of {len(records)} ok in {time.time() - t0:.0f}s; {out / (args.grid + '.tar.gz')}"
    )
    return 0 if ok else 1


def _keep(work: Path, rec: Record, keep: Path) -> None:
    """Copy a finished job's small files (KEEP) as plain files to keep/<family>/<job>/, to be committed:
    the raw results the report is rebuilt from."""
    for rel in KEEP:
        src = work / rec.family / rec.name / rel
        if src.is_file():
            dst = keep / rec.family / rec.name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the job's own process group (it was started in a new session), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _finish(
    work: Path, rec: Record, rc: int, wall: float, ckpt_out: Path | None = None, recall: float = 0
) -> None:
    """The job's record from its metrics.json; with ``ckpt_out`` (--ckpt-out) a run that stopped short of
    its schedule leaves its last.ckpt there as <job>.ckpt, for --resume-from in the next call; with
    ``recall`` seconds (--recall), recall.py reads the last.ckpt into run/recall.txt first."""
    job = work / rec.family / rec.name
    rec.rc, rec.wall_s, rec.metrics = rc, round(wall, 1), _metrics(job)
    if rec.status == "running":
        rec.status = "ok" if rc == 0 and rec.metrics.get("status") == "ok" else f"failed (rc {rc})"
    last = job / "run" / "checkpoints" / "last.ckpt"
    cut = rec.goal_steps is not None and int(rec.metrics.get("steps") or 0) < rec.goal_steps
    if ckpt_out is not None and cut and last.is_file():
        shutil.copy2(last, ckpt_out / f"{rec.name}.ckpt")
        mib = last.stat().st_size / 2**20
        print(f"  kept  {rec.name}.ckpt ({mib:.1f} MiB{'; over the 16 MiB a call returns' * (mib > 16)})")
    if recall >= 30 and last.is_file():
        _recall(job, last, recall)
    shutil.rmtree(job / "run" / "checkpoints", ignore_errors=True)  # MBs each; the report needs none


def _recall(job: Path, ckpt: Path, seconds: float) -> None:
    """recall.py on a finished job's checkpoint, at most ``seconds``: run/recall.txt (kept with the job)."""
    cmd = [sys.executable, str(RECALL), str(ckpt), str(job / "run" / ".hydra" / "config.yaml")]
    with open(job / "run" / "recall.txt", "w") as f:
        try:
            subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=seconds, check=False)
        except subprocess.TimeoutExpired:
            f.write(f"\nstopped after {seconds:.0f} s (--recall)\n")
    print(f"  recall {job.name}: {job / 'run' / 'recall.txt'}", flush=True)


def _steps(job: Job) -> int | None:
    """The job's own schedule (its last trainer.max_steps override; extras excluded)."""
    values = [o.split("=", 1)[1] for o in job.overrides() if o.startswith("trainer.max_steps=")]
    return int(values[-1]) if values else None


def _resume(rec: Record, resume_from: str | None) -> tuple[list[str], int]:
    """(overrides, seconds) to continue a cut job from <resume_from>/<job>.ckpt: its ckpt_path, and the
    training time already spent, which Lightning's Timer restores and counts against max_time."""
    ckpt = Path(resume_from) / f"{rec.name}.ckpt" if resume_from else None
    if ckpt is None or not ckpt.is_file():
        return [], 0
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    timer = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
    rec.resumed_from = str(ckpt)
    return [f"ckpt_path={ckpt.resolve()}"], int(timer.get("train", 0))


# ---------------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace) -> int:
    """Unpack the grids' tarballs into one root (the parts merge: job names carry the grid) and build
    experiments/<family>/gpu/ from each family's jobs."""
    from halo_lab.report.runs import ReportError
    from halo_lab.report.writer import build_report

    root = Path(args.root)
    for src in args.inputs:
        with tarfile.open(src) as tar:
            tar.extractall(root, filter="data")
        print(f"unpacked {src} into {root}")
    status = 0
    for fam in FAMILIES:
        if not (root / fam).is_dir():
            print(f"no {fam} jobs under {root}")
            continue
        out = REPO / "experiments" / fam / "gpu" if args.out is None else Path(args.out) / fam
        try:
            print(build_report(root / fam, out, wandb="off", plots=not args.no_plots))
        except ReportError as exc:
            print(f"grid.py report: {exc}", file=sys.stderr)
            status = 2
    return status


def check(args: argparse.Namespace) -> int:
    """Compose every job's config with Hydra and build its datasets (no training): catches a typo, a key
    that does not exist or a needle distance that does not fit before the GPU call."""
    import tempfile

    import torch

    from halo_lab.runner.build import build_datamodule, choose_batch_size
    from halo_lab.runner.config import compose_config, validate_config

    bad = 0
    tmp = Path(tempfile.mkdtemp(prefix="grid_check_"))
    for grid in args.grids:
        for job in grids()[grid][0]:
            # the GPU profile where there is a GPU; on a CPU its device check (no CUDA here) would refuse it
            device_over = GPU if torch.cuda.is_available() else CPU + ["data.num_workers=1"]
            over = job.overrides() + [o for o in COMMON if not o.startswith("~hydra")] + device_over
            try:
                cfg = compose_config(over, output_dir=tmp)
                device = validate_config(cfg)["device"]
                dm = build_datamodule(cfg, device, choose_batch_size(cfg, device)[0])
                dm.setup("fit")
                print(
                    f"ok   {job.name(grid)}: {cfg.task_name}, len {cfg.data.seq_len}, "
                    f"batch {cfg.data.batch_size}, steps {cfg.trainer.max_steps}, "
                    f"window {cfg.model.local_window}, dilated {list(cfg.model.dilated_offsets)}"
                )
            except Exception as exc:  # report every bad job, not only the first
                bad += 1
                print(f"FAIL {job.name(grid)}: {type(exc).__name__}: {exc}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grid.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a grid's jobs concurrently inside a wall-clock budget")
    r.add_argument("out", help="where <grid>.tar.gz and <grid>_summary.{json,txt} go ($OUT)")
    r.add_argument("--grid", required=True, help="part1 | part2 | all (both, one call) | smoke")
    r.add_argument("--budget", type=float, required=True, help="wall-clock seconds for the whole grid")
    r.add_argument("--jobs", type=int, default=0, help="concurrent jobs (default: the grid's)")
    r.add_argument("--gpus", type=int, default=1, help="round-robin the jobs over this many GPUs")
    r.add_argument("--reserve", type=float, default=60, help="per-job seconds besides max_time (start, end)")
    r.add_argument("--pack-reserve", type=float, default=20, help="seconds kept at the end for packing")
    r.add_argument("--work", default=None, help="job directories (default /tmp/halo_grid/<grid>)")
    r.add_argument("--cpu", action="store_true", help="run on the CPU (device=cpu)")
    r.add_argument("--dry-run", action="store_true", help="list the jobs, run nothing")
    r.add_argument("--keep", default=None, help="also copy each finished job's files here, as plain files")
    r.add_argument("--min-slot", type=float, default=0, help="every job's minimum (a CPU grid on a GPU)")
    r.add_argument("--extra", nargs="*", default=[], help="overrides added to every job (a fallback backend)")
    r.add_argument("--skip-done", default=None, help="skip the jobs whose metrics.json is under this dir")
    r.add_argument(
        "--ckpt-out", action="store_true", help="a job cut short of its schedule leaves OUT/<job>.ckpt"
    )
    r.add_argument("--resume-from", default=None, help="continue each job that has <job>.ckpt in this dir")
    r.add_argument(
        "--recall", type=float, default=0, help="seconds for recall.py on each finished job's checkpoint"
    )
    rep = sub.add_parser("report", help="unpack tarballs and build experiments/{needle,mqar}/gpu/")
    rep.add_argument("inputs", nargs="+", help="<grid>.tar.gz files from `run`")
    rep.add_argument("--root", default="outputs/retrieval", help="where the jobs are unpacked")
    rep.add_argument("--out", default=None, help="report root (default experiments/<family>/gpu)")
    rep.add_argument("--no-plots", action="store_true")
    c = sub.add_parser("check", help="compose every job of the grids (no training)")
    c.add_argument("grids", nargs="+")
    args = p.parse_args(argv)
    return {"run": run, "report": report, "check": check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
