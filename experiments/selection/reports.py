"""Regenerate the selection's reports from the committed raw job folders, in one command.

    python experiments/selection/reports.py                    # every report below
    python experiments/selection/reports.py report_mqar_4096   # some of them (names as in REPORTS)
    python experiments/selection/reports.py --list             # each report's job folders, no writing

A report pools jobs of several grids and cards, so each one is named here as globs of job folders under
experiments/. They are copied to outputs/selection_reports/<name>/<family>/<job>/ (git-ignored; the report
reads a sweep directory of families) and `halo_lab.report` writes experiments/selection/<name>/ from there,
its plots included. Run it from anywhere; paths are the repository's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
WORK = Path("outputs") / "selection_reports"  # relative to REPO, so the report names a short path

# report directory under experiments/selection/ -> globs of job folders under experiments/
REPORTS: dict[str, list[str]] = {
    # 4096 tokens to full schedules (H200 dense and selection, H100 plain HALO-S and local-only)
    "report_4096": ["selection/h200/*/select_gpu2_*", "selection/h100/*/select_gpu3-*"],
    # the 4096 needle at 64 sequences a step, 3,500 steps (H100)
    "report_4096_b64": [
        "selection/h100/needle/select_gpu6_*",
        "selection/h100/needle/select_gpu7-*",
        "selection/h100/needle/select_gpu8_dense-needle_4096-dense-b64-L2-c3-s2",
    ],
    # the same at lr 3e-4, 3,500 and 6,000 steps (H100)
    "report_4096_lr3e-4": [
        "selection/h100/needle/select_gpu9_dense_lr-*-b64lr3e-4-*",
        "selection/h100/needle/select_gpu10_dense-*",
        "selection/h100/needle/select_gpu11_*",
        "selection/h100/needle/select_gpu12_*",
        "selection/h100/needle/select_gpu14_val_s*-*",
        "selection/h100/needle/select_gpu24_dense_val-*",
        "selection/h100/needle/select_gpu26_tokbias0*",
    ],
    # dense's 1024 controls: conv off, 4 and 6 layers (H100)
    "report_dense_controls": [
        "selection/h100/*/select_gpu5-*",
        "selection/h100/*/select_gpu13_conv0-*",
        "selection/h100/needle/select_gpu4-*",
        "selection/h100/needle/select_gpu13_l6-*",
    ],
    # every MQAR 4096 run (H100)
    "report_mqar_4096": ["selection/h100/mqar/*mqar_4096*"],
    # the needle at 1024 with 4 and 6 layers: the selection, plain HALO-S and local-only beside dense (H100)
    "report_needle_1024_depth": [
        "selection/h100/needle/select_gpu4-needle_1024-dense-L4-*",
        "selection/h100/needle/select_gpu13_l6-*",
        "selection/h100/needle/select_gpu14_l6_*",
        "selection/h100/needle/select_gpu13_l4_select-*",
        "selection/h100/needle/select_gpu13_l4_fixed-*",
        "selection/h100/needle/select_gpu21_l4_recipe-*",
        "selection/h100/needle/select_gpu22_l4_lr*",
        "selection/h100/needle/select_gpu23_l4_lr_local-*",
    ],
    # issue 31's second seeds at 1024 tokens: the needle's and MQAR's edge ablations, MQAR at 4 and 6 layers
    # (seed 0 from the retrieval grid on the H200, seed 1 on the H100), with the 2-layer rows they ablate
    "report_1024_seeds": [
        "retrieval/h100/runs/*/gpu21_seed1-*",
        "retrieval/h200/runs/*/edges-*_1024-no_*-L2-c3-s0",
        "retrieval/h200/runs/*/all-*_1024-dense-L2-c3-s0",
        "retrieval/h200/runs/*/edges-*_1024-dense-L2-c3-s1",
        "retrieval/h200/runs/needle/all-needle_1024-halo-L2-c3-s0",
        "retrieval/h200/runs/needle/edges-needle_1024-halo-L2-c3-s1",
        "retrieval/h200/runs/mqar/all-mqar_1024-halo-L2-c3-s0",
        "retrieval/h200/runs/mqar/all-mqar_1024-*-L4-c3-s0",
        "retrieval/h200/runs/mqar/all-mqar_1024-halo-L6-c3-s0",
        "retrieval/h200/runs/mqar/part3-mqar_1024-dense-L6-c3-s0",
    ],
    # 1024 tokens, 2 layers: the selection (H100) beside the retrieval grid's dense / HALO-S / local-only (H200)
    "h100/report_1024": [
        "selection/h100/*/select_gpu1-*",
        "retrieval/h200/runs/*/all-*_1024-*-L2-c3-s0",
        "retrieval/h200/runs/*/edges-*_1024-dense-L2-c3-s1",
        "retrieval/h200/runs/needle/edges-needle_1024-halo-L2-c3-s1",
        "retrieval/h200/runs/needle/edges-needle_1024-local_only-L2-c3-s1",
    ],
    # the first selection grid and its LM rows (H200)
    "h200/report_needle": ["selection/h200/needle/select_cpu-*"],
    "h200/report_mqar": ["selection/h200/mqar/select_cpu-*"],
    "h200/report_baseline": ["selection/h200/baseline/select_lm-*"],
}


def job_folders(name: str) -> list[Path]:
    """The report's job folders (each holds run/metrics.json), sorted, each once."""
    found: set[Path] = set()
    for pattern in REPORTS[name]:
        hits = [p for p in EXPERIMENTS.glob(pattern) if (p / "run" / "metrics.json").is_file()]
        if not hits:
            raise SystemExit(f"reports.py: {name}: no job folder matches experiments/{pattern}")
        found.update(hits)
    return sorted(found)


def build(name: str) -> Path:
    """Copy the report's jobs into its sweep directory and write experiments/selection/<name>/."""
    from halo_lab.report.writer import build_report

    sweep = WORK / name.replace("/", "_")
    shutil.rmtree(REPO / sweep, ignore_errors=True)
    for job in job_folders(name):
        shutil.copytree(job, REPO / sweep / job.parent.name / job.name)
    return build_report(sweep, Path("experiments") / "selection" / name, wandb="off", plots=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"reports to build (default: all): {', '.join(REPORTS)}")
    ap.add_argument("--list", action="store_true", help="print each report's job folders and stop")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in REPORTS]
    if unknown:
        ap.error(f"unknown report {', '.join(unknown)}; known: {', '.join(REPORTS)}")
    os.chdir(REPO)  # the reports name repository-relative paths
    sys.path.insert(0, str(REPO))
    for name in args.names or list(REPORTS):
        if args.list:
            jobs = job_folders(name)
            print(f"{name}: {len(jobs)} jobs")
            print("\n".join(f"  {j.relative_to(EXPERIMENTS)}" for j in jobs))
        else:
            print(build(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
